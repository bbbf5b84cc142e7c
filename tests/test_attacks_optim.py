"""The optimisation attacks ``go`` and ``influence`` (PROTOCOL.md section 4, attacks/optim.py)."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attacks
from attacks import ATTACKS, AttackInput
from attacks.go import GO
from attacks.influence import Influence, conjugate_gradient, hessian
from attacks.label_flip import LabelFlip
from attacks.optim import Surrogate, ascend, continuous_columns, project, through_encoder
from bench.datasets import FeatureDomain
from bench.models.heads import LinearProbe
from bench.models.mlp import MLP, MLPModel

SMALL = MLP(hidden=(4,), lr=0.05, max_epochs=40)  # trains in milliseconds on the test data


def tabular(n=90, seed=0, recipe=SMALL, target_every=4, groups=(3, 2), n_numeric=3):
    """An Adult-like attacker view: ``n_numeric`` numeric columns in [-1, 2] then one-hot groups
    of the given sizes; labels from a noisy linear rule; every ``target_every``-th row in the target."""
    rng = np.random.default_rng(seed)
    numeric = rng.uniform(-1, 2, (n, n_numeric))
    onehots = [np.eye(k)[rng.integers(0, k, n)] for k in groups]
    X = np.hstack([numeric] + onehots).astype(np.float32)
    y = (numeric.sum(1) + rng.normal(0, 0.5, n) > 1.5).astype(np.int64)
    starts = n_numeric + np.cumsum((0,) + groups)[:-1]
    domain = FeatureDomain(np.r_[np.full(n_numeric, -1.0), np.zeros(sum(groups))],
                           np.r_[np.full(n_numeric, 2.0), np.ones(sum(groups))],
                           tuple(tuple(range(s, s + k)) for s, k in zip(starts, groups)))
    return AttackInput(X, y, np.arange(n) % target_every == 0, 2, domain, recipe)


def random_model(rng, sizes, n_classes) -> MLPModel:
    return MLPModel(tuple(rng.normal(size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:])),
                    tuple(rng.normal(size=b) for b in sizes[1:]), n_classes, 1)


def assert_in_domain(X, domain):
    continuous = continuous_columns(domain, X.shape[1], "test")
    assert (X[:, continuous] >= domain.lower[continuous]).all()
    assert (X[:, continuous] <= domain.upper[continuous]).all()
    for group in domain.onehot_groups:
        block = X[:, list(group)]
        assert set(np.unique(block)) <= {0.0, 1.0}
        assert (block.sum(1) == 1).all()


MODELS = [((), 2), ((6,), 2), ((5, 4), 2), ((5,), 4)]  # (hidden, n_classes): logreg, MLPs, softmax


@pytest.mark.parametrize("hidden, n_classes", MODELS)
def test_objective_gradient_matches_finite_differences(hidden, n_classes):
    rng = np.random.default_rng(len(hidden) + n_classes)
    d = 5
    model = random_model(rng, [d, *hidden, 1 if n_classes == 2 else n_classes], n_classes)
    X, y = rng.normal(size=(6, d)), rng.integers(0, n_classes, 6)
    s = Surrogate(model, X, y, 0.0)
    w = rng.normal(size=s.n_params)
    _, grad = s.objective(w, X, y)
    eps = 1e-6
    numeric = np.zeros_like(X)
    for i in range(X.shape[0]):
        for j in range(d):
            step = np.zeros_like(X)
            step[i, j] = eps
            numeric[i, j] = (s.objective(w, X + step, y)[0] - s.objective(w, X - step, y)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hidden, n_classes", MODELS)
def test_objective_equals_double_backprop(hidden, n_classes):
    """The hand-written objective is w^T ∇θL(X), and its input gradient is what torch's double
    backprop gives."""
    rng = np.random.default_rng(7)
    d = 4
    model = random_model(rng, [d, *hidden, 1 if n_classes == 2 else n_classes], n_classes)
    X, y = rng.normal(size=(9, d)), rng.integers(0, n_classes, 9)
    s = Surrogate(model, X, y, 0.0)
    w = rng.normal(size=s.n_params)
    value, grad = s.objective(w, X, y)
    theta = s.theta.clone().requires_grad_()
    X_t = torch.tensor(X, requires_grad=True)
    g = torch.autograd.grad(s.losses(theta, X_t, torch.tensor(y)).sum(), theta, create_graph=True)[0]
    expected = g @ torch.tensor(w)
    assert value == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, torch.autograd.grad(expected, X_t)[0].numpy(), atol=1e-12)


def test_objective_is_the_first_order_increase_of_the_target_loss():
    """The sign and labels of the module docstring: a small gradient step of the surrogate on the
    poisons raises the target's true-label loss by step * Obj (w = -∇θL(X_a, Y_a))."""
    data = tabular()
    surrogate, _, _ = GO().prepare(data)
    rows = np.flatnonzero(data.target)
    X_a, y_a = torch.tensor(data.X_aux[rows], dtype=torch.float64), torch.tensor(data.y_aux[rows])
    w = -surrogate.loss_grad(data.X_aux[rows], data.y_aux[rows])
    X_p, y_p = LabelFlip().generate(data, 30, np.random.default_rng(0))
    obj, _ = surrogate.objective(w.numpy(), X_p, y_p)
    theta = surrogate.theta.clone().requires_grad_()
    poison_loss = surrogate.losses(theta, torch.tensor(X_p, dtype=torch.float64), torch.tensor(y_p)).sum()
    step = 1e-6 * torch.autograd.grad(poison_loss, theta)[0]
    # central difference of the target's true-label loss along a descent step on the poisons
    after = surrogate.losses(surrogate.theta - step, X_a, y_a).mean().item()
    before = surrogate.losses(surrogate.theta + step, X_a, y_a).mean().item()
    assert abs(obj) > 1e-3
    assert (after - before) / 2e-6 == pytest.approx(obj, rel=1e-5)


