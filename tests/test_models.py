"""The MLP / logistic-regression recipe: gradients, batching, weights, parity with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.datasets import load
from bench.models import MODELS, TrainJob, make
from bench.models.mlp import loss_and_grads


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic", seed=3)


@settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(1, 6), max_size=2), n_out=st.sampled_from([1, 3]),
       seed=st.integers(0, 10_000))
def test_hand_written_gradients_match_autograd(hidden, n_out, seed):
    """loss_and_grads' backward pass equals torch.autograd on the same loss (float64)."""
    g = torch.Generator().manual_seed(seed)
    K, d, B = 3, 4, 7
    sizes = [d, *hidden, n_out]
    Wt = [torch.randn(K, o, i, generator=g, dtype=torch.float64, requires_grad=True)
          for i, o in zip(sizes[:-1], sizes[1:])]
    bias = [torch.randn(K, o, 1, generator=g, dtype=torch.float64, requires_grad=True) for o in sizes[1:]]
    inputs = torch.randn(K, d, B, generator=g, dtype=torch.float64)
    if n_out == 1:
        target = torch.randint(0, 2, (K, 1, B), generator=g).double() * 2 - 1  # the label's sign
    else:
        target = torch.randint(0, n_out, (K, 1, B), generator=g)
    scale = torch.rand(K, 1, B, generator=g, dtype=torch.float64)
    decay = torch.rand(K, 1, 1, generator=g, dtype=torch.float64)
    data, grads = loss_and_grads(Wt, bias, inputs, target, scale, decay)
    total = data + 0.5 * decay.view(-1) * sum((W ** 2).sum((1, 2)) for W in Wt)
    expected = torch.autograd.grad(total.sum(), [p for pair in zip(Wt, bias) for p in pair])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_loss_is_weighted_cross_entropy():
    """The data loss equals a direct computation of sum_b scale_b * CE_b (softmax case)."""
    torch.manual_seed(0)
    Wt, bias = [torch.randn(1, 3, 2, dtype=torch.float64)], [torch.randn(1, 3, 1, dtype=torch.float64)]
    x = torch.randn(1, 2, 5, dtype=torch.float64)
    y = torch.tensor([[[0, 2, 1, 1, 0]]])
    scale = torch.rand(1, 1, 5, dtype=torch.float64)
    data, _ = loss_and_grads(Wt, bias, x, y, scale, torch.zeros(1, 1, 1, dtype=torch.float64))
    logits = (Wt[0][0] @ x[0] + bias[0][0]).T
    ce = torch.nn.functional.cross_entropy(logits, y[0, 0], reduction="none")
    torch.testing.assert_close(data[0], (ce * scale[0, 0]).sum())


