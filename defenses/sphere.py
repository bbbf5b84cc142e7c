"""Sphere: drop the points farthest from their class centroid (Koh, Steinhardt & Liang 2018).

This is the example to copy when adding a sanitizer: a frozen dataclass whose fields are the
hyper-parameters, registered under its name, with one ``sanitize`` method.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, Defense, DefenseInput, Sanitized, remove_top


@DEFENSES.register("sphere")
@dataclass(frozen=True)
class Sphere(Defense):
    """Score = Euclidean distance to the centroid of the point's own class (model inputs).

    Informed track: remove the ``budget`` highest scores overall. Blind track: remove the
    ``blind_fraction`` highest of each class.
    """

    name = "sphere"
    version = "1"
    blind_fraction: float = 0.05

    def __post_init__(self):
        if not 0 <= self.blind_fraction < 1:
            raise ValueError(f"blind_fraction must be in [0, 1), got {self.blind_fraction}")

    def sanitize(self, data: DefenseInput) -> Sanitized:
        scores = np.zeros(len(data.y))
        for c in np.unique(data.y):
            rows = data.y == c
            scores[rows] = np.linalg.norm(data.X[rows] - data.X[rows].mean(0), axis=1)
        return Sanitized.keep(remove_top(scores, data.y, data.budget, self.blind_fraction))