def test_go_objective_increases_over_its_steps():
    data = tabular(groups=())  # numeric only: the objective is smooth along the path
    attack = GO(step_size=0.01)
    surrogate, solve, _ = attack.prepare(data)
    rows = np.flatnonzero(data.target)
    w = -solve(surrogate.loss_grad(data.X_aux[rows], data.y_aux[rows])).numpy()
    X0, y_p = LabelFlip().generate(data, 20, np.random.default_rng(1))
    continuous = continuous_columns(data.domain, X0.shape[1], "go")
    _, values = ascend(lambda X: surrogate.objective(w, X, y_p), X0, data.domain, continuous,
                       attack.step_size, attack.steps)
    assert len(values) == attack.steps + 1
    assert values[-1] > values[0]
    increases = np.diff(values) > 0
    assert increases.mean() >= 0.9, f"objective fell at {np.flatnonzero(~increases)}"


def test_go_objective_increases_with_onehot_groups():
    data = tabular(seed=3)
    attack = GO()
    surrogate, solve, _ = attack.prepare(data)
    rows = np.flatnonzero(data.target)
    w = -solve(surrogate.loss_grad(data.X_aux[rows], data.y_aux[rows])).numpy()
    X0, y_p = LabelFlip().generate(data, 25, np.random.default_rng(2))
    X_p, y_same = attack.generate(data, 25, np.random.default_rng(2))
    np.testing.assert_array_equal(y_same, y_p)  # labels stay the label-flip ones
    assert surrogate.objective(w, X_p, y_p)[0] > surrogate.objective(w, X0, y_p)[0]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.lists(st.integers(2, 5), max_size=3).map(tuple),
       n_numeric=st.integers(1, 4), step_size=st.floats(1e-3, 5.0),
       attack=st.sampled_from(["go", "influence"]), m=st.integers(1, 40))
