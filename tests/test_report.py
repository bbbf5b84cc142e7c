"""The pull-request report: what ran, the leaderboard, and arrows against a baseline bundle."""
from __future__ import annotations

import copy

import pytest

import defenses
from bench.runner import run
from bench.scenarios import SCENARIOS, SUITES
from bench.store import Store
from leaderboard import bundle
from leaderboard.report import BETTER, SAME, WORSE, change, report


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """sphere on the synthetic suite, both tracks: 96 trials."""
    path = tmp_path_factory.mktemp("report") / "results.sqlite"
    with Store(path) as store:
        run([SCENARIOS.get(SUITES.get("synthetic")[0])], [defenses.make("sphere")], store=store,
            progress=False)
        return store.rows()


def _baseline(rows: list[dict], td_shift: dict) -> dict:
    """A valid bundle of ``rows`` whose target damage is moved by ``td_shift[(alpha, track)]``."""
    changed = copy.deepcopy(rows)
    for r in changed:
        r["metrics"]["td"] += td_shift.get((r["alpha"], r["track"]), 0.0)
    return bundle.validate(bundle.dumps(bundle.create(changed, defenses.make("sphere"))))


def _table(text: str, heading: str) -> dict:
    """The markdown table under ``heading``: {(alpha, track): {column: cell}}."""
    lines = [l for l in text.split(heading, 1)[1].splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        out[(cells["alpha"], cells["track"])] = cells
    return out


def test_arrows_against_a_baseline(rows):
    # baseline damage higher at alpha 1 blind (this run is better), lower at alpha 2 blind (worse),
    # a change within the tolerance on informed alpha 1, none on informed alpha 2
    shifts = {(1.0, "blind"): 0.2, (2.0, "blind"): -0.2, (1.0, "informed"): 0.004}
    text = report(rows, [_baseline(rows, shifts)])
    table = _table(text, "## Against the baseline")
    assert set(table) == {("1", "blind"), ("2", "blind"), ("1", "informed"), ("2", "informed")}
    expected = {("1", "blind"): BETTER, ("2", "blind"): WORSE, ("1", "informed"): SAME,
                ("2", "informed"): SAME}
    for key, arrow in expected.items():
        assert table[key]["mean TD"].endswith(arrow), (key, table[key])
        assert table[key]["worst-5 TD"].endswith(arrow), (key, table[key])
        assert table[key]["clean cost"].endswith(SAME)  # a shift of TD leaves the clean cost alone
    assert "↑ worse, ↓ better, = within ±0.01" in text
    assert "- sphere version 1, hyper-parameters `{\"blind_fraction\": 0.05}`" in text


def test_tolerance_decides_what_counts_as_equal(rows):
    text = report(rows, [_baseline(rows, {(1.0, "informed"): 0.004})], tolerance=0.001)
    assert _table(text, "## Against the baseline")[("1", "informed")]["mean TD"].endswith(BETTER)


def test_change_arrows():
    assert change(0.30, 0.20) == f"0.300 → 0.200 {BETTER}"
    assert change(0.20, 0.30) == f"0.200 → 0.300 {WORSE}"
    assert change(0.20, 0.205) == f"0.200 → 0.205 {SAME}"
    assert change(0.20, 0.21).endswith(SAME)  # exactly the tolerance: equal
    assert change(None, 0.2) == "- → 0.200" and change(0.2, float("nan")) == "0.200 → -"


def test_what_ran_counts_trials_and_lists_failures(rows):
    broken = copy.deepcopy(rows)
    for r in [r for r in broken if r["track"] == "blind"][:3]:
        r.update(status="failed", error="ValueError: sphere fell over", metrics={})
    text = report(broken)
    assert "96 trials (3 failed) of 1 scenario(s) and 1 defense(s) (sphere), tracks blind, informed" in text
    assert "- 3 × sphere/blind: `ValueError: sphere fell over`" in text
    assert "## Leaderboard" in text and "### synthetic/mlp/featurematch/label-flip, alpha = 1" in text
    assert "## Against the baseline" not in text


def test_baseline_rows_not_run_here_are_listed(rows):
    text = report([r for r in rows if r["alpha"] == 1.0], [_baseline(rows, {})])
    assert "In the baseline but not in this run:" in text
    assert "- synthetic/mlp/featurematch/label-flip, alpha 2, sphere/blind" in text


def test_empty_store():
    assert "(no stored trials)" in report([])
