"""The fused CPU trainer (bench/models/fused.py): numpy's random stream, parity with the torch
trainer, sklearn's stopping rule, determinism across threads, and the fallback without a compiler."""
from __future__ import annotations

import json
import platform

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.datasets import load
from bench.models import PrivateTraining, TrainJob, fused, make
from bench.models.mlp import _init_params, _Schedule
from bench.runner import environment


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic", seed=3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(0, 3000), draws=st.integers(0, 3))
def test_permutation_is_numpys(fused_kernel, seed, n, draws):
    """Two successive permutations drawn by the kernel from a Generator's state equal numpy's,
    whatever the state of its 32-bit buffer (``draws`` odd leaves half a 64-bit word cached)."""
    rng = np.random.default_rng(seed)
    rng.integers(0, 2 ** 32, size=draws, dtype=np.uint32)
    state = fused.pack_state(rng)
    for _ in range(2):
        np.testing.assert_array_equal(fused.permutation(state, n), rng.permutation(n))


def _jobs(n: int, y: np.ndarray, n_classes: int) -> list[TrainJob]:
    rng = np.random.default_rng(0)
    return [TrainJob(np.ones(n), 0),
            TrainJob(rng.integers(0, 3, n) * 0.7, 1),          # fractional, repeated and zero weights
            TrainJob(np.ones(n), 2, labels=(y + 1) % n_classes),
            TrainJob((np.arange(n) < 60).astype(float), 3)]  # fewer rows than a minibatch


@pytest.mark.parametrize("hidden, n_classes", [(10, 2), (40, 2), (10, 3), (16, 5), (64, 16)])
def test_fused_equals_torch_trainer(fused_kernel, synthetic, hidden, n_classes):
    """After 8 epochs the two trainers' parameters agree to 1e-5: same initialisation, same
    minibatch orders, only the floating-point summation order differs. The torch trainer's
    gradients are checked against autograd in test_models.py."""
    X, y = synthetic.train.X, synthetic.train.y
    if n_classes > 2:
        y = (y + (X[:, 0] > 0) + 2 * (X[:, 1] > 0.5) + 4 * (X[:, 2] > 0)) % n_classes
    jobs = _jobs(len(y), y, n_classes)
    recipe = make("mlp", hidden=(hidden,), max_epochs=8, n_iter_no_change=100)
    ours = recipe.fit_many(X, y, n_classes, jobs)
    ref = make("mlp", hidden=(hidden,), max_epochs=8, n_iter_no_change=100, backend="torch").fit_many(
        X, y, n_classes, jobs)
    for a, b in zip(ours, ref):
        assert a.n_epochs == b.n_epochs == 8
        for p, q in zip(a.weights + a.biases, b.weights + b.biases):
            assert p.shape == q.shape and p.dtype == np.float32
            np.testing.assert_allclose(p, q, rtol=0, atol=1e-5)


def test_stops_by_sklearns_rule(fused_kernel, synthetic):
    """Replaying MLPClassifier's rule on the epoch losses the kernel reports: training stops at the
    first epoch whose loss has failed to beat the best by tol for more than n_iter_no_change
    epochs, and not before."""
    X, y = synthetic.train.X, synthetic.train.y
    recipe = make("mlp", hidden=(6,), tol=1e-3, n_iter_no_change=3, max_epochs=500)
    plans = [_Schedule(TrainJob(np.ones(len(y)), s), len(y), recipe.batch_size) for s in range(3)]
    init = [_init_params(p.rng, [X.shape[1], 6, 1]) for p in plans]
    for _, epochs, losses in fused.train(recipe, X, 2, plans, [y] * 3, init):
        assert len(losses) == epochs < 500
        best, stale = np.inf, 0
        for e, loss in enumerate(losses, 1):
            stale = stale + 1 if loss > best - recipe.tol else 0
            best = min(best, loss)
            assert (stale > recipe.n_iter_no_change) == (e == epochs)


def test_threads_do_not_change_models(fused_kernel, synthetic):
    X, y = synthetic.train.X, synthetic.train.y
    recipe = make("mlp", hidden=(8,), max_epochs=40)
    jobs = _jobs(len(y), y, 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = recipe.fit_many(X, y, 2, jobs)
        torch.set_num_threads(2)
        two = recipe.fit_many(X, y, 2, jobs)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert a.n_epochs == b.n_epochs
        assert all(np.array_equal(p, q) for p, q in zip(a.weights + a.biases, b.weights + b.biases))


def test_unsupported_jobs_use_the_torch_trainer(fused_kernel, synthetic):
    """Private jobs, two hidden layers and logistic regression give exactly the torch trainer's
    models under backend='auto'."""
    X, y = synthetic.train.X, synthetic.train.y
    cases = [((8,), [TrainJob(np.ones(len(y)), 0, private=PrivateTraining(epochs=3))]),
             ((4, 4), [TrainJob(np.ones(len(y)), 1)]),
             ((), [TrainJob(np.ones(len(y)), 2)])]
    for hidden, jobs in cases:
        auto = make("mlp", hidden=hidden, max_epochs=5).fit_many(X, y, 2, jobs)[0]
        ref = make("mlp", hidden=hidden, max_epochs=5, backend="torch").fit_many(X, y, 2, jobs)[0]
        assert all(np.array_equal(p, q) for p, q in zip(auto.weights, ref.weights))


@pytest.mark.parametrize("cxx, reason", [("no-such-compiler", "No such file"),
                                         ('"unbalanced', "is not a command line")])
def test_without_a_compiler_the_torch_trainer_is_used(synthetic, monkeypatch, tmp_path, cxx, reason):
    X, y = synthetic.train.X, synthetic.train.y
    monkeypatch.setenv("CXX", cxx if cxx.startswith('"') else str(tmp_path / cxx))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fused.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=f"could not be built .*{reason}"):
            auto = make("mlp", hidden=(5,), max_epochs=5).fit(X, y, 2, seed=4)
        assert json.loads(environment())["mlp_fused_kernel"] == "not built: mlp uses the torch trainer"
    finally:
        fused.library.cache_clear()
    ref = make("mlp", hidden=(5,), max_epochs=5, backend="torch").fit(X, y, 2, seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(auto.weights, ref.weights))


