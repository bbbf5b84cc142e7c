"""Leaderboard tables as markdown, CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
import math

from tabulate import tabulate

from leaderboard.aggregate import COLUMNS, is_oracle

FORMATS = ("markdown", "csv", "json")
_SHORT = {"n_targets": "targets", "n_failed": "failed", "clean_acc": "clean acc",
          "mean_td": "mean TD", "worst1_td": "worst-1", "worst5_td": "worst-5",
          "worst10_td": "worst-10", "mean_cd": "mean CD", "defense_clean_cost": "clean cost",
          "defense_clean_cost_worst": "worst subpop cost", "poison_recall": "poison recall",
          "clean_removed": "clean removed", "runtime_s": "time (s)", "mean_td_ci": "95% CI"}
_MARKDOWN = ("defense", "track", "n_targets", "n_failed", "clean_acc", "mean_td", "mean_td_ci",
             "worst1_td", "worst5_td", "worst10_td", "mean_cd", "defense_clean_cost",
             "defense_clean_cost_worst", "poison_recall", "clean_removed", "runtime_s")


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _cell(row: dict, column: str):
    if column == "mean_td_ci":  # one column for the interval: "[lo, hi]" reads as a range
        lo, hi = row["mean_td_lo"], row["mean_td_hi"]
        return None if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
    if column == "defense" and is_oracle(row["defense"]):
        return f"{row['defense']} (oracle)"
    return _clean(row[column])


def render(rows: list[dict], fmt: str = "markdown") -> str:
    """``rows`` from :func:`leaderboard.aggregate` in ``fmt`` (markdown, csv or json)."""
    if fmt == "json":
        return json.dumps([{k: _clean(r[k]) for k in COLUMNS} for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
        return buf.getvalue()
    if fmt != "markdown":
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not rows:
        return "(no stored trials)"
    sections = []
    for key in dict.fromkeys((r["scenario"], r["alpha"]) for r in rows):
        table = [[_cell(r, c) for c in _MARKDOWN] for r in rows if (r["scenario"], r["alpha"]) == key]
        sections.append(f"### {key[0]}, alpha = {key[1]:g}\n\n" + tabulate(
            table, headers=[_SHORT.get(c, c) for c in _MARKDOWN], tablefmt="github",
            floatfmt=".3f", missingval="-"))
    return "\n\n".join(sections)
