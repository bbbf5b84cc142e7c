"""Summaries of stored trials (PROTOCOL.md section 6).

Two shapes: :func:`aggregate`, one summary per (scenario, alpha, defense, track), and
:func:`boards`, one ranked table per (scenario, track) over all alphas, with bootstrap intervals
over targets. Failed trials are counted in ``n_failed``, never silently dropped.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from bench.metrics import worst_k

ANY_TRACK = "any"  # defenses that ignore the budget hint; their rows serve every track's board
REFERENCE = "none"  # the no-defense row every board is read against
N_BOOT = 1000
SEED = 0  # bootstrap seed: the same rows always give the same intervals
LEVEL = 0.95

COLUMNS = ("scenario", "alpha", "defense", "track", "n_targets", "n_trials", "n_failed",
           "clean_acc", "mean_td", "worst1_td", "worst5_td", "worst10_td", "mean_cd",
           "defense_clean_cost", "defense_clean_cost_worst", "poison_recall", "clean_removed",
           "runtime_s", "mean_td_lo", "mean_td_hi")
BOARD_COLUMNS = ("scenario", "board", "rank", "tied_with", "defense", "track", "n_targets",
                 "n_trials", "n_failed", "clean_acc", "mean_td", "mean_td_lo", "mean_td_hi",
                 "worst5_td", "mean_cd", "defense_clean_cost", "defense_clean_cost_worst",
                 "poison_recall", "clean_removed", "runtime_s")


def is_oracle(defense: str) -> bool:
    """Whether ``defense`` is registered as an oracle (it sees trusted clean data the others do
    not), so the tables can mark it; unknown names (e.g. from bundles) are not."""
    from defenses import DEFENSES

    return defense in DEFENSES and DEFENSES.get(defense).needs_trusted


def _mean(values) -> float:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def bootstrap_ci(values, n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs ignored): ``n_boot``
    resamples with replacement, drawn at once as an (n_boot, n) index matrix."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    lo, hi = np.quantile(v[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def per_target(trials: list[dict], key: str) -> dict[tuple[int, float], float]:
    """Metric ``key`` of each (target, alpha), averaged over its successful trials."""
    cells: dict[tuple[int, float], list] = defaultdict(list)
    for r in trials:
        if r["status"] == "ok":
            cells[(r["target"], r["alpha"])].append(r["metrics"].get(key))
    return {cell: _mean(values) for cell, values in cells.items()}


def target_means(trials: list[dict], key: str) -> dict[int, float]:
    """Metric ``key`` of each target: the mean over alphas of its per-(target, alpha) means, so
    every alpha weighs the same whatever its number of trials. In target order, so that nothing
    computed from it (the bootstrap's resamples included) depends on the order of the rows."""
    by_target: dict[int, list[float]] = defaultdict(list)
    for (target, _), value in per_target(trials, key).items():
        by_target[target].append(value)
    return {t: _mean(values) for t, values in sorted(by_target.items())}


def _summary(trials: list[dict]) -> dict:
    """The metrics of one group of trials. Damage (TD, CD) is averaged per target first, then
    over targets; the 95% interval of ``mean_td`` resamples targets."""
    ok = [r for r in trials if r["status"] == "ok"]
    td = [v for v in target_means(trials, "td").values() if not np.isnan(v)]
    lo, hi = bootstrap_ci(td)
    metric = lambda key: _mean(r["metrics"].get(key) for r in ok)  # noqa: E731
    return {
        "n_targets": len(td), "n_trials": len(trials), "n_failed": len(trials) - len(ok),
        "clean_acc": metric("acc_clean"), "mean_td": _mean(td), "mean_td_lo": lo, "mean_td_hi": hi,
        "worst1_td": worst_k(td, 1), "worst5_td": worst_k(td, 5), "worst10_td": worst_k(td, 10),
        "mean_cd": _mean(target_means(trials, "cd").values()),
        "defense_clean_cost": metric("defense_clean_cost"),
        "defense_clean_cost_worst": metric("defense_clean_cost_worst"),
        "poison_recall": metric("poison_recall"), "clean_removed": metric("clean_removed"),
        "runtime_s": float(sum(r["runtime_s"] for r in trials)),
    }


def _td_order(row: dict):
    return np.nan_to_num(row["mean_td"], nan=np.inf)


def aggregate(rows: list[dict]) -> list[dict]:
    """One summary per (scenario, alpha, defense, track), with the columns of :data:`COLUMNS`.

    Target damage is first averaged over a target's trials; ``mean_td`` averages over targets,
    ``mean_td_lo``/``mean_td_hi`` bound it (bootstrap over targets) and ``worstK_td`` is the mean
    of the K largest per-target values. Sorted by scenario, alpha, track, then mean_td.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["scenario"], row["alpha"], row["defense"], row["track"])].append(row)
    out = [{"scenario": scenario, "alpha": alpha, "defense": defense, "track": track, **_summary(trials)}
           for (scenario, alpha, defense, track), trials in groups.items()]
    out.sort(key=lambda r: (r["scenario"], r["alpha"], r["track"], _td_order(r)))
    return out


def rank(entries: list[dict]) -> list[dict]:
    """Sort ``entries`` by ``mean_td`` (lowest damage first) and set ``rank`` (1, 2, ...; None
    when nothing succeeded) and ``tied_with``: the ranks whose 95% intervals overlap this one's,
    i.e. the ranking cannot tell them apart."""
    entries = sorted(entries, key=lambda e: (_td_order(e), e["defense"], e["track"]))
    ranked = [e for e in entries if not np.isnan(e["mean_td"])]  # a prefix: NaN sorts last
    for i, e in enumerate(entries):
        e["rank"] = i + 1 if i < len(ranked) else None
    for e in entries:
        e["tied_with"] = tuple(o["rank"] for o in ranked if o is not e and o["mean_td_lo"] <= e["mean_td_hi"]
                               and e["mean_td_lo"] <= o["mean_td_hi"])
    return entries


def board_tracks(tracks) -> list[str]:
    """The boards of a scenario: one per budget track it ran (``any`` alone when none did)."""
    return sorted(set(tracks) - {ANY_TRACK}) or [ANY_TRACK]


def boards(rows: list[dict]) -> list[dict]:
    """Ranked entries, one per (scenario, board, defense, track), columns :data:`BOARD_COLUMNS`.

    A board is a scenario's table for one track (``board``); the rows of defenses that ignore the
    budget (track ``any``, the ``none`` reference among them) join every board of their scenario.
    Metrics pool all alphas: a target's damage is its mean over alphas (and trials), so ``mean_td``
    is the mean over attacked subpopulations and alphas and ``worst5_td`` picks the 5 targets hurt
    most on average. Sorted by scenario, board, then rank.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["scenario"], row["defense"], row["track"])].append(row)
    summaries = {key: _summary(trials) for key, trials in groups.items()}
    out = []
    for scenario in sorted({s for s, _, _ in groups}):
        keys = [k for k in groups if k[0] == scenario]
        for board in board_tracks(track for _, _, track in keys):
            entries = [{"scenario": scenario, "board": board, "defense": defense, "track": track,
                        **summaries[(scenario, defense, track)]}
                       for _, defense, track in keys if track in (board, ANY_TRACK)]
            out += rank(entries)
    return out
