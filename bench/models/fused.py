"""The fused CPU trainer of the ``mlp`` recipe: one job's whole training in one C++ call.

``fused_mlp.cpp`` is compiled on first use with the system's C++ compiler (``$CXX``, else
``c++``) for this CPU (``-march=native``) and cached under the user cache directory, keyed by
the source, the compiler and the CPU's flags; it is loaded with ``ctypes``, which releases the GIL
during the call, so jobs train in parallel threads. Without a compiler the torch trainer is used.

It covers one hidden layer of at most 64 units, a logistic output or a softmax over at most 16
classes, and non-private jobs; ``MLP.fit_many`` sends everything else to the torch trainer. A job
draws its initialisation and minibatch orders from the same numpy Generator as in the torch
trainer (the kernel reproduces numpy's PCG64 and ``permutation``), so the two trainers give the
same models up to floating-point rounding.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from bench.datasets import user_cache_dir

SOURCE = Path(__file__).with_name("fused_mlp.cpp")
# -ffp-contract=fast is GCC's default; said explicitly so that clang fuses multiply-adds alike.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=fast")
MAX_HIDDEN, MAX_CLASSES = 64, 16
# Relative costs per example for split_columns, in units of one dense column, measured on this
# machine (docs/performance.md): a sparse entry (a read-modify-write of a gradient row) 3.3; a
# per-row entry count that varies (branch mispredictions at the end of both loops) 14.
COST = {"sparse": 3.3, "varying": 14.0}
LANES = 16

_i64, _i32, _f32, _f64, _u64 = (np.ctypeslib.ndpointer(t, flags="C_CONTIGUOUS")
                                for t in (np.int64, np.int32, np.float32, np.float64, np.uint64))


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def compiler() -> list[str]:
    """The C++ compiler command: ``$CXX`` split as a shell would (``ccache g++`` works), else c++."""
    raw = os.environ.get("CXX", "")
    try:
        return shlex.split(raw) or ["c++"]
    except ValueError as err:
        raise ValueError(f"$CXX={raw!r} is not a command line: {err}") from None


def build(path: Path, command: list[str], flags: tuple[str, ...] = FLAGS) -> None:
    """Compile ``fused_mlp.cpp`` with the compiler ``command`` into the shared library ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Compiled to a private name and renamed, so that processes starting together never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        subprocess.run([*command, *flags, "-o", tmp, str(SOURCE)], check=True, capture_output=True, text=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_path(command: list[str]) -> tuple[Path, str]:
    """Where the build of this source by this compiler for this CPU is cached, and the compiler's
    ``--version`` text."""
    version = subprocess.run([*command, "--version"], check=True, capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, *FLAGS, _cpu_flags()]).encode())
    return user_cache_dir() / "kernels" / f"fused_mlp-{key.hexdigest()[:16]}.so", version


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with a warning) when it cannot be built here."""
    try:
        command = compiler()
        path, version = cache_path(command)
        try:
            lib = load_library(path)
        except OSError:  # not built yet, or a damaged cache entry: (re)build it
            build(path, command)
            lib = load_library(path)
    except (OSError, ValueError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        warnings.warn(f"the fused CPU trainer could not be built ({detail}); using the torch trainer",
                      RuntimeWarning, stacklevel=2)
        return None
    lib.build_info = f"{path.stem} ({version.splitlines()[0] if version else command[0]}, {' '.join(FLAGS)})"
    return lib


def describe() -> str:
    """Which build of the kernel trains ``mlp`` models here, for the provenance of stored trials
    (models differ at floating-point level between the fused and the torch trainer)."""
    lib = library()
    return lib.build_info if lib is not None else "not built: mlp uses the torch trainer"


def load_library(path: Path) -> ctypes.CDLL:
    """Load a build of ``fused_mlp.cpp`` and declare its functions' signatures."""
    lib = ctypes.CDLL(str(path))
    lib.train_mlp.restype = ctypes.c_int
    lib.train_mlp.argtypes = [_f32, _i32, ctypes.c_int32, ctypes.c_int32,
                              _i64, _i32, _f32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                              _i32, _f32, _f32, ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                              ctypes.c_double, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                              _f32, _u64, _f64]
    lib.permutation.restype = None
    lib.permutation.argtypes = [_u64, _i32, ctypes.c_int64]
    return lib


def supports(hidden: tuple[int, ...], n_classes: int) -> bool:
    """Whether the kernel has a variant for this network (and could be built here)."""
    return (len(hidden) == 1 and hidden[0] <= MAX_HIDDEN and n_classes <= MAX_CLASSES
            and library() is not None)