def test_poisons_stay_in_the_domain(seed, groups, n_numeric, step_size, attack, m):
    data = tabular(n=40, seed=seed, groups=groups, n_numeric=n_numeric,
                   recipe=MLP(hidden=(3,), lr=0.05, max_epochs=5))
    X_p, y_p = attacks.make(attack, step_size=step_size, steps=10).generate(
        data, m, np.random.default_rng(seed))
    assert X_p.shape == (m, data.X_aux.shape[1]) and X_p.dtype == np.float32
    assert y_p.shape == (m,) and y_p.dtype == np.int64
    assert_in_domain(X_p, data.domain)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10_000), groups=st.lists(st.integers(1, 5), max_size=4).map(tuple),
       scale=st.floats(0.1, 100.0))
def test_project_gives_valid_points(seed, groups, scale):
    data = tabular(n=5, groups=groups)
    Z = np.random.default_rng(seed).normal(0, scale, (20, data.X_aux.shape[1]))
    X = project(Z, data.domain)
    assert_in_domain(X, data.domain)
    for group in data.domain.onehot_groups:  # the hot column is the largest entry, first on ties
        np.testing.assert_array_equal(X[:, list(group)].argmax(1), Z[:, list(group)].argmax(1))
    np.testing.assert_array_equal(project(X, data.domain), X)  # valid points stay put


def test_influence_with_identity_hessian_equals_go(monkeypatch):
    data = tabular(seed=5)
    monkeypatch.setattr(Influence, "make_solve", lambda self, surrogate: (lambda g: g))
    go = GO(step_size=0.2).generate(data, 30, np.random.default_rng(4))
    influence = Influence(step_size=0.2).generate(data, 30, np.random.default_rng(4))
    np.testing.assert_array_equal(go[0], influence[0])
    np.testing.assert_array_equal(go[1], influence[1])


def test_influence_differs_from_go_with_the_hessian():
    data = tabular(seed=5)
    go = GO(step_size=0.2).generate(data, 30, np.random.default_rng(4))
    influence = Influence(step_size=0.2).generate(data, 30, np.random.default_rng(4))
    assert not np.array_equal(go[0], influence[0])


def test_exact_hessian_matches_autograd_and_solve_inverts_it():
    data = tabular(seed=2)
    surrogate, solve, _ = Influence(damping=0.1).prepare(data)
    H = hessian(surrogate)
    expected = torch.autograd.functional.hessian(surrogate.train_loss, surrogate.theta)
    torch.testing.assert_close(H, expected, rtol=1e-8, atol=1e-10)
    g = torch.randn(surrogate.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((H + 0.1 * torch.eye(len(g), dtype=torch.float64)) @ solve(g), g)


def test_conjugate_gradient_matches_exact_solve_on_a_convex_surrogate():
    data = tabular(seed=1, recipe=MLP(hidden=(), lr=0.05, max_epochs=40))  # logreg: H is PSD
    exact = Influence(damping=0.05).prepare(data)[1]
    surrogate, cg, _ = Influence(damping=0.05, exact_max_params=0, cg_tol=1e-10).prepare(data)
    g = torch.randn(surrogate.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cg(g), exact(g), rtol=1e-7, atol=1e-9)


def test_conjugate_gradient_on_negative_curvature():
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert torch.equal(conjugate_gradient(lambda v: -v, b, 10, 1e-8), b)  # first step: b itself
    A = torch.diag(torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64))
    x = conjugate_gradient(lambda v: A @ v, b, 10, 1e-8)
    assert torch.isfinite(x).all() and not torch.equal(x, b)


def test_singular_hessian_rejected():
    data = tabular()
    attack = Influence(damping=0.0)
    surrogate = Surrogate(MLPModel((np.zeros((8, 2)), np.zeros((2, 1))), (np.zeros(2), np.zeros(1)), 2, 1),
                          data.X_aux, data.y_aux, 0.0)  # dead ReLUs: zero rows in H
    with pytest.raises(ValueError, match="singular; use a larger damping"):
        attack.make_solve(surrogate)


DISCRETE = "needs continuous features"