def test_compiler_command_with_arguments_and_a_damaged_cache_entry(fused_kernel, monkeypatch, tmp_path):
    """$CXX is split as a shell would ("env c++" runs c++), and a cached library that does not
    load (here: junk where the build should be) is built again instead of disabling the kernel."""
    monkeypatch.setenv("CXX", "env " + " ".join(fused.compiler()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached, _ = fused.cache_path(fused.compiler())
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a shared library")
    fused.library.cache_clear()
    try:
        assert fused.library() is not None
    finally:
        fused.library.cache_clear()
    assert cached.read_bytes()[:4] == b"\x7fELF"


def test_bad_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be 'auto' or 'torch'"):
        make("mlp", backend="gpu")


def test_models_do_not_depend_on_the_vector_isa(fused_kernel, synthetic, tmp_path, monkeypatch):
    """The kernel built for AVX2 (x86-64-v3) trains bit-for-bit the models of the build for this
    CPU (AVX-512 where it has it): lane-wise arithmetic, fixed reduction orders, own exp and log."""
    flags = fused._cpu_flags().split()
    if platform.machine() not in ("x86_64", "AMD64") or "avx2" not in flags or "fma" not in flags:
        pytest.skip("needs an x86-64 CPU with AVX2 and FMA")
    X, y = synthetic.train.X, synthetic.train.y
    y3 = (y + (X[:, 0] > 0)) % 3
    recipe = make("mlp", hidden=(20,), max_epochs=30)
    native = [recipe.fit_many(X, y, 2, _jobs(len(y), y, 2)), recipe.fit_many(X, y3, 3, _jobs(len(y), y3, 3))]
    path = tmp_path / "avx2.so"
    fused.build(path, fused.compiler(),
                tuple("-march=x86-64-v3" if f == "-march=native" else f for f in fused.FLAGS))
    avx2 = fused.load_library(path)
    monkeypatch.setattr(fused, "library", lambda: avx2)
    other = [recipe.fit_many(X, y, 2, _jobs(len(y), y, 2)), recipe.fit_many(X, y3, 3, _jobs(len(y), y3, 3))]
    for a, b in zip(sum(native, []), sum(other, [])):
        assert a.n_epochs == b.n_epochs
        assert all(np.array_equal(p, q) for p, q in zip(a.weights + a.biases, b.weights + b.biases))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), d=st.integers(1, 20), density=st.floats(0, 1))
def test_column_split_holds_every_entry_once(seed, n, d, density):
    """The dense block and the CSR part together give back X exactly, each column in one part."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * (rng.random((n, d)) < density)).astype(np.float32)
    dense, cols, csr = fused.split_columns(X)
    assert dense.shape[1] % 8 == 0 and not dense[:, len(cols):].any()
    back = np.zeros((n, d), np.float32)
    for r in range(n):
        back[r, csr.indices[csr.indptr[r]:csr.indptr[r + 1]]] = csr.data[csr.indptr[r]:csr.indptr[r + 1]]
    assert not back[:, cols].any()
    back[:, cols] = dense[:, :len(cols)]
    np.testing.assert_array_equal(back, X)


def test_column_split_keeps_one_hot_groups_sparse():
    """Numeric columns plus one-hot groups (Adult's layout): the numeric columns go dense and every
    row keeps one sparse entry per group, so the kernel's loops have a fixed length; a
    frequent one-hot column would otherwise be taken dense and leave a varying count."""
    rng = np.random.default_rng(0)
    numeric = rng.standard_normal((500, 3))
    groups = [np.eye(k)[rng.choice(k, 500, p=np.r_[top, np.full(k - 1, (1 - top) / (k - 1))])]
              for k, top in ((8, 0.9), (12, 0.6))]
    X = np.hstack([numeric, *groups]).astype(np.float32)
    _, cols, csr = fused.split_columns(X)
    np.testing.assert_array_equal(cols, [0, 1, 2])
    assert (np.diff(csr.indptr) == 2).all()


def test_stored_environment_names_the_kernel_build(fused_kernel):
    """Every stored trial's environment says which kernel build trained its mlp models."""
    kernel = json.loads(environment())["mlp_fused_kernel"]
    assert kernel.startswith("fused_mlp-") and "-march=native" in kernel
