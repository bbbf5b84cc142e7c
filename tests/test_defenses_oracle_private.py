"""DP-SGD (per-example clipping, noise, epsilon) and RONI (the oracle defense with trusted data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import defenses
from bench.datasets import load
from bench.models import PrivateTraining, TrainJob, make
from bench.models.mlp import loss_and_grads
from bench.runner import TRUSTED_FRACTION, Scenario, apply_defense, run
from bench.scenarios import SCENARIOS, SUITES
from bench.store import Store
from defenses import DefenseInput
from defenses.dp_sgd import epsilon
from defenses.roni import RONI


@settings(max_examples=20, deadline=None)
@given(hidden=st.lists(st.integers(1, 5), max_size=2), n_out=st.sampled_from([1, 3]),
       clip=st.floats(0.05, 5.0), seed=st.integers(0, 10_000))
def test_clipped_gradient_equals_opacus_per_sample_gradients(hidden, n_out, clip, seed):
    """The clipped batch gradient of loss_and_grads equals the sum of Opacus's per-sample
    gradients, each clipped to ``clip`` (float64, one network, no weight decay)."""
    from opacus import GradSampleModule

    g = torch.Generator().manual_seed(seed)
    d, B = 4, 9
    sizes = [d, *hidden, n_out]
    layers = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(i, o).double(), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    X = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, max(n_out, 2), (B,), generator=g)
    gsm = GradSampleModule(net, loss_reduction="sum")
    out = gsm(X)
    if n_out == 1:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.double(), reduction="sum")
    else:
        loss = torch.nn.functional.cross_entropy(out, y, reduction="sum")
    loss.backward()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    per_sample = [t for m in linears for t in (m.weight.grad_sample, m.bias.grad_sample)]
    norms = torch.sqrt(sum(t.reshape(B, -1).square().sum(1) for t in per_sample))
    factor = (clip / norms).clamp(max=1.0)
    expected = [(t * factor.view(-1, *[1] * (t.dim() - 1))).sum(0) for t in per_sample]

    Wt = [m.weight.detach()[None] for m in linears]
    bias = [m.bias.detach()[None, :, None] for m in linears]
    target = (2 * y.double() - 1)[None, None] if n_out == 1 else y[None, None]
    ones = torch.ones(1, 1, B, dtype=torch.float64)
    _, grads = loss_and_grads(Wt, bias, X.T[None], target, ones, torch.zeros(1, 1, 1, dtype=torch.float64),
                              torch.full((1, 1, 1), clip, dtype=torch.float64))
    for ours, theirs in zip(grads, expected):
        torch.testing.assert_close(ours.reshape(theirs.shape), theirs, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic", seed=5)


def test_private_job_trains_exactly_its_epochs_and_ignores_batch_companions(synthetic):
    D = synthetic.train
    recipe = make("mlp", hidden=(6,), max_epochs=15)
    private = TrainJob(np.ones(len(D)), 7, private=PrivateTraining(0.5, 1.3, epochs=4))
    plain = TrainJob(np.ones(len(D)), 8)
    alone = recipe.fit_many(D.X, D.y, 2, [private])[0]
    together = recipe.fit_many(D.X, D.y, 2, [plain, private, plain])
    assert alone.n_epochs == together[1].n_epochs == 4
    for a, b in zip(alone.weights + alone.biases, together[1].weights + together[1].biases):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The plain jobs are untouched by the private one.
    reference = recipe.fit_many(D.X, D.y, 2, [plain])[0]
    np.testing.assert_allclose(reference.weights[0], together[0].weights[0], rtol=1e-5, atol=1e-6)


def test_no_noise_and_no_clipping_is_ordinary_training(synthetic):
    """With a clip norm no gradient reaches and zero noise, DP-SGD is the recipe run for a fixed
    number of epochs."""
    D = synthetic.train
    recipe = make("mlp", hidden=(6,), max_epochs=5, n_iter_no_change=100)
    dp = recipe.fit_many(D.X, D.y, 2, [TrainJob(np.ones(len(D)), 3, private=PrivateTraining(1e9, 0.0, 5))])[0]
    ref = recipe.fit_many(D.X, D.y, 2, [TrainJob(np.ones(len(D)), 3)])[0]
    assert dp.n_epochs == ref.n_epochs == 5
    for a, b in zip(dp.weights, ref.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_noise_changes_the_model(synthetic):
    D = synthetic.train
    recipe = make("mlp", hidden=(6,))
    quiet, noisy = (recipe.fit_many(D.X, D.y, 2, [TrainJob(np.ones(len(D)), 3, private=PrivateTraining(1.0, s, 3))])[0]
                    for s in (0.0, 2.0))
    assert np.abs(quiet.weights[0] - noisy.weights[0]).max() > 1e-3


@pytest.mark.parametrize("sigma,n,batch,epochs", [(1.0, 1000, 100, 5), (0.8, 7841, 200, 20), (2.0, 500, 500, 3)])
def test_epsilon_matches_opacus_accountant_stepped_per_batch(sigma, n, batch, epochs):
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(epochs * -(-n // batch)):
        accountant.step(noise_multiplier=sigma, sample_rate=min(batch, n) / n)
    assert epsilon(sigma, n, batch, epochs, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)


def test_more_noise_gives_smaller_epsilon():
    values = [epsilon(s, 5000, 200, 10, 1e-5) for s in (0.6, 1.0, 2.0, 4.0)]
    assert values == sorted(values, reverse=True) and values[-1] > 0


@pytest.mark.parametrize("params,message", [({"noise_multiplier": 0.0}, "no privacy"),
                                            ({"clip_norm": -1.0}, "clip_norm"), ({"epochs": 0}, "epochs"),
                                            ({"delta": 1.0}, "delta")])
def test_bad_dp_hyperparameters_are_rejected(params, message):
    with pytest.raises(ValueError, match=message):
        defenses.make("dp-sgd", **params)


def test_dp_sgd_epsilon_is_stored_with_every_trial(tmp_path):
    spec = SCENARIOS.get(SUITES.get("synthetic")[0])
    defense = defenses.make("dp-sgd", epochs=3)
    with Store(tmp_path / "s.sqlite") as store:
        run([spec], [defense], store=store, progress=False, log=lambda *_: None)
        rows = store.rows()
    sc = Scenario.prepare(spec)
    assert rows and all(r["status"] == "ok" and r["track"] == "any" for r in rows)
    for r in rows:
        n = len(sc.splits.train) + r["metrics"]["m"]
        assert r["metrics"]["defense_epsilon"] == pytest.approx(epsilon(1.0, n, sc.recipe.batch_size, 3, 1e-5))
        assert r["metrics"]["defense_delta"] == 1e-5


# RONI

def blobs(seed=0, n=300, n_poison=40):
    """Two Gaussian classes and a tight far cluster of poisons labelled 0 inside class 1's region
    that a validation set drawn like the clean data is hurt by."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(-2, 1, (n // 2, 2)), rng.normal(2, 1, (n // 2, 2)),
                   rng.normal(2, 0.3, (n_poison, 2))]).astype(np.float32)
    y = np.concatenate([np.zeros(n // 2), np.ones(n // 2), np.zeros(n_poison)]).astype(np.int64)
    trusted = np.zeros(len(y), dtype=bool)
    trusted[rng.choice(n, size=80, replace=False)] = True
    return X, y, trusted


def test_roni_rejects_the_harmful_group_and_keeps_trusted_rows():
    X, y, trusted = blobs()
    recipe = make("logreg", max_epochs=200)
    data = DefenseInput(X, y, 2, recipe, None, 0, trusted=trusted)
    keep = RONI(n_groups=6, repeats=2).sanitize(data).weights > 0
    poisons = np.arange(len(y)) >= 300
    assert (~keep[poisons]).mean() >= 0.9
    assert keep[trusted].all()
    assert keep[~poisons].mean() >= 0.6


def test_roni_informed_removes_at_most_the_groups_that_reach_the_budget():
    X, y, trusted = blobs(seed=1)
    data = DefenseInput(X, y, 2, make("logreg", max_epochs=200), 40, 0, trusted=trusted)
    candidates, group, impact = RONI(n_groups=6).impacts(data)
    removed = ~(RONI(n_groups=6).sanitize(data).weights > 0)
    sizes = np.bincount(group)
    order = [g for g in np.argsort(impact, kind="stable") if impact[g] < 0]
    expected, total = [], 0
    for g in order:
        if total >= 40:
            break
        expected.append(g)
        total += sizes[g]
    assert removed.sum() == total
    assert set(np.unique(group[removed[candidates]])) == set(expected)


def test_roni_refuses_without_trusted_rows():
    X, y, _ = blobs()
    with pytest.raises(ValueError, match="trusted"):
        RONI().sanitize(DefenseInput(X, y, 2, make("logreg"), None, 0))


def test_only_oracle_defenses_see_the_trusted_rows():
    seen = {}

    class Peek(defenses.Defense):
        def __init__(self, name, oracle):
            self.name, self.needs_trusted = name, oracle

        def sanitize(self, data):
            seen[self.name] = data.trusted
            return defenses.Sanitized.keep(np.ones(len(data.y), dtype=bool))

    X, y, trusted = blobs()
    for name, oracle in (("plain", False), ("oracle", True)):
        apply_defense(Peek(name, oracle), X, y, 2, make("logreg"), None, 3, trusted=trusted)
    assert seen["plain"] is None
    order = np.random.default_rng(3).permutation(len(y))
    np.testing.assert_array_equal(seen["oracle"], trusted[order])


def test_trusted_rows_are_a_fixed_sample_of_clean_training_data():
    sc = Scenario.prepare(SCENARIOS.get(SUITES.get("synthetic")[0]))
    n = len(sc.splits.train)
    mask = sc.trusted_mask(n + 25)
    assert mask.sum() == round(TRUSTED_FRACTION * n) and not mask[n:].any()
    np.testing.assert_array_equal(mask[:n], sc.trusted_mask(n + 3)[:n])
