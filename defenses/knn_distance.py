"""k-NN distance: drop the points that are far from their nearest neighbours (Koh, Steinhardt &
Liang 2018, "Stronger data poisoning attacks break data sanitization defenses").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from bench.validation import check_integer
from defenses import DEFENSES, DefenseInput, ScoreFilter


@DEFENSES.register("knn-distance")
@dataclass(frozen=True)
class KNNDistance(ScoreFilter):
    """Score = sum of the Euclidean distances from x to its ``k`` nearest other training points
    (any class, the point itself excluded) in the model inputs ``X`` (n, d); one score per
    point (n,). ``k`` is capped at n - 1 on tiny training sets.

    Informed track: remove the ``budget`` highest scores overall. Blind track: remove the
    ``blind_fraction`` highest of each class.
    """

    name = "knn-distance"
    version = "1"
    k: int = 5

    def __post_init__(self):
        check_integer("k", self.k, 1)
        super().__post_init__()

    def score(self, data: DefenseInput) -> np.ndarray:
        """Outlier score (n,) of each training point; higher is more suspicious."""
        n = len(data.y)
        if n < 2:
            raise ValueError(f"knn-distance needs at least 2 training points, got {n}")
        X = np.asarray(data.X, dtype=np.float64)
        # kneighbors() without a query excludes each point by index; querying X for k + 1 and
        # dropping the first column would go wrong on exact duplicates, where that column may
        # hold the twin rather than the point itself.
        dist, _ = NearestNeighbors(n_neighbors=min(self.k, n - 1)).fit(X).kneighbors()
        return dist.sum(1)
