"""Aggregation of trial rows: bootstrap intervals, ranking with ties, boards and the flat tables."""
from __future__ import annotations

import csv
import io
import json
import math
import random

import numpy as np
import pytest

from leaderboard import aggregate, render
from leaderboard.aggregate import COLUMNS, N_BOOT, SEED, boards, bootstrap_ci, rank

approx = pytest.approx


def trial_row(defense: str, track: str, target: int, alpha: float, td: float, *, trial: int = 0,
              scenario: str = "toy/mlp/featurematch/label-flip", error: str | None = None, **metrics) -> dict:
    """A trial row shaped like :meth:`bench.store.Store.rows`; ``error`` makes it a failed trial."""
    full = {"td": td, "cd": td / 10, "acc_clean": 0.9, "defense_clean_cost": 0.01,
            "defense_clean_cost_s": 0.02 * target, "defense_clean_cost_worst": 0.05,
            "target_train": 10 + 5 * target, **metrics}
    return {"key": f"{scenario}|h|t{target}|a{alpha:g}|r{trial}|{defense}|{track}", "scenario": scenario,
            "scenario_hash": "h", "target": target, "target_name": f"cluster {target}", "alpha": alpha,
            "trial": trial, "defense": defense, "defense_version": "1", "defense_params": "{}",
            "track": track, "seed": 0, "status": "failed" if error else "ok", "error": error,
            "metrics": {} if error else full, "runtime_s": 0.5, "timing": {}, "environment": "{}"}


def _percentile(sorted_values: list[float], q: float) -> float:
    """numpy's default ('linear') percentile, written out."""
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (pos - low) * (sorted_values[high] - sorted_values[low])


def test_bootstrap_matches_a_brute_force_loop_on_the_same_draws():
    values = np.random.default_rng(7).normal(0.3, 0.2, size=23)
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, len(values), size=(N_BOOT, len(values)))
    means = sorted(sum(values[i] for i in row) / len(row) for row in draws)
    expected = (_percentile(means, 0.025), _percentile(means, 0.975))
    assert bootstrap_ci(values) == approx(expected, abs=1e-12)
    assert bootstrap_ci(values) == bootstrap_ci(list(values))  # deterministic


def test_bootstrap_agrees_with_an_independent_resampling_loop():
    """A plain loop with its own random draws lands on the same interval, up to Monte Carlo
    noise, and both straddle the mean about +-1.96 standard errors wide."""
    values = list(np.random.default_rng(3).uniform(0, 1, size=40))
    draw = random.Random(1)
    means = sorted(sum(draw.choice(values) for _ in values) / len(values) for _ in range(4000))
    loop = (_percentile(means, 0.025), _percentile(means, 0.975))
    se = np.std(values) / math.sqrt(len(values))
    lo, hi = bootstrap_ci(values, n_boot=4000)
    assert (lo, hi) == approx(loop, abs=0.15 * se)
    assert (lo, hi) == approx((np.mean(values) - 1.96 * se, np.mean(values) + 1.96 * se), abs=0.3 * se)


def test_bootstrap_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
    assert bootstrap_ci([0.4]) == approx((0.4, 0.4))
    assert bootstrap_ci([0.1, float("nan"), 0.3]) == bootstrap_ci([0.1, 0.3])


def test_rank_orders_by_damage_and_marks_overlapping_intervals():
    def entry(defense, mean, lo, hi):
        return {"defense": defense, "track": "blind", "mean_td": mean, "mean_td_lo": lo, "mean_td_hi": hi}

    nan = float("nan")
    ranked = rank([entry("c", 0.50, 0.40, 0.60), entry("failed", nan, nan, nan),
                   entry("a", 0.10, 0.05, 0.15), entry("b", 0.20, 0.15, 0.25),  # touches a's interval
                   entry("d", 0.55, 0.52, 0.58)])                              # inside c's
    assert [(e["defense"], e["rank"], e["tied_with"]) for e in ranked] == [
        ("a", 1, (2,)), ("b", 2, (1,)), ("c", 3, (4,)), ("d", 4, (3,)), ("failed", None, ())]


def _toy_rows() -> list[dict]:
    """Three targets, two alphas; ``none`` and ``dpa`` ignore the budget (track any), ``sphere``
    runs both tracks; one ``dpa`` trial failed."""
    rows = []
    for target in range(3):
        for alpha in (1.0, 2.0):
            rows.append(trial_row("none", "any", target, alpha, 0.2 * alpha + 0.1 * target,
                                  poison_recall=0.0))
            rows.append(trial_row("sphere", "blind", target, alpha, 0.1 * alpha, poison_recall=0.5,
                                  clean_removed=4))
            rows.append(trial_row("sphere", "informed", target, alpha, 0.05 * alpha, poison_recall=0.9,
                                  clean_removed=2))
            if (target, alpha) == (2, 2.0):
                rows.append(trial_row("dpa", "any", target, alpha, 0.0, error="RuntimeError: boom"))
            else:
                rows.append(trial_row("dpa", "any", target, alpha, 0.3))
    return rows