@pytest.mark.parametrize("name", ["go", "influence"])
def test_text_and_discrete_domains_rejected(name):
    data = tabular()
    d = data.X_aux.shape[1]
    all_onehot = FeatureDomain(np.zeros(d), np.ones(d), (tuple(range(d)),))
    marked = SimpleNamespace(lower=data.domain.lower, upper=data.domain.upper,
                             onehot_groups=data.domain.onehot_groups, discrete=True)
    attack = attacks.make(name)
    for domain, message in ((all_onehot, f"{DISCRETE}; every column .* one-hot group"),
                            (marked, f"{DISCRETE}; this dataset's domain is marked discrete"),
                            (None, "needs the valid input domain")):
        bad = AttackInput(data.X_aux, data.y_aux, data.target, 2, domain, data.recipe)
        with pytest.raises(ValueError, match=message):
            attack.generate(bad, 5, np.random.default_rng(0))
    assert not attack._cache, "rejected before training a surrogate"


def test_wrong_domain_shape_and_missing_recipe_rejected():
    data = tabular()
    short = FeatureDomain(np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match=r"domain bounds must have shape \(8,\)"):
        GO().generate(AttackInput(data.X_aux, data.y_aux, data.target, 2, short, SMALL), 5,
                      np.random.default_rng(0))
    with pytest.raises(ValueError, match="supports the mlp and logreg recipes and the last-layer"):
        GO().generate(AttackInput(data.X_aux, data.y_aux, data.target, 2, data.domain, None), 5,
                      np.random.default_rng(0))


@pytest.mark.parametrize("name, params, message", [
    ("go", {"step_size": 0}, "go step_size must be a finite number > 0, got 0"),
    ("go", {"step_size": -0.5}, "go step_size must be a finite number > 0, got -0.5"),
    ("go", {"step_size": math.nan}, "go step_size must be a finite number > 0, got nan"),
    ("go", {"step_size": "0.1"}, "go step_size must be a finite number > 0, got '0.1'"),
    ("go", {"steps": 0}, "go steps must be an integer >= 1, got 0"),
    ("go", {"steps": 2.5}, "go steps must be an integer >= 1, got 2.5"),
    ("go", {"steps": True}, "go steps must be an integer >= 1, got True"),
    ("go", {"surrogate_seed": -1}, "go surrogate_seed must be an integer >= 0, got -1"),
    ("go", {"rule": "random"}, "label-flip rule must be 'opposite' or 'least-frequent'"),
    ("influence", {"step_size": math.inf}, "influence step_size must be a finite number > 0, got inf"),
    ("influence", {"damping": -1.0}, "influence damping must be a finite number >= 0, got -1.0"),
    ("influence", {"exact_max_params": -1}, "influence exact_max_params must be an integer >= 0, got -1"),
    ("influence", {"cg_iters": 0}, "influence cg_iters must be an integer >= 1, got 0"),
    ("influence", {"cg_tol": 0.0}, "influence cg_tol must be a finite number > 0, got 0.0"),
])
def test_hyperparameters_validated(name, params, message):
    with pytest.raises(ValueError) as err:
        attacks.make(name, **params)
    assert str(err.value).startswith(message)


def test_registry_defaults_and_hashable_specs():
    assert ATTACKS.get("go") is GO and ATTACKS.get("influence") is Influence
    assert GO() == GO() and hash(GO()) == hash(GO())  # the cache plays no part in equality
    assert (GO().steps, GO().rule) == (50, "opposite")
    assert Influence(damping=0.5).damping == 0.5


