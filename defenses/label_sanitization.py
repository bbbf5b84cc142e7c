"""Label sanitization: relabel a point to the label most of its nearest neighbours agree on
(Paudice, Muñoz-González & Lupu 2018, "Label sanitization against label flipping poisoning
attacks").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from bench.validation import check_integer
from defenses import DEFENSES, Defense, DefenseInput, Sanitized


def knn_relabel(X: np.ndarray, y: np.ndarray, n_classes: int, k: int, eta: float) -> np.ndarray:
    """New labels (n,): the plurality label of the ``k`` nearest other rows of ``X`` (n, d)
    where at least a fraction ``eta`` of them carry it, else the own label. All votes use the
    original labels, so the result does not depend on the order of the points."""
    _, idx = NearestNeighbors(n_neighbors=k).fit(np.asarray(X, dtype=np.float64)).kneighbors()
    votes = np.stack([(y[idx] == c).sum(1) for c in range(n_classes)], axis=1)  # (n, n_classes)
    top = votes.max(1)
    # When the own label is among tied pluralities, the neighbours do not contradict it.
    change = (top >= eta * k) & (votes[np.arange(len(y)), y] < top)
    return np.where(change, votes.argmax(1), y).astype(np.int64)


@DEFENSES.register("label-sanitization")
@dataclass(frozen=True)
class LabelSanitization(Defense):
    """Relabel x to the plurality label of its ``k`` nearest other training points in the model
    inputs ``X`` (n, d) when at least a fraction ``eta`` of them carry that label. Returns all
    weights 1 (n,) and the new labels (n,); nothing is removed. ``k`` is capped at n - 1.

    The rule ignores the budget hint, so it runs once for both tracks.
    """

    name = "label-sanitization"
    version = "1"
    uses_budget = False
    k: int = 10
    eta: float = 0.5

    def __post_init__(self):
        check_integer("k", self.k, 1)
        if not 0 < self.eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {self.eta}")

    def sanitize(self, data: DefenseInput) -> Sanitized:
        n = len(data.y)
        if n < 2:
            raise ValueError(f"label-sanitization needs at least 2 training points, got {n}")
        labels = knn_relabel(data.X, data.y, data.n_classes, min(self.k, n - 1), self.eta)
        return Sanitized(np.ones(n), labels)
