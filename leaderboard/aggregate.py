"""Per (scenario, alpha, defense, track) summaries of stored trials (PROTOCOL.md section 6)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from bench.metrics import worst_k

COLUMNS = ("scenario", "alpha", "defense", "track", "n_targets", "n_trials", "n_failed",
           "clean_acc", "mean_td", "worst1_td", "worst5_td", "worst10_td", "mean_cd",
           "defense_clean_cost", "defense_clean_cost_worst", "poison_recall", "clean_removed",
           "runtime_s")


def _mean(values) -> float:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def aggregate(rows: list[dict]) -> list[dict]:
    """One summary per (scenario, alpha, defense, track).

    Target damage is first averaged over a target's trials; ``mean_td`` averages over targets and
    ``worstK_td`` is the mean of the K largest per-target values. Failed trials are counted in
    ``n_failed``, never silently dropped. Sorted by scenario, alpha, track, then mean_td.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["scenario"], row["alpha"], row["defense"], row["track"])].append(row)
    out = []
    for (scenario, alpha, defense, track), trials in groups.items():
        ok = [r for r in trials if r["status"] == "ok"]
        per_target: dict[int, list[dict]] = defaultdict(list)
        for r in ok:
            per_target[r["target"]].append(r["metrics"])

        def target_means(key: str) -> list[float]:
            return [_mean(m.get(key) for m in ms) for ms in per_target.values()]

        td = target_means("td")
        metric = lambda key: _mean(r["metrics"].get(key) for r in ok)  # noqa: E731
        out.append({
            "scenario": scenario, "alpha": alpha, "defense": defense, "track": track,
            "n_targets": len(per_target), "n_trials": len(trials), "n_failed": len(trials) - len(ok),
            "clean_acc": metric("acc_clean"), "mean_td": _mean(td),
            "worst1_td": worst_k(td, 1), "worst5_td": worst_k(td, 5), "worst10_td": worst_k(td, 10),
            "mean_cd": _mean(target_means("cd")),
            "defense_clean_cost": metric("defense_clean_cost"),
            "defense_clean_cost_worst": metric("defense_clean_cost_worst"),
            "poison_recall": metric("poison_recall"), "clean_removed": metric("clean_removed"),
            "runtime_s": float(sum(r["runtime_s"] for r in trials)),
        })
    out.sort(key=lambda r: (r["scenario"], r["alpha"], r["track"], np.nan_to_num(r["mean_td"], nan=np.inf)))
    return out