@pytest.mark.parametrize("name", ["go", "influence"])
def test_deterministic_given_the_rng(name):
    data = tabular(seed=9)
    a = attacks.make(name).generate(data, 20, np.random.default_rng(3))
    b = attacks.make(name).generate(data, 20, np.random.default_rng(3))  # a fresh surrogate
    c = attacks.make(name).generate(data, 20, np.random.default_rng(4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_no_poisons_no_surrogate():
    data = tabular()
    attack = GO()
    X_p, y_p = attack.generate(data, 0, np.random.default_rng(0))
    assert X_p.shape == (0, data.X_aux.shape[1]) and y_p.shape == (0,)
    assert not attack._cache


def test_surrogate_and_factorisation_computed_once_per_scenario(monkeypatch):
    """Scenario.poison keeps one attack instance, which trains its surrogate and factorises its
    Hessian once for all targets, rates and trials."""
    from bench.runner import Scenario
    from bench.scenarios import ScenarioSpec, freeze
    from bench.subpops import TargetRule
    import attacks.influence as influence_module

    calls = {"fit": 0, "hessian": 0}
    fit, hess = MLP.fit, influence_module.hessian

    def counting_fit(self, *args, **kwargs):
        calls["fit"] += 1
        return fit(self, *args, **kwargs)

    def counting_hessian(surrogate):
        calls["hessian"] += 1
        return hess(surrogate)

    monkeypatch.setattr(MLP, "fit", counting_fit)
    monkeypatch.setattr(influence_module, "hessian", counting_hessian)
    spec = ScenarioSpec("synthetic", "mlp", "featurematch", "influence", alphas=(1.0, 2.0), trials=2,
                        model_params=freeze({"hidden": (4,), "max_epochs": 30}),
                        finder_params=freeze({"columns": ("group",)}),
                        target_rule=TargetRule(min_aux=10, max_aux=80))
    sc = Scenario.prepare(spec)
    grid = [(int(t), a, r) for t in sc.targets[:3] for a in spec.alphas for r in range(2)]
    for key in grid:
        X_p, _ = sc.poison(*key)
        assert_in_domain(X_p, sc.splits.domain)
    assert len(grid) == 12 and calls == {"fit": 1, "hessian": 1}
    assert all(sc.attack_seconds[key] >= 0 for key in grid)


@pytest.mark.realdata
@pytest.mark.slow
def test_adult_poisons_are_valid_and_raise_the_surrogate_objective(data_root):
    """Adult (49 features: 5 numeric, 6 one-hot groups), the paper-adult FeatureMatch targets:
    the poisons are valid Adult rows and score higher on the surrogate's objective than their
    label-flip start. (That they damage the *retrained* victim more is not claimed: docs/attacks.md
    measures the opposite on Adult.)"""
    from bench.runner import Scenario
    from bench.scenarios import SCENARIOS

    sc = Scenario.prepare(SCENARIOS.get("adult/mlp/featurematch/influence"), data_root)
    aux = sc.splits.aux
    attack = Influence()
    for target in sc.targets[:3]:
        data = AttackInput(aux.X, aux.y, sc.subpops.aux == target, 2, sc.splits.domain, sc.recipe)
        m = attacks.poison_count(2.0, int(data.target.sum()))
        X_p, y_p = attack.generate(data, m, np.random.default_rng(int(target)))
        X0, _ = LabelFlip().generate(data, m, np.random.default_rng(int(target)))
        assert_in_domain(X_p, sc.splits.domain)
        surrogate, solve, _ = attack.prepare(data)
        rows = np.flatnonzero(data.target)
        w = -solve(surrogate.loss_grad(aux.X[rows], aux.y[rows])).numpy()
        assert surrogate.objective(w, X_p, y_p)[0] > surrogate.objective(w, X0, y_p)[0]
    assert surrogate.n_params == 511


# --------------------------------------------------------------------------------------------
# Last-layer recipes: the surrogate is the head on frozen features, poisons move in input space
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TanhEncoder:
    """A frozen differentiable encoder: features = tanh(X A) (n, dim) with a fixed random A."""

    d: int = 12
    dim: int = 4
    seed: int = 0

    @property
    def key(self) -> str:
        return f"tanh-test/{self.d}/{self.dim}/{self.seed}"

    @property
    def A(self) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng(self.seed).normal(size=(self.d, self.dim))).float()

    def encode(self, X):
        with torch.no_grad():
            return self.differentiable(torch.as_tensor(np.asarray(X, np.float32))).numpy()

    def differentiable(self, X):
        return torch.tanh(X.float() @ self.A)


@pytest.fixture
def rep_cache(tmp_path, monkeypatch):
    from bench import representations

    monkeypatch.setattr(representations, "user_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(representations, "_CACHES", {})


def pixels(n=80, d=12, seed=0):
    """Images-like rows in [0, 1] with a label that the tanh features can separate."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, d)).astype(np.float32)
    y = (X[:, : d // 2].sum(1) > X[:, d // 2:].sum(1)).astype(np.int64)
    return X, y, FeatureDomain(np.zeros(d, np.float32), np.ones(d, np.float32))


def test_input_gradient_through_the_encoder_matches_autograd(rep_cache):
    """through_encoder's pull-back equals torch's double backprop of Obj(E(X)) written directly."""
    encoder = TanhEncoder()
    X, y, _ = pixels()
    rng = np.random.default_rng(3)
    surrogate = Surrogate(random_model(rng, (encoder.dim, 5, 1), 2), encoder.encode(X), y, 1e-3)
    w = rng.normal(size=surrogate.n_params)
    X_p, y_p = X[:7].astype(np.float64), 1 - y[:7]
    value, grad = through_encoder(encoder, surrogate, w, X_p, y_p, batch_size=3)

    x = torch.tensor(X_p, requires_grad=True)
    theta = surrogate.theta.clone().requires_grad_()
    feats = torch.tanh(x @ encoder.A.double())
    g = torch.autograd.grad(surrogate.losses(theta, feats, torch.from_numpy(y_p)).sum(), theta,
                            create_graph=True)[0]
    obj = g @ torch.from_numpy(w)
    (expected,) = torch.autograd.grad(obj, x)
    assert value == pytest.approx(obj.item(), rel=1e-4)
    np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("attack", [GO(step_size=0.05), Influence(step_size=0.05)])
def test_last_layer_recipe_poisons_are_valid_inputs_that_raise_the_objective(rep_cache, attack):
    """With an LL recipe the surrogate is the head trained on D_aux's frozen features, and the
    poisons are inputs (pixel rows in [0, 1]) whose features score higher than the start's."""
    X, y, domain = pixels()
    recipe = LinearProbe(TanhEncoder(), epochs=30, batch_size=16)
    data = AttackInput(X, y, X[:, 0] > 0.7, 2, domain, recipe)
    m = 12
    X_p, y_p = attack.generate(data, m, np.random.default_rng(0))
    X0, _ = LabelFlip().generate(data, m, np.random.default_rng(0))
    assert X_p.shape == (m, X.shape[1]) and X_p.dtype == np.float32
    assert X_p.min() >= 0 and X_p.max() <= 1 and not np.allclose(X_p, X0)
    surrogate, solve, F_aux = attack.prepare(data)
    np.testing.assert_allclose(F_aux, recipe.features(X), rtol=1e-6)
    assert surrogate.n_params == TanhEncoder().dim + 1  # the linear head: W (dim, 1) and b
    rows = np.flatnonzero(data.target)
    w = -solve(surrogate.loss_grad(F_aux[rows], y[rows])).numpy()
    encoder = recipe.encoder
    assert (surrogate.objective(w, encoder.encode(X_p), y_p)[0]
            > surrogate.objective(w, encoder.encode(X0), y_p)[0])


def test_encoder_without_a_gradient_path_is_rejected(rep_cache):
    @dataclasses.dataclass(frozen=True)
    class Opaque:
        key: str = "opaque"
        dim: int = 2

        def encode(self, X):
            return np.asarray(X, np.float32)[:, :2]

    X, y, domain = pixels()
    data = AttackInput(X, y, X[:, 0] > 0.7, 2, domain, LinearProbe(Opaque()))
    with pytest.raises(ValueError, match="Opaque has no differentiable path"):
        GO().generate(data, 5, np.random.default_rng(0))


@pytest.mark.realdata
def test_pretrained_conv_differentiable_path_equals_its_encoding(data_root, tmp_path, monkeypatch):
    """The image encoder's torch path (what the attacks differentiate) computes its features."""
    from bench.datasets import load
    from bench.models import pretrain
    from bench.models.encoders import PretrainedConv

    monkeypatch.setenv("SUBPOP_DATA_ROOT", str(data_root))
    monkeypatch.setattr(pretrain, "user_cache_dir", lambda: tmp_path / "cache")
    encoder = PretrainedConv(pretrain.Backbone(width=4, images=100, epochs=1))
    X = load("utkface", data_root=data_root).train.X[:6]
    x = torch.tensor(X, requires_grad=True)
    features = encoder.differentiable(x)
    np.testing.assert_allclose(features.detach().numpy(), encoder.encode(X), rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(features.sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0
    meta = pretrain.load(encoder.backbone)
    assert meta.mean.shape == meta.std.shape == (encoder.dim,)


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:UTKFace. skipped")
@pytest.mark.parametrize("name", ["go", "influence"])
def test_utkface_poisons_are_images_that_raise_the_objective(data_root, tmp_path, monkeypatch, name):
    """The registered offline-UTKFace attack scenario, with a tiny backbone and 3 steps: poisons
    are pixel rows in [0, 1], moved away from their label-flip start, and score higher."""
    from dataclasses import replace

    from bench import representations
    from bench.models import pretrain
    from bench.runner import Scenario
    from bench.scenarios import SCENARIOS, freeze
    from bench.seeding import derive_seed

    monkeypatch.setenv("SUBPOP_DATA_ROOT", str(data_root))
    monkeypatch.setattr(pretrain, "user_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(representations, "user_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(representations, "_CACHES", {})
    spec = SCENARIOS.get(f"utkface/cifar10-conv-ll/featurematch/{name}")
    spec = replace(spec, model_params=freeze({"backbone_width": 4, "backbone_images": 100, "backbone_epochs": 1}),
                   attack_params=freeze({**dict(spec.attack_params), "steps": 3}))
    sc = Scenario.prepare(spec, data_root)
    target = int(sc.targets[0])
    X_p, y_p = sc.poison(target, 0.5, 0)
    aux = sc.splits.aux
    data = AttackInput(aux.X, aux.y, sc.subpops.aux == target, 2, sc.splits.domain, sc.recipe)
    rng = np.random.default_rng(derive_seed(spec.hash, target, 0.5, 0, "poison"))
    X0, _ = LabelFlip("least-frequent").generate(data, len(y_p), rng)
    assert X_p.shape == X0.shape == (len(y_p), 3 * 64 * 64) and len(y_p) > 0
    assert X_p.min() >= 0 and X_p.max() <= 1 and not np.allclose(X_p, X0)
    surrogate, solve, F_aux = sc.attack.prepare(data)
    rows = np.flatnonzero(data.target)
    w = -solve(surrogate.loss_grad(F_aux[rows], aux.y[rows])).numpy()
    features = sc.recipe.features
    assert surrogate.objective(w, features(X_p), y_p)[0] > surrogate.objective(w, features(X0), y_p)[0]


def test_vgg16_ll_poisons_move_through_the_network(rep_cache):
    """paper-utkface's recipe (VGG-16 LL; random weights stand in for ImageNet's): the same
    pull-back through VGG16Features.differentiable gives valid images that raise Obj."""
    from bench.models import make

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (24, 3 * 16 * 16)).astype(np.float32)
    y = (X[:, :100].mean(1) > X[:, 100:200].mean(1)).astype(np.int64)
    recipe = make("vgg16-ll", weights="random", input_size=32, epochs=3, batch_size=8)
    data = AttackInput(X, y, np.arange(24) % 3 == 0, 2, FeatureDomain(np.zeros(768), np.ones(768)), recipe)
    attack = GO(step_size=0.5, steps=2)
    X_p, y_p = attack.generate(data, 4, np.random.default_rng(1))
    X0, _ = LabelFlip().generate(data, 4, np.random.default_rng(1))
    assert X_p.min() >= 0 and X_p.max() <= 1 and not np.allclose(X_p, X0)
    surrogate, solve, F_aux = attack.prepare(data)
    rows = np.flatnonzero(data.target)
    w = -solve(surrogate.loss_grad(F_aux[rows], y[rows])).numpy()
    assert surrogate.objective(w, recipe.features(X_p), y_p)[0] > surrogate.objective(w, recipe.features(X0), y_p)[0]
