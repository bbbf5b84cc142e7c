"""Spectral signatures, activation clustering, TRIM, SEVER and DPA on tiny synthetic data.

Each defense has one case it must get right to be the method it claims to be; the data are
small Gaussians so that the whole file runs in seconds on a laptop CPU.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

import defenses.activation_clustering as ac
import defenses.dpa as dpa
import defenses.sever as sever
import defenses.spectral_signatures as ss
import defenses.trim as trim
from bench.models import make
from defenses import DEFENSES, DefenseInput


def mlp():
    return make("mlp", hidden=(8,), max_epochs=50)


class Spy:
    """A recipe that records the weights of every model it is asked to train."""

    def __init__(self, inner):
        self.inner = inner
        self.fits: list[np.ndarray | None] = []
        self.fit_many_jobs: list[list] = []
        self.models: list = []

    def fit(self, X, y, n_classes, sample_weight=None, seed=0):
        self.fits.append(None if sample_weight is None else np.array(sample_weight, dtype=float))
        self.models.append(self.inner.fit(X, y, n_classes, sample_weight=sample_weight, seed=seed))
        return self.models[-1]

    def fit_many(self, X, y, n_classes, jobs):
        # DefenseInput.fit_recipe asks for one job: record it as a single fit.
        if len(jobs) == 1:
            self.fits.append(np.array(jobs[0].weights, dtype=float))
            self.models.append(self.inner.fit_many(X, y, n_classes, jobs)[0])
            return self.models[-1:]
        self.fit_many_jobs.append(list(jobs))
        return self.inner.fit_many(X, y, n_classes, jobs)


def two_gaussians(rng, n_per_class: int, d: int, gap: float = 1.5):
    """Class 0 around -gap * e_0, class 1 around +gap * e_0, unit covariance."""
    y = np.repeat([0, 1], n_per_class)
    X = rng.normal(size=(2 * n_per_class, d))
    X[:, 0] += np.where(y == 1, gap, -gap)
    return X.astype(np.float32), y.astype(np.int64)


def test_all_five_are_registered():
    for name in ("spectral-signatures", "activation-clustering", "trim", "sever", "dpa"):
        assert DEFENSES.get(name).name == name


# --- spectral signatures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def shifted_cluster():
    """400 clean points and 30 poisons: class-0-like points moved by 6 along e_1, labelled 1."""
    rng = np.random.default_rng(0)
    X, y = two_gaussians(rng, 200, 5)
    Xp = rng.normal(scale=0.5, size=(30, 5))
    Xp[:, 0] -= 1.5
    Xp[:, 1] += 6.0
    X = np.vstack([X, Xp.astype(np.float32)])
    y = np.concatenate([y, np.ones(30, dtype=np.int64)])
    order = rng.permutation(len(y))
    poison = np.arange(len(y)) >= 400
    return X[order], y[order], poison[order]


@pytest.mark.parametrize("budget, expected_removed_from_1", [(30, 24), (None, 17)])
def test_spectral_signatures_catches_shifted_flipped_cluster(shifted_cluster, budget,
                                                            expected_removed_from_1):
    """Class 1 (230 points) loses 1.5 x 30 x 230/430 -> 24 points (informed) or
    round(1.5 x 0.05 x 230) = 17 (blind): every one of them a poison."""
    X, y, poison = shifted_cluster
    out = DEFENSES.get("spectral-signatures")().sanitize(DefenseInput(X, y, 2, mlp(), budget, 0))
    removed = out.weights == 0
    assert (removed & (y == 1)).sum() == expected_removed_from_1
    assert (removed & poison).sum() == expected_removed_from_1
    if budget is not None:
        assert removed.sum() == 45  # 1.5 m in total


def test_spectral_scores_use_the_centred_projection():
    """Moving one class's representations leaves the scores unchanged (an uncentred projection
    would change), and a lone outlier along a direction gets the top score."""
    rng = np.random.default_rng(1)
    reps = rng.normal(size=(60, 4))
    reps[7] += [0, 0, 9, 0]
    y = np.repeat([0, 1], 30)
    scores = ss.spectral_scores(reps, y)
    moved = reps + np.where(y[:, None] == 0, 5.0, -3.0) * np.array([1.0, 2.0, 0.0, 0.0])
    np.testing.assert_allclose(ss.spectral_scores(moved, y), scores, rtol=1e-9, atol=1e-12)
    assert np.argmax(scores[:30]) == 7


def test_per_class_quota():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    informed = ss.per_class_quota(y, 3, 1.5 * 7, 0.05)
    assert informed.tolist() == [7, 3, 1]  # 10.5 rounds up; the remainder goes to class 0
    assert ss.per_class_quota(y, 3, None, 1.5 * 0.1).tolist() == [9, 5, 2]
    assert ss.per_class_quota(y, 3, 1000, 0.0).tolist() == [59, 29, 9]  # each class keeps one


# --- activation clustering -------------------------------------------------------------------

def test_activation_clustering_removes_planted_cluster_and_nothing_else():
    """Class 1 gets 40 extra points 8 units away: those go, and at most a few clean points of the
    Gaussian's tail towards them. The logreg recipe embeds the input itself, so the
    representations are the isotropic Gaussians drawn here."""
    rng = np.random.default_rng(2)
    X, y = two_gaussians(rng, 300, 12, gap=2.0)
    planted = rng.normal(size=(40, 12))
    planted[:, 0] += 2.0
    planted[:, 1] += 8.0
    X = np.vstack([X, planted.astype(np.float32)])
    y = np.concatenate([y, np.ones(40, dtype=np.int64)])
    is_planted = np.arange(len(y)) >= 600
    out = DEFENSES.get("activation-clustering")().sanitize(
        DefenseInput(X, y, 2, make("logreg", max_epochs=5), None, 0))
    removed = out.weights == 0
    assert removed[is_planted].all() and removed[~is_planted].sum() <= 3


def test_activation_clustering_keeps_clean_unimodal_classes():
    rng = np.random.default_rng(3)
    X, y = two_gaussians(rng, 300, 12, gap=2.0)
    for budget in (None, 20):  # the budget is ignored
        out = DEFENSES.get("activation-clustering")().sanitize(
            DefenseInput(X, y, 2, make("logreg", max_epochs=5), budget, 0))
        assert np.all(out.weights == 1)
    assert DEFENSES.get("activation-clustering").uses_budget is False


def test_activation_clustering_planted_cluster_through_an_mlp():
    """The same with hidden representations (8 ReLU units): the planted points are removed."""
    rng = np.random.default_rng(4)
    X, y = two_gaussians(rng, 150, 5)
    planted = rng.normal(scale=0.5, size=(25, 5))
    planted[:, 1] += 6.0
    X = np.vstack([X, planted.astype(np.float32)])
    y = np.concatenate([y, np.ones(25, dtype=np.int64)])
    out = DEFENSES.get("activation-clustering")().sanitize(DefenseInput(X, y, 2, mlp(), None, 0))
    assert np.all(out.weights[300:] == 0)


def test_activation_clustering_silhouette_subsample_is_stratified():
    """A subsample smaller than the class still sees both clusters (no silhouette error)."""
    rng = np.random.default_rng(5)
    reps = np.vstack([rng.normal(size=(500, 3)), rng.normal(size=(3, 3)) + 20])
    smaller, size, silhouette = ac.ActivationClustering(silhouette_sample=50).suspicious(reps, 0)
    assert smaller[500:].all() and not smaller[:500].any()
    assert size == pytest.approx(3 / 503) and silhouette > 0.5


# --- TRIM ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flipped_linear():
    """y = [x_0 > 0] in 5 dimensions; 30% of class 0 and 10% of class 1 flipped (~20% of n),
    which shifts the boundary of a model trained on everything."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    Xt = rng.normal(size=(2000, 5)).astype(np.float32)
    yt = (Xt[:, 0] > 0).astype(np.int64)
    c0, c1 = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    idx = np.concatenate([rng.choice(c0, int(0.3 * len(c0)), replace=False),
                          rng.choice(c1, int(0.1 * len(c1)), replace=False)])
    flipped = np.zeros(len(y), dtype=bool)
    flipped[idx] = True
    return X, np.where(flipped, 1 - y, y), flipped, Xt, yt


