"""A markdown report of a result store for a pull request (``subpop-bench report``).

What ran, the leaderboard, and, against baseline bundles, how each defense's target damage and
clean cost moved. GitHub-flavoured markdown, made to be appended to ``$GITHUB_STEP_SUMMARY``.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

from tabulate import tabulate

from leaderboard.aggregate import aggregate
from leaderboard.render import render

# Results are bit-identical on one machine; across machines and library versions a model can
# flip a few test predictions, which moves a small target's damage by a few hundredths.
TOLERANCE = 0.01
COMPARED = (("mean_td", "mean TD"), ("worst5_td", "worst-5 TD"), ("defense_clean_cost", "clean cost"))
WORSE, BETTER, SAME = "↑", "↓", "="  # every compared number is a loss: up is worse
_LISTED = 10  # failures and unmatched rows shown before "and N more"


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def change(old, new, tolerance: float = TOLERANCE) -> str:
    """``"old → new arrow"``: ↑ when ``new`` is worse (higher) by more than ``tolerance``, ↓ when
    better, = otherwise; no arrow when either number is missing."""
    old, new = _number(old), _number(new)
    if old is None or new is None:
        return f"{'-' if old is None else f'{old:.3f}'} → {'-' if new is None else f'{new:.3f}'}"
    delta = new - old
    # a hair of slack so that a change of exactly the tolerance counts as equal despite rounding
    arrow = SAME if abs(delta) <= tolerance + 1e-12 else WORSE if delta > 0 else BETTER
    return f"{old:.3f} → {new:.3f} {arrow}"


def _more(items: list[str]) -> list[str]:
    return items[:_LISTED] + ([f"- and {len(items) - _LISTED} more"] if len(items) > _LISTED else [])


def _what_ran(rows: list[dict]) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["scenario"], r["defense"], r["defense_version"], r["track"])].append(r)
    table = [[scenario, defense, version, track,
              ", ".join(f"{a:g}" for a in sorted({r["alpha"] for r in trials})), len(trials),
              sum(r["status"] != "ok" for r in trials), sum(r["runtime_s"] for r in trials)]
             for (scenario, defense, version, track), trials in sorted(groups.items())]
    failed = [r for r in rows if r["status"] != "ok"]
    defenses = sorted({r["defense"] for r in rows})
    text = (f"{len(rows)} trials ({len(failed)} failed) of {len({r['scenario'] for r in rows})} "
            f"scenario(s) and {len(defenses)} defense(s) ({', '.join(defenses)}), tracks "
            f"{', '.join(sorted({r['track'] for r in rows}))}; "
            f"{sum(r['runtime_s'] for r in rows):.1f} s of defense and training wall time.\n\n")
    text += tabulate(table, headers=["scenario", "defense", "version", "track", "alphas", "trials",
                                     "failed", "wall time (s)"], tablefmt="github", floatfmt=".1f")
    if failed:
        errors = Counter((r["defense"], r["track"], r["error"]) for r in failed)
        text += "\n\nFailures (count, defense/track, error):\n\n" + "\n".join(_more(
            [f"- {n} × {d}/{t}: `{e}`" for (d, t, e), n in errors.most_common()]))
    return text


def _against(summary: list[dict], baselines: list[dict], tolerance: float) -> str:
    current = {(r["scenario"], r["alpha"], r["defense"], r["track"]): r for r in summary}
    lines, table, absent = [], [], []
    for bundle in baselines:
        d = bundle["defense"]
        lines.append(f"- {d['name']} version {d['version']}, hyper-parameters "
                     f"`{json.dumps(d['hyperparameters'], sort_keys=True)}`, "
                     f"subpop-bench {bundle['subpop_bench_version']}")
        for old in bundle["summary"]:
            key = (old["scenario"], float(old["alpha"]), old["defense"], old["track"])
            new = current.get(key)
            if new is None:
                absent.append(f"- {key[0]}, alpha {key[1]:g}, {key[2]}/{key[3]}")
                continue
            table.append([key[0], f"{key[1]:g}", key[2], key[3],
                          *(change(old[c], new[c], tolerance) for c, _ in COMPARED)])
    text = "Baseline bundle(s):\n\n" + "\n".join(lines) + (
        f"\n\nLower is better for all three: {WORSE} worse, {BETTER} better, {SAME} within "
        f"±{tolerance:g}.\n\n")
    if table:
        text += tabulate(table, headers=["scenario", "alpha", "defense", "track",
                                         *(name for _, name in COMPARED)], tablefmt="github")
    else:
        text += "This run has none of the baseline's (scenario, alpha, defense, track) rows."
    if absent and table:
        text += "\n\nIn the baseline but not in this run:\n\n" + "\n".join(_more(absent))
    return text


def report(rows: list[dict], baselines: list[dict] = (), tolerance: float = TOLERANCE) -> str:
    """The markdown report of trial ``rows`` (``Store.rows()``), compared with the validated
    ``baselines`` bundles (:mod:`leaderboard.bundle`) when given."""
    if not rows:
        return "# subpop-bench report\n\n(no stored trials)\n"
    summary = aggregate(rows)
    parts = ["# subpop-bench report", "## What ran", _what_ran(rows),
             "## Leaderboard", render(summary, "markdown")]
    if baselines:
        parts += ["## Against the baseline", _against(summary, list(baselines), tolerance)]
    return "\n\n".join(parts) + "\n"
