"""SVD: drop the points with the largest component outside the low-rank subspace of the data
(Koh, Steinhardt & Liang 2018, "Stronger data poisoning attacks break data sanitization
defenses").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from defenses import DEFENSES, DefenseInput, ScoreFilter


def low_rank_residuals(X: np.ndarray, y: np.ndarray, energy: float) -> np.ndarray:
    """Norm (n,) of each x - mu_y outside span(top right-singular vectors of the class-centred
    ``X`` (n, d) that reach ``energy`` of its squared singular values, and the class means)."""
    X = np.asarray(X, dtype=np.float64)
    classes, idx = np.unique(y, return_inverse=True)
    means = np.stack([X[idx == i].mean(0) for i in range(len(classes))])
    centred = X - means[idx]
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    cum = np.cumsum(s ** 2)
    # Centred data that is all zero has no energy to capture: keep no component.
    k = int(np.argmax(cum >= energy * cum[-1])) + 1 if cum[-1] > 0 else 0
    # orth drops the dependent directions (a class mean inside the top-k span, or a zero mean),
    # so the projector below is exact.
    basis = scipy.linalg.orth(np.vstack([vt[:k], means]).T)  # (d, r), orthonormal columns
    return np.linalg.norm(centred - (centred @ basis) @ basis.T, axis=1)


@DEFENSES.register("svd")
@dataclass(frozen=True)
class SVD(ScoreFilter):
    """Score = norm of x - mu_y outside the subspace spanned by the top right-singular vectors
    of the class-centred inputs ``X`` (n, d) that capture ``energy`` of the squared singular
    values, together with the class means; one score per point (n,).

    Clean data is assumed close to low rank, so a poison that the attacker had to push off the
    data manifold has a large residual even when its distance to the centroid is ordinary.

    Informed track: remove the ``budget`` highest scores overall. Blind track: remove the
    ``blind_fraction`` highest of each class.
    """

    name = "svd"
    version = "1"
    energy: float = 0.95

    def __post_init__(self):
        if not 0 < self.energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        super().__post_init__()

    def score(self, data: DefenseInput) -> np.ndarray:
        """Outlier score (n,) of each training point; higher is more suspicious."""
        return low_rank_residuals(data.X, data.y, self.energy)