def test_trim_recovers_linear_model_under_flipped_labels(flipped_linear):
    X, y, flipped, Xt, yt = flipped_linear
    m = int(flipped.sum())
    recipe = Spy(make("logreg", lr=0.05, max_epochs=100))
    model, kept, rounds = trim.Trim().fit_trimmed(DefenseInput(X, y, 2, recipe, m, 0))
    everything = recipe.models[0]
    assert np.all(recipe.fits[0] == 1)  # the first model sees everything
    accuracy = lambda f: (f.predict(Xt) == yt).mean()  # noqa: E731
    assert accuracy(model) >= accuracy(everything) + 0.05
    assert (kept & flipped).sum() <= 0.25 * m
    # The returned model is the last one trained, on exactly the final kept set.
    assert model is recipe.models[-1] and 1 <= rounds <= 5 and len(recipe.fits) == rounds + 1
    np.testing.assert_array_equal(recipe.fits[-1], kept.astype(float))
    assert kept.sum() == len(y) - m
    # Each kept set is the n - m lowest-loss points under the previous model.
    losses = trim.cross_entropy(recipe.models[-2], X, y)
    assert losses[kept].max() <= losses[~kept].min()


def test_trim_blind_keeps_ninety_percent_and_fit_returns_the_model(flipped_linear):
    X, y, _, _, _ = flipped_linear
    data = DefenseInput(X, y, 2, make("logreg", lr=0.05, max_epochs=100), None, 0)
    model, kept, _ = trim.Trim().fit_trimmed(data)
    assert kept.sum() == 450
    fitted = trim.Trim().fit(data)
    np.testing.assert_array_equal(fitted.model.predict(X), model.predict(X))
    np.testing.assert_array_equal(fitted.kept, kept)


