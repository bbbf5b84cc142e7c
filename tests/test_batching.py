"""The dynamic batcher that trains the fits of many defenses together."""
from __future__ import annotations

import random
import time

import pytest

from bench.batching import FitBatcher


def fake_fit_many(jobs):
    return [("model", job) for job in jobs]


def test_requests_of_all_live_tasks_form_one_batch():
    batcher = FitBatcher(fake_fit_many)

    def task(rounds):
        def run(fit):
            out = []
            for r in range(rounds):
                time.sleep(random.random() / 200)  # timing must not change the batches
                out.append(fit([f"r{r}"])[0])
            return out
        return run

    results = batcher.run([task(3), task(1), task(2), task(0)])
    assert results[0] == [("model", "r0"), ("model", "r1"), ("model", "r2")]
    assert results[3] == []
    # Round 1: three tasks ask; round 2: two; round 3: one.
    assert batcher.batches == [3, 2, 1]


def test_batches_are_ordered_by_task_and_keep_multi_job_requests_together():
    seen = []

    def fit_many(jobs):
        seen.append(list(jobs))
        return [j.upper() for j in jobs]

    batcher = FitBatcher(fit_many)
    ids = list(range(5))
    random.shuffle(ids)

    def task(i):
        def run(fit):
            time.sleep(random.random() / 100)  # arrival order differs from task order
            return fit([f"t{i}a", f"t{i}b"])
        return run

    results = batcher.run([task(i) for i in ids])
    assert seen == [[f"t{i}{s}" for i in ids for s in "ab"]]  # task order, not arrival order
    for res in results:
        assert res[0][:2] == res[1][:2] and res[0].endswith("A") and res[1].endswith("B")


def test_exceptions_are_returned_per_task_and_others_finish():
    batcher = FitBatcher(fake_fit_many)

    def bad(fit):
        raise RuntimeError("defense bug")

    def good(fit):
        return fit(["x"])[0]

    results = batcher.run([bad, good, good])
    assert isinstance(results[0], RuntimeError)
    assert results[1] == results[2] == ("model", "x")


def test_a_failing_batch_fails_each_request():
    def broken(jobs):
        raise ValueError("weights select no training example")

    results = FitBatcher(broken).run([lambda fit: fit(["a"]), lambda fit: fit(["b"])])
    assert all(isinstance(r, ValueError) for r in results)


def test_real_recipe_through_the_batcher_matches_direct_training():
    import numpy as np

    from bench.datasets import load
    from bench.models import TrainJob, make

    data = load("synthetic", seed=1)
    recipe = make("mlp", hidden=(6,), max_epochs=40)
    X, y = data.train.X, data.train.y
    batcher = FitBatcher(lambda jobs: recipe.fit_many(X, y, 2, jobs))
    masks = [np.arange(len(y)) % k != 0 for k in (2, 3, 5)]
    results = batcher.run([lambda fit, m=m: fit([TrainJob(m.astype(float), 4)])[0] for m in masks])
    for mask, model in zip(masks, results):
        direct = recipe.fit(X, y, 2, sample_weight=mask.astype(float), seed=4)
        assert (direct.predict(data.test.X) == model.predict(data.test.X)).mean() >= 0.99
    assert batcher.batches == [3]


@pytest.mark.parametrize("n", [1, 17])
def test_many_tasks_terminate(n):
    batcher = FitBatcher(fake_fit_many)
    results = batcher.run([lambda fit, i=i: [fit([i]) for _ in range(i % 4)] for i in range(n)])
    assert len(results) == n
