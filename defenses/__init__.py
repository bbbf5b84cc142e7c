"""Defenses against poisoning, and the one interface they share.

A defense author writes one frozen dataclass (its fields are the hyper-parameters) with a
``name``, a ``version`` and one method:

- ``sanitize(data) -> Sanitized``: which training points to keep (or reweight or relabel); the
  victim recipe is then trained on the result. See :mod:`defenses.sphere` for a full example.
- ``fit(data) -> model``: robust training that returns its own fitted model. A model may carry
  ``report``, a dict of numbers stored with each trial (DP-SGD's epsilon).

``data`` is a :class:`DefenseInput`: the poisoned training set (never which points are poison),
the victim recipe, and the budget hint of the track.
"""
from __future__ import annotations

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
    """

    X: np.ndarray
    y: np.ndarray
    n_classes: int
    recipe: object
    budget: int | None
    seed: int
    fitter: Callable[[list], list] | None = None
    trusted: np.ndarray | None = None

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


def make(name: str, **params) -> Defense:
    return DEFENSES.get(name)(**params)


from defenses import (  # noqa: E402,F401  (register built-ins)
    activation_clustering, cleanlab_defense, deep_knn, dp_sgd, dpa, knn_distance, label_sanitization,
    loss, none, roni, sever, slab, spectral_signatures, sphere, svd, trim)
