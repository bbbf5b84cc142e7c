"""Deep k-NN: drop the points whose label disagrees with the plurality label of their nearest
neighbours in the victim model's representation (Peri et al. 2020, "Deep k-NN defense against
clean-label data poisoning attacks").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from bench.validation import check_integer
from defenses import DEFENSES, Defense, DefenseInput, Sanitized

DEFAULT_K = 50


def plurality_disagrees(reps: np.ndarray, y: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Mask (n,): True where y_i is not a plurality label of the ``k`` nearest other rows of
    ``reps`` (n, e). A tie that includes y_i counts as agreement."""
    _, idx = NearestNeighbors(n_neighbors=k).fit(np.asarray(reps, dtype=np.float64)).kneighbors()
    votes = np.stack([(y[idx] == c).sum(1) for c in range(n_classes)], axis=1)  # (n, n_classes)
    return votes[np.arange(len(y)), y] < votes.max(1)


@DEFENSES.register("deep-knn")
@dataclass(frozen=True)
class DeepKNN(Defense):
    """Remove x when its label is not a plurality label among its ``k`` nearest other training
    points in ``model.embed(X)`` (n, e), the penultimate representation of the victim recipe
    trained on the poisoned set ``X`` (n, d), ``y`` (n,). Ties that include the point's own
    label keep it: only a clear disagreement is evidence of poison.

    The method sets its own removal count on both tracks. ``k`` (None by default) follows the
    paper's advice of about twice the number of poisons: 2 * budget on the informed track
    (at least 1), ``DEFAULT_K`` = 50 on the blind track; it is capped at n - 1.
    """

    name = "deep-knn"
    version = "1"
    k: int | None = None

    def __post_init__(self):
        check_integer("k", self.k, 1, allow_none=True)

    def neighbours(self, data: DefenseInput) -> int:
        """The k used on ``data`` (before the cap at n - 1)."""
        if self.k is not None:
            return int(self.k)
        return DEFAULT_K if data.budget is None else max(1, 2 * data.budget)

    def sanitize(self, data: DefenseInput) -> Sanitized:
        n = len(data.y)
        if n < 2:
            raise ValueError(f"deep-knn needs at least 2 training points, got {n}")
        reps = data.fit_recipe().embed(data.X)
        drop = plurality_disagrees(reps, data.y, data.n_classes, min(self.neighbours(data), n - 1))
        return Sanitized.keep(~drop)
