"""The runner and the result store: every trial once, resumable, deterministic, faults recorded."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import defenses
from bench.runner import ANY_TRACK, Scenario, run
from bench.scenarios import SCENARIOS, SUITES
from bench.store import Store, StoreError
from defenses import Defense, Sanitized

SPEC = SCENARIOS.get(SUITES.get("synthetic")[0])


@pytest.fixture(scope="module")
def scenario():
    return Scenario.prepare(SPEC)


def n_trials(scenario) -> int:
    return len(scenario.targets) * len(SPEC.alphas) * SPEC.trials


def metrics_by_key(store: Store) -> dict:
    return {r["key"]: (r["status"], r["metrics"]) for r in store.rows()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, scenario):
    path = tmp_path_factory.mktemp("full") / "store.sqlite"
    with Store(path) as store:
        summary = run([SPEC], [defenses.make("none"), defenses.make("sphere")], store=store,
                      progress=False, log=lambda *_: None)
        return summary, metrics_by_key(store), store.rows()


def test_every_trial_stored_once(full_run, scenario):
    summary, metrics, rows = full_run
    assert len(scenario.targets) >= 5
    # none runs once (its track is "any"), sphere on both tracks.
    assert summary.ran == len(rows) == 3 * n_trials(scenario)
    assert len({r["key"] for r in rows}) == len(rows)
    assert {r["track"] for r in rows if r["defense"] == "none"} == {ANY_TRACK}
    assert {r["track"] for r in rows if r["defense"] == "sphere"} == {"informed", "blind"}
    assert all(r["status"] == "ok" for r in rows)


def test_rerun_skips_stored_trials(tmp_path, full_run):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        run([SPEC], [defenses.make("none")], store=store, progress=False, log=lambda *_: None)
        first = store.count()
        again = run([SPEC], [defenses.make("none")], store=store, progress=False, log=lambda *_: None)
        assert again.ran == 0 and again.skipped == first == store.count()


def test_same_command_gives_identical_metrics(tmp_path, full_run):
    with Store(tmp_path / "again.sqlite") as store:
        run([SPEC], [defenses.make("none"), defenses.make("sphere")], store=store, progress=False,
            log=lambda *_: None)
        assert metrics_by_key(store) == full_run[1]


def test_metrics_are_consistent(full_run, scenario):
    for row in full_run[2]:
        m = row["metrics"]
        assert m["m"] == int(row["alpha"] * m["target_aux"])
        assert m["td"] == pytest.approx(m["acc_s_clean"] - m["acc_s_pois"])
        assert m["cd"] == pytest.approx(m["acc_rest_clean"] - m["acc_rest_pois"])
        assert m["defense_clean_cost"] == pytest.approx(m["acc_clean"] - m["acc_def_clean"])
        if row["defense"] == "none":
            assert m["defense_clean_cost"] == 0 and m["poisons_removed"] == 0
        if row["defense"] == "sphere" and row["track"] == "informed":
            assert m["poisons_removed"] + m["clean_removed"] == m["m"]
        if row["defense"] == "sphere" and row["track"] == "blind":
            # 5% of each class of D ∪ D_p, rounded per class.
            assert abs(m["poisons_removed"] + m["clean_removed"] - 0.05 * (600 + m["m"])) <= 1


def test_label_flip_damages_targets(full_run):
    none = [r["metrics"]["td"] for r in full_run[2] if r["defense"] == "none" and r["alpha"] == 2.0]
    assert np.mean(none) > 0.1


@dataclass(frozen=True)
class Spy(Defense):
    """Records what it is given; keeps everything."""

    name = "spy"
    seen: list = None

    def sanitize(self, data):
        self.seen.append((data.budget, data.X.copy(), data.y.copy()))
        return Sanitized(np.ones(len(data.y)))


def test_defense_sees_shuffled_set_and_the_track_budget(scenario):
    seen = []
    spy = Spy(seen=seen)
    spec_one = SPEC
    run([spec_one], [spy], tracks=("informed", "blind"), store=None, progress=False, log=lambda *_: None)
    D = scenario.splits.train
    poisoned = [s for s in seen if len(s[2]) > len(D)]
    budgets = {s[0] for s in poisoned}
    assert None in budgets and any(isinstance(b, int) and b > 0 for b in budgets)
    for budget, X, y in poisoned:
        if budget is not None:
            assert len(y) == len(D) + budget
        # Poisons are not appended at the end: the first n rows are not D in order.
        assert not np.array_equal(X[: len(D)], D.X)
        # ...but the rows are those of D plus the poisons.
        assert np.isclose(np.sort(X.sum(1))[: len(D)], np.sort(X.sum(1))[: len(D)]).all()


@dataclass(frozen=True)
class Untouched(Defense):
    """Keeps everything without reading the features; records the inputs it was given."""

    name = "untouched"
    seen: list = None

    def sanitize(self, data):
        self.seen.append(data)
        return Sanitized.keep(np.ones(len(data.y), bool))


def test_defense_that_never_reads_features_costs_no_copy(scenario):
    seen = []
    run([SPEC], [Untouched(seen=seen)], tracks=("blind",), store=None, progress=False, log=lambda *_: None)
    D = scenario.splits.train
    poisoned = [data for data in seen if len(data.y) > len(D)]
    assert poisoned
    for data in poisoned:
        # The runner hands over its shared pool and the rows; nothing was copied out of it...
        assert "X" not in vars(data) and len(data.source) > len(data.y)
        # ...and reading X gives the shuffled training set, the rows' labels with it.
        assert np.shares_memory(data.source, seen[0].source)
        np.testing.assert_array_equal(data.X, data.source[data.rows])
        assert sorted(map(tuple, data.X[np.isin(data.rows, np.arange(len(D)))])) == sorted(map(tuple, D.X))


@dataclass(frozen=True)
class Broken(Defense):
    name = "broken"
    mode: str = "raise"

    def sanitize(self, data):
        n = len(data.y)
        if self.mode == "raise":
            raise RuntimeError("boom")
        if self.mode == "shape":
            return Sanitized(np.ones(n + 1))
        if self.mode == "nan":
            return Sanitized(np.full(n, np.nan))
        if self.mode == "empty":
            return Sanitized(np.zeros(n))
        return np.ones(n)  # not a Sanitized


@pytest.mark.parametrize("mode, message", [("raise", "RuntimeError: boom"), ("shape", "shape"),
                                           ("nan", "NaN"), ("empty", "removed every"),
                                           ("type", "expected Sanitized")])
def test_faulty_defense_is_recorded_and_the_run_goes_on(tmp_path, mode, message, full_run):
    with Store(tmp_path / "f.sqlite") as store:
        summary = run([SPEC], [Broken(mode=mode), defenses.make("none")], tracks=("blind",),
                      store=store, progress=False, log=lambda *_: None)
        rows = store.rows()
    broken = [r for r in rows if r["defense"] == "broken"]
    assert broken and all(r["status"] == "failed" and message in r["error"] for r in broken)
    assert summary.failed == len(broken)
    # The other defense's results equal those of a run without the faulty one.
    none = {r["key"]: r["metrics"] for r in rows if r["defense"] == "none"}
    assert none == {k: v[1] for k, v in full_run[1].items() if k in none} and none


class Interrupt(Exception):
    pass


@dataclass(frozen=True)
class StopAfter(Defense):
    """Keeps everything, and raises KeyboardInterrupt on its ``calls``-th call."""

    name = "none"
    uses_budget = False
    calls: int = 0
    counter: list = None

    def sanitize(self, data):
        self.counter.append(1)
        if len(self.counter) == self.calls:
            raise KeyboardInterrupt
        return Sanitized(np.ones(len(data.y)))

    def hyperparameters(self):
        return {}


def test_interrupted_run_resumes_to_the_same_store(tmp_path, full_run):
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        with pytest.raises(KeyboardInterrupt):
            run([SPEC], [StopAfter(calls=12, counter=[])], store=store, chunk_size=5,
                progress=False, log=lambda *_: None)
        partial = store.count()
        assert 0 < partial < len([k for k in full_run[1] if "none@" in k])
    with Store(path) as store:
        summary = run([SPEC], [defenses.make("none")], store=store, chunk_size=5, progress=False,
                      log=lambda *_: None)
        assert summary.skipped == partial
        expected = {k: v for k, v in full_run[1].items() if "|none@" in k}
        assert metrics_by_key(store) == expected


def test_store_rejects_foreign_files(tmp_path):
    bad = tmp_path / "not.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a subpop-bench result store"):
        Store(bad)


@dataclass(frozen=True)
class BadModel(Defense):
    """Robust training whose model cannot predict."""

    name = "bad-model"

    def fit(self, data):
        class Model:
            def predict(self, X):
                raise RuntimeError("no predictions today")
        return Model()


def test_model_that_cannot_predict_fails_its_trials_only(tmp_path):
    with Store(tmp_path / "m.sqlite") as store:
        summary = run([SPEC], [BadModel(), defenses.make("none")], tracks=("blind",), store=store,
                      progress=False, log=lambda *_: None)
        rows = store.rows()
    bad = [r for r in rows if r["defense"] == "bad-model"]
    assert bad and all(r["status"] == "failed" and "no predictions today" in r["error"] for r in bad)
    assert all(r["status"] == "ok" for r in rows if r["defense"] == "none")
    assert summary.failed == len(bad)


def test_robust_training_that_filters_reports_filtering_statistics(tmp_path):
    """TRIM and SEVER return Filtered(model, kept): their trials carry poison recall and clean
    points removed, computed from the kept mask mapped back through the runner's shuffle."""
    with Store(tmp_path / "s.sqlite") as store:
        run([SPEC], [defenses.make("trim"), defenses.make("sever")], tracks=("informed",), store=store,
            progress=False, log=lambda *_: None)
        rows = store.rows()
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:
        metrics = r["metrics"]
        assert 0 <= metrics["poison_recall"] <= 1 and metrics["clean_removed"] >= 0
        if r["defense"] == "trim":  # informed TRIM keeps exactly n - m: what it does not drop of
            # the poisons, it drops of D
            assert metrics["clean_removed"] == pytest.approx(metrics["m"] * (1 - metrics["poison_recall"]))