def test_boards_pool_alphas_rank_and_share_any_rows():
    entries = boards(_toy_rows())
    by = {(e["board"], e["defense"], e["track"]): e for e in entries}
    assert sorted(by) == [("blind", "dpa", "any"), ("blind", "none", "any"), ("blind", "sphere", "blind"),
                          ("informed", "dpa", "any"), ("informed", "none", "any"),
                          ("informed", "sphere", "informed")]
    none = by[("blind", "none", "any")]
    # per target: mean over alphas of 0.2 * alpha + 0.1 * t = 0.3 + 0.1 * t; over targets 0.4
    assert none["mean_td"] == approx(0.4) and none["worst5_td"] == approx(0.4)
    assert none["n_targets"] == 3 and none["n_trials"] == 6 and none["n_failed"] == 0
    assert none["mean_td_lo"] <= 0.4 <= none["mean_td_hi"]
    assert by[("informed", "sphere", "informed")]["mean_td"] == approx(0.075)
    assert by[("informed", "sphere", "informed")]["poison_recall"] == approx(0.9)
    assert by[("blind", "sphere", "blind")]["clean_removed"] == approx(4)
    dpa = by[("blind", "dpa", "any")]
    assert dpa["n_failed"] == 1 and dpa["n_trials"] == 6 and dpa["mean_td"] == approx(0.3)
    assert math.isnan(dpa["poison_recall"]) and dpa["runtime_s"] == approx(3.0)
    # every target's damage is constant for sphere and dpa: zero-width intervals, no ties with them
    blind = [e for e in entries if e["board"] == "blind"]
    assert [(e["defense"], e["rank"]) for e in blind] == [("sphere", 1), ("dpa", 2), ("none", 3)]
    assert by[("blind", "sphere", "blind")]["tied_with"] == ()


def test_a_scenario_run_without_budget_tracks_has_one_any_board():
    entries = boards([r for r in _toy_rows() if r["track"] == "any"])
    assert {e["board"] for e in entries} == {"any"} and len(entries) == 2


def test_per_alpha_summaries_keep_their_columns_and_add_the_interval():
    summary = aggregate(_toy_rows())
    assert all(set(COLUMNS) <= set(s) for s in summary)
    first = next(s for s in summary if s["defense"] == "none" and s["alpha"] == 1.0)
    assert first["mean_td"] == approx(0.3) and first["mean_td_lo"] <= 0.3 <= first["mean_td_hi"]
    assert first["worst1_td"] == approx(0.4)
    table = list(csv.DictReader(io.StringIO(render(summary, "csv"))))
    assert list(table[0])[:4] == ["scenario", "alpha", "defense", "track"]
    assert {"mean_td_lo", "mean_td_hi"} <= set(table[0]) and len(table) == len(summary)
    assert all("mean_td_lo" in r for r in json.loads(render(summary, "json")))
    text = render(summary, "markdown")
    assert "95% CI" in text and f"[{first['mean_td_lo']:.3f}, {first['mean_td_hi']:.3f}]" in text


def test_oracle_defenses_are_marked_in_tables_and_site(tmp_path):
    from leaderboard.site import build

    rows = [trial_row(d, "blind", t, 1.0, 0.1 * t) for d in ("roni", "sphere") for t in range(3)]
    table = render(aggregate(rows), "markdown")
    assert "roni (oracle)" in table and "sphere (oracle)" not in table
    html = build(rows, tmp_path / "site").read_text()
    roni_row = next(line for line in html.splitlines() if ">roni</a>" in line)
    sphere_row = next(line for line in html.splitlines() if ">sphere</a>" in line)
    assert 'class="oracle"' in roni_row and 'class="oracle"' not in sphere_row


def test_attack_comparison_pairs_trial_zero_against_label_flip():
    """The paired differences equal a direct loop over targets; label-flip's extra trials count
    in its row but not in the pairing; settings with one attack are left out."""
    from leaderboard.paper import attack_comparison

    rng = np.random.default_rng(0)
    rows, lf, go = [], {}, {}
    for target in range(6):
        for trial in range(3):
            td = float(rng.uniform(0, 0.3))
            lf.setdefault(target, td)
            rows.append(trial_row("none", "any", target, 2.0, td, trial=trial,
                                  scenario="toy/mlp/featurematch/label-flip"))
        go[target] = float(rng.uniform(0, 0.3))
        row = trial_row("none", "any", target, 2.0, go[target], scenario="toy/mlp/featurematch/go")
        row["timing"] = {"attack_s": 1.0 + target}
        rows.append(row)
    rows.append(trial_row("none", "any", 0, 2.0, 0.5, scenario="toy/mlp/clustermatch/label-flip"))
    text = attack_comparison(rows)
    d = np.array([go[t] - lf[t] for t in range(6)])
    half = 1.96 * d.std(ddof=1) / np.sqrt(6)
    assert f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]" in text
    assert "clustermatch" not in text and "toy/mlp/featurematch, no defense" in text
    go_line = next(line for line in text.splitlines() if line.count("|") > 3 and line.split("|")[2].strip() == "go")
    assert "3.500" in go_line and "21.000" in go_line  # median and total attack seconds
    assert attack_comparison([r for r in rows if "label-flip" in r["scenario"]]) == ""