def test_trim_stops_when_the_kept_set_is_stable():
    """Separable data without flips: the second loss ranking repeats the first, so one retrain."""
    rng = np.random.default_rng(6)
    X, y = two_gaussians(rng, 100, 3, gap=4.0)
    recipe = Spy(make("logreg", lr=0.05, max_epochs=100))
    _, _, rounds = trim.Trim(max_rounds=5).fit_trimmed(DefenseInput(X, y, 2, recipe, 5, 0))
    assert rounds < 5 and len(recipe.fits) == rounds + 1


# --- SEVER -----------------------------------------------------------------------------------

def direct_sever_scores(model, X, y) -> np.ndarray:
    """Independent reference: per-example last-layer gradients by torch autograd, then a numpy
    SVD of each class's centred gradient matrix."""
    h = torch.tensor(X, dtype=torch.float64)
    for W, b in zip(model.weights[:-1], model.biases[:-1]):
        h = torch.relu(h @ torch.tensor(W, dtype=torch.float64) + torch.tensor(b, dtype=torch.float64))
    rows = []
    for i in range(len(y)):
        W = torch.tensor(model.weights[-1], dtype=torch.float64, requires_grad=True)
        b = torch.tensor(model.biases[-1], dtype=torch.float64, requires_grad=True)
        z = h[i] @ W + b
        if z.shape[0] == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.tensor([float(y[i])],
                                                                                      dtype=torch.float64))
        else:
            loss = torch.nn.functional.cross_entropy(z[None], torch.tensor([int(y[i])]))
        gW, gb = torch.autograd.grad(loss, [W, b])
        rows.append(np.concatenate([gW.numpy().ravel(), gb.numpy()]))
    G = np.array(rows)
    scores = np.zeros(len(y))
    for c in np.unique(y):
        Gc = G[y == c] - G[y == c].mean(0)
        _, _, vt = np.linalg.svd(Gc)
        scores[y == c] = (Gc @ vt[0]) ** 2
    return scores


