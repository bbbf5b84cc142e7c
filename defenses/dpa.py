"""Deep partition aggregation: one model per hash partition of the training set, and a plurality
vote (Levine & Feizi, "Deep Partition Aggregation: Provable Defenses against General Poisoning
Attacks", ICLR 2021).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from bench.models import TrainJob
from bench.validation import check_integer
from defenses import DEFENSES, Defense, DefenseInput


def partition(X: np.ndarray, k: int) -> np.ndarray:
    """Part index (n,) in [0, k) of each row of X (n, d): sha256 of the row's float32 bytes mod k.

    It depends on the features alone, so neither the order of the rows nor a point's label
    moves a point to another part, and each poison can change at most one part's model.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    return np.array([int.from_bytes(hashlib.sha256(row.tobytes()).digest(), "big") % k for row in X],
                    dtype=np.int64)


@dataclass(frozen=True, eq=False)
class PartitionVote:
    """The DPA ensemble: ``models`` (one per non-empty part) vote with their ``predict``."""

    models: tuple
    n_classes: int

    def votes(self, X) -> np.ndarray:
        """Vote counts (n, n_classes)."""
        counts = np.zeros((len(X), self.n_classes), dtype=np.int64)
        for model in self.models:
            np.add.at(counts, (np.arange(len(X)), model.predict(X)), 1)
        return counts

    def predict_proba(self, X) -> np.ndarray:
        """Vote fractions (n, n_classes)."""
        return self.votes(X) / len(self.models)

    def predict(self, X) -> np.ndarray:
        # argmax returns the first maximum: ties go to the lowest class, as in the paper.
        return self.votes(X).argmax(1)


@DEFENSES.register("dpa")
@dataclass(frozen=True)
class DPA(Defense):
    """Split X (n, d), y (n,) into ``k`` parts by ``partition``, train the victim recipe on each
    part (one batched ``fit_many``; part i uses seed ``data.seed + i``) and return the
    ``PartitionVote`` of the models. Parts that receive no point get no model (only possible
    when n is small against k). The same on both tracks (the budget is ignored).
    """

    name = "dpa"
    version = "1"
    uses_budget = False
    k: int = 10

    def __post_init__(self):
        check_integer("k", self.k, 1)

    def fit(self, data: DefenseInput) -> PartitionVote:
        part = partition(data.X, self.k)
        jobs = [TrainJob((part == i).astype(np.float64), data.seed + i)
                for i in range(self.k) if (part == i).any()]
        models = data.fit_many(jobs)
        return PartitionVote(tuple(models), data.n_classes)
