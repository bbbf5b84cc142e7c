"""Sequential, process and Ray executors store identical metrics."""
from __future__ import annotations

import pytest

import defenses
from bench import executors
from bench.runner import run
from bench.scenarios import SCENARIOS, SUITES
from bench.store import Store

QUICK = [SCENARIOS.get(i) for i in SUITES.get("quick")]
# none (no fits), sphere (a filter) and loss (its fits go through the batcher).
DEFENSES = ("none", "sphere", "loss")


def run_with(executor, path):
    with Store(path) as store:
        summary = run(QUICK, [defenses.make(d) for d in DEFENSES], store=store, chunk_size=16,
                      progress=False, log=lambda *_: None, executor=executor)
        return summary, {r["key"]: (r["status"], r["metrics"]) for r in store.rows()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return run_with(executors.Sequential(), tmp_path_factory.mktemp("seq") / "s.sqlite")


def test_process_pool_stores_the_same_metrics(tmp_path, sequential):
    summary, metrics = run_with(executors.Process(workers=2), tmp_path / "p.sqlite")
    assert summary.ran == sequential[0].ran > 0
    assert metrics == sequential[1]


def test_ray_local_cluster_stores_the_same_metrics(tmp_path, sequential):
    pytest.importorskip("ray")  # installed by the dev extra, so CI runs this
    import ray

    try:
        summary, metrics = run_with(executors.Ray(workers=2), tmp_path / "r.sqlite")
    finally:
        ray.shutdown()
    assert summary.ran == sequential[0].ran > 0
    assert metrics == sequential[1]


def test_unknown_executor_and_bad_workers():
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        executors.make("dask")
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        executors.make("process", workers=0)
