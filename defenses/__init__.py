"""Defenses against poisoning, and the one interface they share.

A defense author writes one frozen dataclass (its fields are the hyper-parameters) with a
``name``, a ``version`` and one method:

- ``sanitize(data) -> Sanitized``: which training points to keep (or reweight or relabel); the
  victim recipe is then trained on the result. See :mod:`defenses.sphere` for a full example.
- ``fit(data) -> model``: robust training that returns its own fitted model. A model may carry
  ``report``, a dict of numbers stored with each trial (DP-SGD's epsilon). A robust trainer that
  also drops points (TRIM, SEVER) returns ``Filtered(model, kept)``, so that its trials get the
  same filtering statistics as a sanitizer's.

``data`` is a :class:`DefenseInput`: the poisoned training set (never which points are poison),
the victim recipe, and the budget hint of the track.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import asdict, dataclass, is_dataclass
from typing import Callable, ClassVar

import numpy as np

from bench.models import TrainJob
from bench.registry import Registry

DEFENSES: Registry = Registry("defense")
TRACKS = ("informed", "blind")


@dataclass(frozen=True, eq=False)
class DefenseInput:
    """What a defense sees.

    ``X`` (n, d) float32 and ``y`` (n,) int64: the training set D ∪ D_p, shuffled together.
    ``recipe``: the victim's model recipe (``fit``, ``fit_many``; fitted models have ``embed``).
    ``budget``: informed track, the exact number of poisons m; blind track, None.
    ``seed``: for any randomness of the defense.
    ``fitter``: set by the runner to train the jobs of many trials together; defenses never use
    it directly, they call ``fit_recipe`` or ``fit_many``.
    ``trusted`` (n,) bool, only for defenses with ``needs_trusted``: the rows the defender has
    verified to be clean (a random sample of D, see docs/protocol.md); None otherwise.

    The first argument is where the features come from: ``X`` itself, or with ``rows`` (n,) the
    larger array (N, d) of which the training set is ``source[rows]``. The runner passes its
    shared pool and the rows, so ``X`` is copied out on a defense's first read of it: a defense
    that never reads the features (``none``, ``dpa``, ``trim``) costs no copy of an image pool.
    """

    source: np.ndarray
    y: np.ndarray
    n_classes: int
    recipe: object
    budget: int | None
    seed: int
    fitter: Callable[[list], list] | None = None
    trusted: np.ndarray | None = None
    rows: np.ndarray | None = None

    @functools.cached_property
    def X(self) -> np.ndarray:
        """The training set's features (n, d)."""
        return self.source if self.rows is None else self.source[self.rows]

    def fit_recipe(self, weights: np.ndarray | None = None, labels: np.ndarray | None = None):
        """Train the victim recipe on the training set, optionally re-weighted (n,) or
        relabelled (n,); seeded with ``seed``."""
        w = np.ones(len(self.y)) if weights is None else weights
        return self.fit_many([TrainJob(w, self.seed, labels)])[0]

    def fit_many(self, jobs: list[TrainJob]) -> list:
        """Train one model per :class:`bench.models.TrainJob` (weights over this training set)."""
        if self.fitter is None:
            return self.recipe.fit_many(self.X, self.y, self.n_classes, jobs)
        return self.fitter(jobs)


@dataclass(frozen=True, eq=False)
class Sanitized:
    """A sanitizer's answer: ``weights`` (n,) >= 0 (0 drops a point, 1 keeps it) and optionally
    new ``labels`` (n,)."""

    weights: np.ndarray
    labels: np.ndarray | None = None

    @classmethod
    def keep(cls, mask: np.ndarray) -> "Sanitized":
        return cls(np.asarray(mask, dtype=bool).astype(np.float64))


@dataclass(frozen=True, eq=False)
class Filtered:
    """A robust-training defense's answer when it trained on a subset: the fitted ``model`` and
    the training points it ``kept`` (n,) bool, in the order of ``DefenseInput``."""

    model: object
    kept: np.ndarray


