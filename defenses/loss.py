"""Loss: drop the training points the victim model fits worst (Koh, Steinhardt & Liang 2018,
"Stronger data poisoning attacks break data sanitization defenses").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, Defense, DefenseInput, Sanitized, remove_top


@DEFENSES.register("loss")
@dataclass(frozen=True)
class Loss(Defense):
    """Score = cross-entropy -log p(y | x) (n,) of the victim recipe trained once on the whole
    poisoned set ``X`` (n, d), ``y`` (n,).

    Informed track: remove the ``budget`` highest losses overall. Blind track: remove the
    ``blind_fraction`` highest of each class.
    """

    name = "loss"
    version = "1"
    blind_fraction: float = 0.05

    def __post_init__(self):
        if not 0 <= self.blind_fraction < 1:
            raise ValueError(f"blind_fraction must be in [0, 1), got {self.blind_fraction}")

    def score(self, data: DefenseInput) -> np.ndarray:
        """Outlier score (n,) of each training point; higher is more suspicious."""
        proba = np.asarray(data.fit_recipe().predict_proba(data.X), dtype=np.float64)
        p_own = proba[np.arange(len(data.y)), data.y]
        # p(y | x) underflows to exactly 0 for points far on the wrong side of a confident model;
        # clipping keeps their loss finite (and largest) instead of inf with a log warning.
        return -np.log(np.clip(p_own, np.finfo(np.float64).tiny, None))

    def sanitize(self, data: DefenseInput) -> Sanitized:
        return Sanitized.keep(remove_top(self.score(data), data.y, data.budget, self.blind_fraction))
