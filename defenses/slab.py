"""Slab: drop the points that lie far from their class centroid along the direction between
the centroids (Steinhardt, Koh & Liang 2017, "Certified defenses for data poisoning attacks";
Koh, Steinhardt & Liang 2018, "Stronger data poisoning attacks break data sanitization
defenses").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, DefenseInput, ScoreFilter


@DEFENSES.register("slab")
@dataclass(frozen=True)
class Slab(ScoreFilter):
    """Score = |<x - mu_y, v_y>| on the model inputs ``X`` (n, d), one score per point (n,).

    ``mu_y`` is the centroid of the point's own class and ``v_y`` the unit vector from the
    global centroid to ``mu_y``. With two classes ``v_y`` is, up to sign, the normalised
    difference of the two class centroids, so this is the binary slab of the papers; with more
    classes it is their multi-class form (class centroid minus global centroid).

    Informed track: remove the ``budget`` highest scores overall. Blind track: remove the
    ``blind_fraction`` highest of each class.
    """

    name = "slab"
    version = "1"

    def score(self, data: DefenseInput) -> np.ndarray:
        """Outlier score (n,) of each training point; higher is more suspicious."""
        X = np.asarray(data.X, dtype=np.float64)
        centre = X.mean(0)
        scores = np.zeros(len(data.y))
        for c in np.unique(data.y):
            rows = data.y == c
            mu = X[rows].mean(0)
            v = mu - centre
            norm = np.linalg.norm(v)
            # A class whose centroid is the global one (e.g. the only class present) defines no
            # slab direction: leave its scores at 0 rather than divide by zero.
            if norm > 0:
                # Normalised so that, on the informed track, classes with centroids at different
                # distances from the centre compete on the same scale.
                scores[rows] = np.abs((X[rows] - mu) @ (v / norm))
        return scores
