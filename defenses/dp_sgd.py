"""Differentially private training as a poisoning defense: DP-SGD (Abadi et al., "Deep Learning
with Differential Privacy", CCS 2016). A model that is (epsilon, delta)-DP for single examples is
(k epsilon, ...)-DP for groups of k, which bounds what k poisons can do; with the hundreds of
poisons of a subpopulation attack the bound is loose, and this defense measures what is left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.models import PrivateTraining, TrainJob
from defenses import DEFENSES, Defense, DefenseInput


def epsilon(noise_multiplier: float, n: int, batch_size: int, epochs: int, delta: float) -> float:
    """The epsilon of ``epochs`` epochs of DP-SGD over n examples in minibatches of
    ``batch_size``, by Opacus's RDP accountant of the sampled Gaussian mechanism (sampling rate
    batch_size / n, ceil(n / batch_size) steps an epoch).

    The accountant assumes Poisson sampling; like most DP-SGD code we shuffle and cut fixed-size
    batches, for which this is the customary estimate rather than a proof."""
    from opacus.accountants import RDPAccountant

    batch = min(batch_size, n)
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, batch / n, epochs * math.ceil(n / batch))]
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True, eq=False)
class PrivateModel:
    """A model trained with DP-SGD; ``report`` ({"epsilon", "delta"}) is stored with each trial."""

    model: object
    report: dict

    def predict(self, X) -> np.ndarray:
        return self.model.predict(X)

    def predict_proba(self, X) -> np.ndarray:
        return self.model.predict_proba(X)

    def embed(self, X) -> np.ndarray:
        return self.model.embed(X)


@DEFENSES.register("dp-sgd")
@dataclass(frozen=True)
class DPSGD(Defense):
    """Train the victim recipe with DP-SGD: per-example gradients clipped to ``clip_norm``,
    Gaussian noise of ``noise_multiplier`` x ``clip_norm`` per minibatch, exactly ``epochs``
    epochs (the recipe's optimiser, minibatch size and learning rate otherwise). Reports the
    resulting epsilon at ``delta``. The same on both tracks (the budget is ignored)."""

    name = "dp-sgd"
    version = "1"
    uses_budget = False
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    epochs: int = 20
    delta: float = 1e-5

    def __post_init__(self):
        PrivateTraining(self.clip_norm, self.noise_multiplier, self.epochs)  # validates them
        if not self.noise_multiplier > 0:
            raise ValueError("noise_multiplier must be > 0 (without noise there is no privacy)")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")

    def fit(self, data: DefenseInput) -> PrivateModel:
        batch_size = getattr(data.recipe, "batch_size", None)
        if batch_size is None:
            raise ValueError(f"dp-sgd needs a minibatch recipe; {type(data.recipe).__name__} has no batch_size")
        n = len(data.y)
        private = PrivateTraining(self.clip_norm, self.noise_multiplier, self.epochs)
        model = data.fit_many([TrainJob(np.ones(n), data.seed, private=private)])[0]
        eps = epsilon(self.noise_multiplier, n, batch_size, self.epochs, self.delta)
        return PrivateModel(model, {"epsilon": eps, "delta": self.delta})
