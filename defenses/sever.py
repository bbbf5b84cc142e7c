"""SEVER: filter the points whose loss gradients stick out along the top singular direction, and
retrain (Diakonikolas, Kamath, Kane, Li, Steinhardt & Stewart, "Sever: A Robust Meta-Algorithm
for Stochastic Optimization", ICML 2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, Defense, DefenseInput, Filtered
from defenses.spectral_signatures import spectral_scores


def last_layer_gradients(model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example gradients (n, (h+1) * n_out) of the cross-entropy with respect to the last
    layer's weight matrix (h, n_out) and bias (n_out,) of an MLPModel, for X (n, d), y (n,).

    Row i is the flattened outer product [embed(x_i), 1] (h+1,) x delta_i (n_out,), with
    delta_i = p_i - onehot(y_i) for softmax outputs and sigmoid(z_i) - y_i for the single
    logistic output of two classes. The L2 penalty's gradient is left out: it is the same for
    every example, so centring removes it anyway.
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    z = model.decision_function(X).astype(np.float64)
    if z.shape[1] == 1:
        delta = 1.0 / (1.0 + np.exp(-z)) - y[:, None]
    else:
        e = np.exp(z - z.max(1, keepdims=True))
        delta = e / e.sum(1, keepdims=True)
        delta[np.arange(len(y)), y] -= 1.0
    h = np.hstack([model.embed(X).astype(np.float64), np.ones((len(y), 1))])
    return (h[:, :, None] * delta[:, None, :]).reshape(len(y), -1)


def sever_scores(model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SEVER outlier scores (n,): per class, the squared projection of the class-centred
    last-layer gradients (``last_layer_gradients``) on the top right singular vector of the
    class's centred gradient matrix."""
    return spectral_scores(last_layer_gradients(model, X, y), np.asarray(y))


@DEFENSES.register("sever")
@dataclass(frozen=True)
class Sever(Defense):
    """Fit the victim recipe on X (n, d), y (n,); then ``rounds`` times: score the points still
    kept with ``sever_scores`` under the current model, remove the top p of them overall, and
    retrain on the rest. Returns the last model.

    Informed track: the budget m is spread over the rounds, p = ceil(m / rounds) per round (the
    last round takes what is left, so at most m in total). Blind track: p = ``blind_fraction``
    of the current set per round (rounded half up).
    """

    name = "sever"
    version = "1"
    rounds: int = 2
    blind_fraction: float = 0.03

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not 0 <= self.blind_fraction < 1:
            raise ValueError(f"blind_fraction must be in [0, 1), got {self.blind_fraction}")

    def fit_filtered(self, data: DefenseInput):
        """(model, kept mask (n,)): the final model and the set it was trained on."""
        n = len(data.y)
        if data.budget is not None and not 0 <= data.budget < n:
            raise ValueError(f"budget must be in [0, {n}) for {n} training points, got {data.budget}")
        kept = np.ones(n, dtype=bool)
        model = data.fit_recipe()
        removed = 0
        for _ in range(self.rounds):
            if data.budget is None:
                p = math.floor(self.blind_fraction * kept.sum() + 0.5)
            else:
                p = min(math.ceil(data.budget / self.rounds), data.budget - removed)
            p = min(p, int(kept.sum()) - 1)
            if p <= 0:  # later rounds would remove nothing either
                break
            rows = np.flatnonzero(kept)
            scores = sever_scores(model, data.X[rows], data.y[rows])
            kept[rows[np.argsort(-scores, kind="stable")[:p]]] = False
            removed += p
            model = data.fit_recipe(kept.astype(np.float64))
        return model, kept

    def fit(self, data: DefenseInput) -> Filtered:
        return Filtered(*self.fit_filtered(data))