class Defense:
    """Base class: subclasses are frozen dataclasses and set ``name`` and ``version``."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    uses_budget: ClassVar[bool] = True  # False: one run (track "any") serves both tracks
    needs_trusted: ClassVar[bool] = False  # True: an oracle defense that sees trusted clean data

    def hyperparameters(self) -> dict:
        return asdict(self) if is_dataclass(self) else {}


@dataclass(frozen=True)
class ScoreFilter(Defense):
    """Base of the sanitizers that score every point and drop the highest scores: informed
    track, the ``budget`` highest overall; blind track, the ``blind_fraction`` highest of each
    class. A subclass implements ``score(data) -> (n,)`` (higher is more suspicious)."""

    blind_fraction: float = 0.05

    def __post_init__(self):
        if not 0 <= self.blind_fraction < 1:
            raise ValueError(f"blind_fraction must be in [0, 1), got {self.blind_fraction}")

    def score(self, data: DefenseInput) -> np.ndarray:
        raise NotImplementedError

    def sanitize(self, data: DefenseInput) -> Sanitized:
        return Sanitized.keep(remove_top(self.score(data), data.y, data.budget, self.blind_fraction))


def remove_top(scores: np.ndarray, y: np.ndarray, budget: int | None, blind_fraction: float) -> np.ndarray:
    """Keep mask (n,) that drops the highest ``scores``: the top ``budget`` overall (informed
    track, so the classes share the budget by score) or the top ``blind_fraction`` of each
    class (blind track)."""
    keep = np.ones(len(scores), dtype=bool)
    if budget is not None:
        if budget > 0:
            keep[np.argsort(-scores, kind="stable")[:budget]] = False
        return keep
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = int(round(blind_fraction * len(rows)))
        keep[rows[np.argsort(-scores[rows], kind="stable")[:k]]] = False
    return keep


PLUGIN_GROUP = "subpop_bench.defenses"  # entry-point group of defenses in other packages


def make(name: str, **params) -> Defense:
    """The defense registered as ``name`` (built-in or from an installed package's entry point),
    or ``path/to/file.py:ClassName``, a defense class in a file that is not packaged."""
    if name.partition(":")[0].endswith(".py"):
        return load_file(name)(**params)
    return DEFENSES.get(name)(**params)


def load_file(spec: str) -> type:
    """The defense class ``ClassName`` of ``path/to/file.py:ClassName``, its module imported from
    the file. The class is registered under its ``name`` unless that name is taken."""
    import importlib.util
    from pathlib import Path

    path, _, cls_name = spec.rpartition(":")
    file = Path(path)
    if not cls_name or not file.is_file():
        raise ValueError(f"--defense {spec!r}: expected path/to/file.py:ClassName with an existing file")
    module_spec = importlib.util.spec_from_file_location(f"subpop_bench_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and pickling look classes up here
    module_spec.loader.exec_module(module)
    cls = getattr(module, cls_name, None)
    return _checked(cls, spec)


def _checked(cls, origin: str) -> type:
    if not (isinstance(cls, type) and issubclass(cls, Defense) and cls.name):
        raise ValueError(f"{origin}: not a Defense subclass with a name (got {cls!r})")
    if not (hasattr(cls, "sanitize") or hasattr(cls, "fit")):
        raise ValueError(f"{origin}: defense {cls.name!r} has neither sanitize nor fit")
    if cls.name not in DEFENSES:
        DEFENSES.add(cls.name, cls)
    return cls


def load_plugins() -> list[str]:
    """Register the defenses that installed packages declare under the entry-point group
    ``subpop_bench.defenses`` (name = defense name, value = ``module:Class``); returns one
    warning per plugin that failed to load, which is then left out rather than failing every
    command."""
    from importlib.metadata import entry_points

    problems = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            cls = _checked(ep.load(), f"entry point {ep.name!r} ({ep.value})")
            if cls.name != ep.name:
                raise ValueError(f"entry point {ep.name!r} names a defense called {cls.name!r}")
        except Exception as err:  # a broken plug-in must not take the built-ins down with it
            problems.append(f"defense plug-in {ep.name!r} not loaded: {type(err).__name__}: {err}")
    return problems


from defenses import (  # noqa: E402,F401  (register built-ins)
    activation_clustering, cleanlab_defense, deep_knn, dp_sgd, dpa, knn_distance, label_sanitization,
    loss, none, roni, sever, slab, spectral_signatures, sphere, svd, trim)

PLUGIN_PROBLEMS = load_plugins()
