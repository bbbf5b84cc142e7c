"""scikit-learn's bundled handwritten digits: the offline default (PROTOCOL.md section 8)."""
from __future__ import annotations

import numpy as np

from bench.datasets import DATASETS, FeatureDomain, Part, Splits, three_way_split


@DATASETS.register("digits")
def load_digits(seed: int = 0, data_root=None) -> Splits:
    """1,797 8x8 digit images (pixels / 16), three equal disjoint parts; bundled, no download."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    X = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    third = len(y) // 3
    tr, au, te = three_way_split(len(y), (third, third, third), seed)
    d = X.shape[1]
    return Splits(
        dataset="digits",
        train=Part(X[tr], y[tr]),
        aux=Part(X[au], y[au]),
        test=Part(X[te], y[te]),
        n_classes=10,
        domain=FeatureDomain(np.zeros(d, np.float32), np.ones(d, np.float32)),
        feature_names=tuple(f"pixel_{i}" for i in range(d)),
    )