@pytest.mark.parametrize("n_classes, hidden", [(3, (8,)), (2, (8,)), (3, ())])
def test_sever_scores_equal_direct_svd(n_classes, hidden):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(90, 4)).astype(np.float32)
    y = rng.integers(0, n_classes, 90)
    model = make("mlp", hidden=hidden, max_epochs=20).fit(X, y, n_classes)
    got = sever.sever_scores(model, X, y)
    # The model's forward pass runs in float32, the reference in float64.
    want = direct_sever_scores(model, X, y)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())
    assert got.max() > 0


def test_sever_rounds_remove_the_top_scores_and_retrain():
    """Informed m = 7 over 2 rounds: 4 then 3 removed, each time the top SEVER scores under the
    current model among the points still kept; the last model is trained on the final set."""
    rng = np.random.default_rng(8)
    X, y = two_gaussians(rng, 60, 4)
    recipe = Spy(mlp())
    model, kept = sever.Sever().fit_filtered(DefenseInput(X, y, 2, recipe, 7, 0))
    assert len(recipe.fits) == 3 and np.all(recipe.fits[0] == 1) and model is recipe.models[-1]
    assert (recipe.fits[1] == 0).sum() == 4 and kept.sum() == len(y) - 7
    np.testing.assert_array_equal(recipe.fits[2], kept.astype(float))
    first = sever.sever_scores(recipe.models[0], X, y)
    np.testing.assert_array_equal(np.flatnonzero(recipe.fits[1] == 0), np.sort(np.argsort(-first)[:4]))
    rows = np.flatnonzero(recipe.fits[1] == 1)
    second = sever.sever_scores(recipe.models[1], X[rows], y[rows])
    np.testing.assert_array_equal(np.flatnonzero(~kept & (recipe.fits[1] == 1)),
                                  np.sort(rows[np.argsort(-second)[:3]]))


def test_sever_blind_removes_three_percent_per_round():
    rng = np.random.default_rng(9)
    X, y = two_gaussians(rng, 100, 4)
    _, kept = sever.Sever().fit_filtered(DefenseInput(X, y, 2, mlp(), None, 0))
    assert kept.sum() == 200 - 6 - 6  # 3% of 200, then 3% of 194 = 5.82


def test_sever_filters_flipped_outliers():
    """20 class-0 points far out along e_1 labelled 1: their gradients share one direction, so
    the SVD filter takes them out with the informed budget."""
    rng = np.random.default_rng(10)
    X, y = two_gaussians(rng, 150, 4, gap=2.0)
    Xp = rng.normal(scale=0.3, size=(20, 4))
    Xp[:, 0] -= 2.0
    Xp[:, 1] += 5.0
    X = np.vstack([X, Xp.astype(np.float32)])
    y = np.concatenate([y, np.ones(20, dtype=np.int64)])
    _, kept = sever.Sever().fit_filtered(DefenseInput(X, y, 2, mlp(), 20, 0))
    assert (~kept[300:]).sum() >= 16


# --- DPA -------------------------------------------------------------------------------------

class Constant:
    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def predict(self, X):
        return self.labels


def test_partition_vote_ties_go_to_the_lowest_class():
    vote = dpa.PartitionVote((Constant([2, 1, 0]), Constant([1, 1, 2]), Constant([2, 0, 0]),
                              Constant([1, 0, 2])), 3)
    np.testing.assert_array_equal(vote.votes(np.zeros((3, 1))), [[0, 2, 2], [2, 2, 0], [2, 0, 2]])
    np.testing.assert_array_equal(vote.predict(np.zeros((3, 1))), [1, 0, 0])
    np.testing.assert_allclose(vote.predict_proba(np.zeros((3, 1))).sum(1), 1.0)


