"""Datasets: each loader turns files (or bundled data) into the three disjoint parts of PROTOCOL.md.

A loader is a function ``load(seed, data_root) -> Splits`` registered in :data:`DATASETS`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.registry import Registry


class DataError(RuntimeError):
    """Missing, corrupt or malformed data; the message names the file and what was expected."""


@dataclass(frozen=True, eq=False)
class Part:
    """One split. ``X`` (n, d) float32 model inputs, ``y`` (n,) int64 labels in [0, n_classes),
    ``annotations`` n rows of raw columns for FeatureMatch (or None)."""

    X: np.ndarray
    y: np.ndarray
    annotations: pd.DataFrame | None = None

    def __post_init__(self):
        if self.X.ndim != 2 or self.y.shape != (self.X.shape[0],):
            raise ValueError(f"Part needs X (n, d) and y (n,); got {self.X.shape} and {self.y.shape}")
        if self.annotations is not None and len(self.annotations) != len(self.y):
            raise ValueError("annotations must have one row per example")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class FeatureDomain:
    """The valid input region: per-feature ``lower``/``upper`` bounds (d,) and one-hot groups
    (tuples of column indices of which exactly one is hot). Attacks project poisons onto it.
    ``discrete``: the features are symbols (text token ids), which gradient attacks cannot move."""

    lower: np.ndarray
    upper: np.ndarray
    onehot_groups: tuple[tuple[int, ...], ...] = ()
    discrete: bool = False


@dataclass(frozen=True, eq=False)
class Splits:
    """D (``train``), D_aux (``aux``) and D_t (``test``): disjoint, sampled without replacement."""

    dataset: str
    train: Part
    aux: Part
    test: Part
    n_classes: int
    domain: FeatureDomain
    feature_names: tuple[str, ...] = field(default=())

    @property
    def n_features(self) -> int:
        return self.train.X.shape[1]


DATASETS: Registry = Registry("dataset")


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-root``, else ``$SUBPOP_DATA_ROOT``, else the user cache (``$XDG_CACHE_HOME`` or
    ``~/.cache``)/subpop-bench/data."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("SUBPOP_DATA_ROOT"):
        return Path(os.environ["SUBPOP_DATA_ROOT"]).expanduser()
    return user_cache_dir() / "data"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "subpop-bench"


def three_way_split(n: int, sizes: tuple[int, int, int], seed: int, stratify: np.ndarray | None = None):
    """Disjoint index arrays of exactly the given sizes drawn without replacement from
    ``range(n)``. With ``stratify`` (n,) labels, each part keeps the class shares of the whole up
    to one example per class: every class is spread evenly over a random order that is then cut
    into consecutive parts."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} need {sum(sizes)} examples, only {n} available")
    rng = np.random.default_rng(seed)
    if stratify is None:
        order = rng.permutation(n)
    else:
        stratify = np.asarray(stratify)
        if stratify.shape != (n,):
            raise ValueError(f"stratify must have shape ({n},), got {stratify.shape}")
        # Example j of a class of size c sits at (j + u) / c with u uniform in [0, 1): each class
        # is evenly spaced along [0, 1), so any stretch of the order is stratified.
        position = np.empty(n)
        for k in np.unique(stratify):
            rows = rng.permutation(np.flatnonzero(stratify == k))
            position[rows] = (np.arange(len(rows)) + rng.random(len(rows))) / len(rows)
        order = np.argsort(position, kind="stable")
    bounds = np.cumsum((0,) + tuple(sizes))
    return tuple(rng.permutation(order[bounds[i]:bounds[i + 1]]) for i in range(3))


def load(name: str, seed: int = 0, data_root: str | os.PathLike | None = None) -> Splits:
    """Load dataset ``name`` split with ``seed``."""
    return DATASETS.get(name)(seed=seed, data_root=data_root)


from bench.datasets import adult, cifar10, digits, imdb, synthetic, utkface  # noqa: E402,F401  (register built-ins)
