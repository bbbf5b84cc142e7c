"""Victim model recipes.

A recipe is a frozen dataclass of hyper-parameters with the verbs ``fit`` and ``fit_many``; it
returns fitted models with ``predict_proba``, ``predict`` and ``embed``. A training set is a weight
vector over a shared pool of examples (DESIGN.md), so one call of ``fit_many`` can train many
models that differ only in which pool rows they use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.registry import Registry

MODELS: Registry = Registry("model")


@dataclass(frozen=True)
class PrivateTraining:
    """Differentially private training (DP-SGD, Abadi et al. 2016): each example's gradient is
    clipped to L2 norm ``clip_norm``, Gaussian noise of standard deviation ``noise_multiplier`` x
    ``clip_norm`` is added to each minibatch's sum of clipped gradients, and training runs exactly
    ``epochs`` epochs (no early stopping: stopping on the training loss would leak privacy)."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    epochs: int = 20

    def __post_init__(self):
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        if not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if isinstance(self.epochs, bool) or int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")


@dataclass(frozen=True, eq=False)
class TrainJob:
    """One model to train on a pool of n examples.

    ``weights`` (n,) float >= 0: integer values are multiplicities (2 = the row appears twice),
    fractional values scale the row's loss; 0 leaves the row out. ``labels`` (n,) int overrides
    the pool labels for this job (relabelling defenses). ``seed`` fixes initialisation and
    shuffling, so a job trains to the same model alone or batched with others. ``private``, when
    given, trains the job with DP-SGD (recipes that cannot say so raise ``ValueError``).
    """

    weights: np.ndarray
    seed: int
    labels: np.ndarray | None = None
    private: PrivateTraining | None = None


def check_weights(weights, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    if not (w > 0).any():
        raise ValueError("weights select no training example (all zero)")
    return w


def make(name: str, **params):
    """Instantiate recipe ``name`` with hyper-parameters ``params``."""
    return MODELS.get(name)(**params)


from bench.models import conv, heads, mlp, pretrained  # noqa: E402,F401  (register built-ins)
