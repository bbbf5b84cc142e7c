"""A small synthetic dataset with planted subpopulations, for fast tests."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.datasets import DATASETS, FeatureDomain, Part, Splits


@DATASETS.register("synthetic")
def load_synthetic(seed: int = 0, data_root=None, n_per_part: int = 600, n_groups: int = 12,
                   n_features: int = 8) -> Splits:
    """Gaussian blobs: ``n_groups`` planted groups (annotation column ``group``), each with its
    own centre and a majority label; 600 examples per part, 2 classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(n_groups, n_features))
    group_label = np.arange(n_groups) % 2
    # Unequal group sizes, so subpopulation filters by size have something to filter.
    weights = rng.uniform(0.5, 1.5, n_groups)
    weights /= weights.sum()

    def part() -> Part:
        g = rng.choice(n_groups, size=n_per_part, p=weights)
        X = centres[g] + rng.normal(0.0, 1.0, size=(n_per_part, n_features))
        noisy = rng.random(n_per_part) < 0.05
        y = np.where(noisy, 1 - group_label[g], group_label[g])
        return Part(X.astype(np.float32), y.astype(np.int64), pd.DataFrame({"group": g}))

    train, aux, test = part(), part(), part()
    lo = np.minimum.reduce([p.X.min(0) for p in (train, aux, test)])
    hi = np.maximum.reduce([p.X.max(0) for p in (train, aux, test)])
    return Splits("synthetic", train, aux, test, 2, FeatureDomain(lo, hi),
                  tuple(f"x{i}" for i in range(n_features)))
