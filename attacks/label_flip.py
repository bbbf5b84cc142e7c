"""Label flipping (PROTOCOL.md section 4): copies of target points from D_aux with wrong labels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks import ATTACKS, AttackInput


@ATTACKS.register("label-flip")
@dataclass(frozen=True)
class LabelFlip:
    """Draw m target points of D_aux with replacement and relabel them.

    ``rule``: ``"opposite"`` gives each poison 1 - its own label (binary tasks, the authors' Adult
    code); ``"least-frequent"`` gives all poisons the least frequent true class among the
    target's D_aux points (ties to the lowest class index), as for images.
    """

    rule: str = "opposite"

    def __post_init__(self):
        if self.rule not in ("opposite", "least-frequent"):
            raise ValueError(f"label-flip rule must be 'opposite' or 'least-frequent', got {self.rule!r}")

    def generate(self, data: AttackInput, m: int, rng: np.random.Generator):
        """Return poisons ``X_p`` (m, d) float32 and ``y_p`` (m,) int64."""
        rows = np.flatnonzero(data.target)
        if len(rows) == 0:
            raise ValueError("the target subpopulation has no D_aux points to copy")
        chosen = rng.choice(rows, size=m, replace=True)
        X_p = data.X_aux[chosen].astype(np.float32)
        if self.rule == "opposite":
            if data.n_classes != 2:
                raise ValueError("label-flip rule 'opposite' needs a binary task; "
                                 "use rule='least-frequent'")
            y_p = 1 - data.y_aux[chosen]
        else:
            counts = np.bincount(data.y_aux[rows], minlength=data.n_classes)
            y_p = np.full(m, int(np.argmin(counts)), dtype=np.int64)
        return X_p, y_p.astype(np.int64)
