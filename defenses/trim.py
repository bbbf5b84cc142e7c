"""TRIM: iterative trimmed loss minimisation (Jagielski et al., "Manipulating Machine Learning:
Poisoning Attacks and Countermeasures for Regression Learning", IEEE S&P 2018; Shen & Sanghavi,
"Learning with Bad Training Data via Iterative Trimmed Loss Minimization", ICML 2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, Defense, DefenseInput, Filtered


def cross_entropy(model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy (n,) of ``model.predict_proba`` at the labels ``y`` (n,)."""
    p = model.predict_proba(X)[np.arange(len(y)), y]
    # Clipped so a confidently wrong point scores a large finite loss rather than inf, which
    # would make all such points tie.
    return -np.log(np.clip(p, np.finfo(np.float64).tiny, None))


@DEFENSES.register("trim")
@dataclass(frozen=True)
class Trim(Defense):
    """Fit the victim recipe on all n points, then repeat: keep the ``n_keep`` points (X (n, d),
    y (n,)) of lowest cross-entropy under the current model and retrain on exactly those, until
    the kept set stops changing or after ``max_rounds`` retrains. Returns the last model.

    Informed track: n_keep = n - m. Blind track: n_keep = n - ``blind_fraction`` * n (rounded half up).
    """

    name = "trim"
    version = "1"
    blind_fraction: float = 0.1
    max_rounds: int = 5

    def __post_init__(self):
        if not 0 <= self.blind_fraction < 1:
            raise ValueError(f"blind_fraction must be in [0, 1), got {self.blind_fraction}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")

    def n_keep(self, n: int, budget: int | None) -> int:
        if budget is None:
            return n - math.floor(self.blind_fraction * n + 0.5)
        if not 0 <= budget < n:
            raise ValueError(f"budget must be in [0, {n}) for {n} training points, got {budget}")
        return n - budget

    def fit_trimmed(self, data: DefenseInput):
        """(model, kept mask (n,), number of retrains): the final model and the set it was
        trained on (all True when nothing is trimmed)."""
        n = len(data.y)
        n_keep = self.n_keep(n, data.budget)
        model = data.fit_recipe()
        kept = np.ones(n, dtype=bool)
        if n_keep == n:
            return model, kept, 0
        for rounds in range(self.max_rounds):
            new = np.zeros(n, dtype=bool)
            new[np.argsort(cross_entropy(model, data.X, data.y), kind="stable")[:n_keep]] = True
            if rounds > 0 and np.array_equal(new, kept):
                return model, kept, rounds
            kept = new
            model = data.fit_recipe(kept.astype(np.float64))
        return model, kept, self.max_rounds

    def fit(self, data: DefenseInput) -> Filtered:
        model, kept, _ = self.fit_trimmed(data)
        return Filtered(model, kept)
