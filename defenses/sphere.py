"""Sphere: drop the points farthest from their class centroid (Koh, Steinhardt & Liang 2018).

This is the example to copy when adding a sanitizer that scores points: a frozen dataclass
whose fields are the hyper-parameters (``blind_fraction`` comes from :class:`ScoreFilter`),
registered under its name, with one ``score`` method. ``ScoreFilter`` turns the scores into the
removals of both tracks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, DefenseInput, ScoreFilter


@DEFENSES.register("sphere")
@dataclass(frozen=True)
class Sphere(ScoreFilter):
    """Score = Euclidean distance to the centroid of the point's own class (model inputs).

    Informed track: remove the ``budget`` highest scores overall. Blind track: remove the
    ``blind_fraction`` highest of each class.
    """

    name = "sphere"
    version = "1"

    def score(self, data: DefenseInput) -> np.ndarray:
        """Distance (n,) of each point to its class centroid."""
        scores = np.zeros(len(data.y))
        for c in np.unique(data.y):
            rows = data.y == c
            scores[rows] = np.linalg.norm(data.X[rows] - data.X[rows].mean(0), axis=1)
        return scores