def test_binary_loss_and_gradient_equal_torch_for_all_logit_sizes():
    """The single-logit loss (written with sigmoid and log, not softplus) equals torch's
    binary_cross_entropy_with_logits, from tiny to saturated logits, and its gradient is exact."""
    z = torch.tensor([[[-80.0, -30.0, -5.0, -1e-3, 0.0, 2.0, 15.0, 40.0]]], dtype=torch.float64)
    Wt, bias = [torch.ones(1, 1, 1, dtype=torch.float64)], [torch.zeros(1, 1, 1, dtype=torch.float64)]
    for label in (0.0, 1.0):
        y = torch.full_like(z, label)
        scale = torch.ones_like(z)
        data, grads = loss_and_grads(Wt, bias, z, 2 * y - 1, scale, torch.zeros(1, 1, 1, dtype=torch.float64))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        wrong = (z * (2 * label - 1) < -69)  # loss saturates at -log(1e-30) = 69.08 there
        expected = torch.where(wrong, torch.full_like(bce, -np.log(1e-30)), bce).sum()
        torch.testing.assert_close(data[0], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[1][0, 0, 0], (torch.sigmoid(z) - y).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_batched_equals_one_by_one(synthetic, backend):
    """Tolerance: predictions agree on >= 99% of test points and probabilities within 0.02;
    batching changes only the floating-point summation order (the fused trainer, "auto", trains
    each job on its own, so it must agree exactly)."""
    X, y = synthetic.train.X, synthetic.train.y
    rng = np.random.default_rng(0)
    jobs = [TrainJob(np.ones(len(y)), 1),
            TrainJob((rng.random(len(y)) > 0.3).astype(float), 2),
            TrainJob(rng.integers(0, 3, len(y)).astype(float), 3),
            TrainJob(rng.random(len(y)) * 2, 4),
            TrainJob(np.ones(len(y)), 5, labels=1 - y),
            # Fewer rows than a minibatch: its batches are narrower than the others' slots.
            TrainJob((np.arange(len(y)) < 60).astype(float), 6)]
    recipe = make("mlp", hidden=(8,), max_epochs=150, backend=backend)
    together = recipe.fit_many(X, y, 2, jobs)
    for job, model in zip(jobs, together):
        alone = recipe.fit_many(X, y, 2, [job])[0]
        assert alone.n_epochs == model.n_epochs
        p, q = alone.predict_proba(synthetic.test.X), model.predict_proba(synthetic.test.X)
        assert np.abs(p - q).max() < 0.02
        assert (p.argmax(1) == q.argmax(1)).mean() >= 0.99


def test_zero_weight_equals_removing_rows(synthetic):
    X, y = synthetic.train.X, synthetic.train.y
    keep = np.arange(len(y)) % 3 != 0
    recipe = make("mlp", hidden=(6,), max_epochs=60)
    a = recipe.fit(X, y, 2, sample_weight=keep.astype(float), seed=7)
    b = recipe.fit(X[keep], y[keep], 2, seed=7)
    np.testing.assert_allclose(a.predict_proba(synthetic.test.X), b.predict_proba(synthetic.test.X), atol=1e-4)


def test_integer_weight_equals_duplicating_rows(synthetic):
    X, y = synthetic.train.X, synthetic.train.y
    recipe = make("mlp", hidden=(6,), max_epochs=40)
    a = recipe.fit(X, y, 2, sample_weight=np.full(len(y), 2.0), seed=11)
    b = recipe.fit(np.repeat(X, 2, axis=0), np.repeat(y, 2), 2, seed=11)
    np.testing.assert_allclose(a.predict_proba(synthetic.test.X), b.predict_proba(synthetic.test.X), atol=1e-4)


def test_label_override_is_used(synthetic):
    X, y = synthetic.train.X, synthetic.train.y
    recipe = make("mlp", hidden=(8,), max_epochs=150)
    plain, flipped = recipe.fit_many(X, y, 2, [TrainJob(np.ones(len(y)), 0),
                                               TrainJob(np.ones(len(y)), 0, labels=1 - y)])
    assert (plain.predict(synthetic.test.X) == synthetic.test.y).mean() > 0.8
    assert (flipped.predict(synthetic.test.X) == synthetic.test.y).mean() < 0.2


def test_deterministic_given_seed(synthetic):
    recipe = make("mlp", hidden=(5,), max_epochs=30)
    a = recipe.fit(synthetic.train.X, synthetic.train.y, 2, seed=1)
    b = recipe.fit(synthetic.train.X, synthetic.train.y, 2, seed=1)
    c = recipe.fit(synthetic.train.X, synthetic.train.y, 2, seed=2)
    assert all(np.array_equal(u, v) for u, v in zip(a.weights, b.weights))
    assert not np.array_equal(a.weights[0], c.weights[0])


def test_embed_and_predict_proba_shapes():
    digits = load("digits")
    model = make("mlp", hidden=(16,), max_epochs=20).fit(digits.train.X, digits.train.y, 10)
    assert model.embed(digits.test.X).shape == (len(digits.test), 16)
    proba = model.predict_proba(digits.test.X)
    assert proba.shape == (len(digits.test), 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(model.predict(digits.test.X), proba.argmax(1))
    linear = make("logreg", max_epochs=5).fit(digits.train.X, digits.train.y, 10)
    np.testing.assert_array_equal(linear.embed(digits.test.X), digits.test.X)


@pytest.mark.parametrize("bad, message", [
    (dict(weights=np.ones(3)), "shape"),
    (dict(weights=-np.ones(10)), ">= 0"),
    (dict(weights=np.zeros(10)), "no training example"),
])
def test_bad_weights_are_rejected(bad, message):
    X, y = np.zeros((10, 2), np.float32), np.arange(10) % 2
    with pytest.raises(ValueError, match=message):
        make("logreg").fit_many(X, y, 2, [TrainJob(seed=0, **bad)])


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="hidden"):
        make("mlp", hidden=(0,))
    with pytest.raises(ValueError, match="lr"):
        make("mlp", lr=0)
    assert set(MODELS.names()) >= {"mlp", "logreg"}


def test_logreg_matches_sklearn_accuracy():
    from sklearn.linear_model import LogisticRegression

    digits = load("digits")
    ours = make("logreg").fit(digits.train.X, digits.train.y, 10, seed=0)
    ref = LogisticRegression(max_iter=2000).fit(digits.train.X, digits.train.y)
    acc = (ours.predict(digits.test.X) == digits.test.y).mean()
    assert acc > 0.9
    assert abs(acc - ref.score(digits.test.X, digits.test.y)) <= 0.02


@pytest.mark.realdata
def test_mlp_within_one_point_of_sklearn_on_adult(data_root):
    """PROTOCOL.md section 2: the torch recipe reproduces MLPClassifier (mean of 3 seeds each)."""
    from sklearn.neural_network import MLPClassifier

    adult = load("adult", seed=0, data_root=data_root)
    X, y, Xt, yt = adult.train.X, adult.train.y, adult.test.X, adult.test.y
    ours = make("mlp").fit_many(X, y, 2, [TrainJob(np.ones(len(y)), s) for s in range(3)])
    ours_acc = np.mean([(m.predict(Xt) == yt).mean() for m in ours])
    ref_acc = np.mean([MLPClassifier((10,), max_iter=3000, random_state=s).fit(X, y).score(Xt, yt)
                       for s in range(3)])
    assert 0.78 < ours_acc < 0.88
    assert abs(ours_acc - ref_acc) <= 0.01


def test_chunks_hold_fewer_jobs_when_each_visits_many_rows(monkeypatch):
    """fit_many caps a chunk at chunk_size jobs and, past 64 jobs, at about chunk_visits row
    visits per epoch; every job is trained once, in order."""
    import bench.models.mlp as mlp

    chunks = []
    monkeypatch.setattr(mlp, "_train_chunk", lambda recipe, X, y, n_classes, jobs: chunks.append(
        [j.seed for j in jobs]) or [j.seed for j in jobs])
    recipe = MODELS.get("mlp")(chunk_size=100, chunk_visits=80 * 1000, backend="torch")

    def chunk_sizes(n_rows, n_jobs, weight=1.0):
        chunks.clear()
        X, y = np.zeros((n_rows, 2)), np.zeros(n_rows, dtype=np.int64)
        y[0] = 1
        done = recipe.fit_many(X, y, 2, [TrainJob(np.full(n_rows, weight), s) for s in range(n_jobs)])
        assert done == list(range(n_jobs))
        return [len(c) for c in chunks]

    assert chunk_sizes(100, 250) == [100, 100, 50]          # 80,000 / 100 rows = 800: chunk_size rules
    assert chunk_sizes(1000, 250) == [80, 80, 80, 10]       # 80,000 visits / 1,000 rows
    assert chunk_sizes(500, 250, weight=2.0) == [80, 80, 80, 10]  # a weight of 2 is two visits
    assert chunk_sizes(10_000, 130) == [64, 64, 2]          # never below 64 jobs