def test_dpa_votes_like_its_models_and_trains_once_per_part():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.digitize(X[:, 0], [-0.5, 0.5]).astype(np.int64)
    Xt = rng.normal(size=(200, 4)).astype(np.float32)
    recipe = Spy(mlp())
    vote = DEFENSES.get("dpa")(k=4).fit(DefenseInput(X, y, 3, recipe, None, 0))
    assert len(recipe.fit_many_jobs) == 1 and not recipe.fits
    part = dpa.partition(X, 4)
    jobs = recipe.fit_many_jobs[0]
    assert len(jobs) == len(vote.models) == 4
    for i, job in enumerate(jobs):
        np.testing.assert_array_equal(job.weights, (part == i).astype(float))
    counts = np.zeros((len(Xt), 3), dtype=int)
    for model in vote.models:
        for row, label in enumerate(model.predict(Xt)):
            counts[row, label] += 1
    expected = [min(c for c in range(3) if counts[row, c] == counts[row].max()) for row in range(len(Xt))]
    np.testing.assert_array_equal(vote.predict(Xt), expected)
    np.testing.assert_allclose(vote.predict_proba(Xt), counts / 4)


def test_dpa_partition_is_the_feature_hash_and_ignores_order():
    rng = np.random.default_rng(12)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    part = dpa.partition(X, 10)
    order = rng.permutation(200)
    np.testing.assert_array_equal(dpa.partition(X[order], 10), part[order])
    assert part[5] == int(hashlib.sha256(X[5].tobytes()).hexdigest(), 16) % 10
    assert set(part.tolist()) == set(range(10))
    # float64 input hashes the same float32 bytes the recipe trains on.
    np.testing.assert_array_equal(dpa.partition(X.astype(np.float64), 10), part)
    assert DEFENSES.get("dpa").uses_budget is False


def test_dpa_skips_empty_parts():
    X = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    y = np.array([0, 1, 0])
    k = 50
    vote = dpa.DPA(k=k).fit(DefenseInput(X, y, 2, mlp(), None, 0))
    assert len(vote.models) == len(set(dpa.partition(X, k).tolist())) <= 3


# --- hyper-parameter validation --------------------------------------------------------------

@pytest.mark.parametrize("cls, params, message", [
    (ss.SpectralSignatures, {"removal_factor": 0}, r"removal_factor must be > 0, got 0"),
    (ss.SpectralSignatures, {"blind_fraction": 1.0}, r"blind_fraction must be in \[0, 1\), got 1.0"),
    (ac.ActivationClustering, {"n_components": 0}, r"n_components must be >= 1, got 0"),
    (ac.ActivationClustering, {"size_threshold": 0.6}, r"size_threshold must be in \[0, 0.5\], got 0.6"),
    (ac.ActivationClustering, {"silhouette_threshold": 1.5}, r"silhouette_threshold must be in \[-1, 1\]"),
    (ac.ActivationClustering, {"silhouette_sample": 2}, r"silhouette_sample must be None or >= 3, got 2"),
    (trim.Trim, {"blind_fraction": -0.1}, r"blind_fraction must be in \[0, 1\), got -0.1"),
    (trim.Trim, {"max_rounds": 0}, r"max_rounds must be >= 1, got 0"),
    (sever.Sever, {"rounds": 0}, r"rounds must be >= 1, got 0"),
    (sever.Sever, {"blind_fraction": 1}, r"blind_fraction must be in \[0, 1\), got 1"),
    (dpa.DPA, {"k": 0}, r"k must be an integer >= 1, got 0"),
    (dpa.DPA, {"k": 2.5}, r"k must be an integer >= 1, got 2.5"),
])
def test_hyperparameter_validation(cls, params, message):
    with pytest.raises(ValueError, match=message):
        cls(**params)


@pytest.mark.parametrize("cls", [trim.Trim, sever.Sever])
def test_budget_must_leave_points(cls):
    X = np.zeros((4, 2), dtype=np.float32)
    data = DefenseInput(X, np.array([0, 1, 0, 1]), 2, mlp(), 4, 0)
    with pytest.raises(ValueError, match=r"budget must be in \[0, 4\) for 4 training points, got 4"):
        cls().fit(data)