def pack_state(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 Generator's state as the kernel's six words."""
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ValueError(f"the fused trainer needs a PCG64 generator, got {st['bit_generator']}")
    s, inc = st["state"]["state"], st["state"]["inc"]
    mask = (1 << 64) - 1
    return np.array([s >> 64, s & mask, inc >> 64, inc & mask, st["has_uint32"], st["uinteger"]],
                    dtype=np.uint64)


def permutation(state: np.ndarray, n: int) -> np.ndarray:
    """``Generator.permutation(n)`` computed by the kernel from ``state`` (advanced in place)."""
    out = np.empty(n, dtype=np.int32)
    library().permutation(state, out, n)
    return out


def split_columns(X: np.ndarray):
    """The pool (n, d) as the kernel reads it: its ``j`` densest columns as a row-major block
    (n, multiple of 8, zero-padded) with their column indices, and the other columns as a CSR
    matrix (zeros left out) whose indices are columns of X.

    ``j`` minimises the cost model of ``COST``: per example, each dense column costs one unit,
    each non-zero sparse entry ``COST["sparse"]`` units, and a per-row count of sparse entries
    that varies from row to row ``COST["varying"]`` (the loops over a row's entries then end at
    unpredictable places). For Adult this picks the 5 numeric columns as dense and leaves the 44
    one-hot columns sparse, exactly 6 entries in every row."""
    X = np.asarray(X, dtype=np.float32)
    nonzero = X != 0
    order = np.argsort(-nonzero.mean(0), kind="stable")
    remaining = nonzero.sum(1)  # sparse entries per row when the first j of `order` are dense
    costs = []
    for j in range(X.shape[1] + 1):
        costs.append(j + COST["sparse"] * remaining.mean()
                     + COST["varying"] * (remaining.min() != remaining.max()))
        if j < X.shape[1]:
            remaining = remaining - nonzero[:, order[j]]
    j = int(np.argmin(costs))
    dense_cols = np.sort(order[:j]).astype(np.int32)
    dense = np.zeros((X.shape[0], -(-j // 8) * 8), dtype=np.float32)
    dense[:, :j] = X[:, dense_cols]
    sparse_cols = np.sort(order[j:])
    csr = scipy.sparse.csr_matrix(X[:, sparse_cols])
    csr.indptr = csr.indptr.astype(np.int64)
    csr.indices = sparse_cols[csr.indices].astype(np.int32)
    csr.data = csr.data.astype(np.float32)
    return dense, dense_cols, csr


def _new_params(d: int, hidden: int, n_out: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Zeroed flat parameters as the kernel lays them out, widths padded to its lanes (W1 (d, HP)
    | b1 (HP) | W2 (HP, CO) | b2 (CO)), and views [W1 (d, hidden), b1, W2 (hidden, n_out), b2]
    of the unpadded parts."""
    hp = -(-hidden // LANES) * LANES
    co = LANES if n_out > 1 else 1
    theta = np.zeros(d * hp + hp + hp * co + co, dtype=np.float32)
    parts = np.split(theta, np.cumsum([d * hp, hp, hp * co]))
    return theta, [parts[0].reshape(d, hp)[:, :hidden], parts[1][:hidden],
                   parts[2].reshape(hp, co)[:hidden, :n_out], parts[3][:n_out]]


def train(recipe, X: np.ndarray, n_classes: int, schedules: list, labels: list[np.ndarray],
          init: list[list[np.ndarray]]) -> list[tuple[list[np.ndarray], int, np.ndarray]]:
    """Train each job: ``schedules[k]`` (a ``_Schedule``: its visits and RNG, advanced past the
    initialisation), ``labels[k]`` (n,) its pool labels, ``init[k]`` its initial [W1 (d, h),
    b1 (h,), W2 (h, n_out), b2 (n_out,)]. Returns per job the trained parameters in the same
    shapes, the number of epochs and each epoch's mean training loss (epochs,). Jobs run in
    ``torch.get_num_threads()`` threads, largest first."""
    lib = library()
    dense, dense_cols, csr = split_columns(X)
    d, h = X.shape[1], recipe.hidden[0]
    n_out = 1 if n_classes == 2 else n_classes

    def one(k: int):
        plan = schedules[k]
        theta, views = _new_params(d, h, n_out)
        for view, start in zip(views, init[k]):
            view[...] = start
        lab = labels[k][plan.rows]
        lab = (2 * lab - 1 if n_out == 1 else lab).astype(np.float32)
        state = pack_state(plan.rng)
        losses = np.empty(recipe.max_epochs, dtype=np.float64)
        epochs = lib.train_mlp(dense, dense_cols, len(dense_cols), dense.shape[1], csr.indptr, csr.indices,
                               csr.data, d, h, n_classes, plan.rows.astype(np.int32),
                               plan.visit_weight.astype(np.float32), lab, plan.n, recipe.lr, recipe.alpha,
                               recipe.tol, recipe.n_iter_no_change, recipe.max_epochs, recipe.batch_size,
                               theta, state, losses)
        if epochs == -2:
            raise MemoryError("the fused trainer ran out of memory")
        if epochs < 1:
            raise RuntimeError(f"the fused trainer has no variant for hidden={h}, n_classes={n_classes}")
        return [view.copy() for view in views], int(epochs), losses[:epochs]

    order = sorted(range(len(schedules)), key=lambda k: -schedules[k].n)
    threads = max(1, min(torch.get_num_threads(), len(order)))
    if threads == 1:
        done = {k: one(k) for k in order}
    else:
        with ThreadPoolExecutor(threads) as pool:
            futures = {k: pool.submit(one, k) for k in order}
            try:
                done = {k: f.result() for k, f in futures.items()}
            except BaseException:
                # On an error or Ctrl-C, drop the jobs not yet started instead of training them all.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return [done[k] for k in range(len(schedules))]
