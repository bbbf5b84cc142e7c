"""Loss: drop the training points the victim model fits worst (Koh, Steinhardt & Liang 2018,
"Stronger data poisoning attacks break data sanitization defenses").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, DefenseInput, ScoreFilter


@DEFENSES.register("loss")
@dataclass(frozen=True)
class Loss(ScoreFilter):
    """Score = cross-entropy -log p(y | x) (n,) of the victim recipe trained once on the whole
    poisoned set ``X`` (n, d), ``y`` (n,).

    Informed track: remove the ``budget`` highest losses overall. Blind track: remove the
    ``blind_fraction`` highest of each class.
    """

    name = "loss"
    version = "1"

    def score(self, data: DefenseInput) -> np.ndarray:
        """Outlier score (n,) of each training point; higher is more suspicious."""
        proba = np.asarray(data.fit_recipe().predict_proba(data.X), dtype=np.float64)
        p_own = proba[np.arange(len(data.y)), data.y]
        # p(y | x) underflows to exactly 0 for points far on the wrong side of a confident model;
        # clipping keeps their loss finite (and largest) instead of inf with a log warning.
        return -np.log(np.clip(p_own, np.finfo(np.float64).tiny, None))
