"""An example defense in its own package: Mahalanobis distance to the class centroid.

Installed (``pip install ./examples/my_defense``), it is found through the entry point in its
pyproject.toml: ``subpop-bench run --defense my-defense``. Unpackaged, the same class runs with
``subpop-bench run --defense examples/my_defense/my_defense/__init__.py:Mahalanobis``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses import DefenseInput, ScoreFilter


@dataclass(frozen=True)
class Mahalanobis(ScoreFilter):
    """Score = Mahalanobis distance of a point to its class centroid, under the class's
    covariance shrunk towards the identity by ``shrinkage`` (so that one-hot and constant
    columns do not make it singular)."""

    name = "my-defense"
    version = "1"
    shrinkage: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.shrinkage <= 1:
            raise ValueError(f"shrinkage must be in (0, 1], got {self.shrinkage}")

    def score(self, data: DefenseInput) -> np.ndarray:
        scores = np.zeros(len(data.y))
        for c in np.unique(data.y):
            rows = data.y == c
            centred = data.X[rows] - data.X[rows].mean(0)
            cov = np.atleast_2d(np.cov(centred, rowvar=False)) if rows.sum() > 1 else np.zeros((data.X.shape[1],) * 2)
            cov = (1 - self.shrinkage) * cov + self.shrinkage * np.eye(len(cov))
            scores[rows] = np.sqrt(np.einsum("ij,ij->i", centred @ np.linalg.inv(cov), centred))
        return scores
