"""Last-layer recipes: a linear softmax head trained on a frozen encoder's cached features.

The head is the batched ``logreg`` trainer of :mod:`bench.models.mlp`, so K trials' heads train
together over the shared pool. Features come from :func:`bench.representations.cache_for`: the
encoder runs once per input row, ever. Hyper-parameters default to the paper's VGG-16 LL head
(Dense, L2 0.01, Adam 1e-3, 12 epochs, batch 32, PROTOCOL.md section 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.models import MODELS, TrainJob
from bench.models.encoders import MiniLM, PretrainedConv
from bench.models.mlp import MLP, MLPModel
from bench.models.pretrain import Backbone
from bench.representations import Encoder, cache_for


@dataclass(frozen=True)
class LinearProbe:
    """``encoder`` (frozen, hashable) + a softmax head trained for exactly ``epochs`` epochs of
    Adam (``lr``, minibatches of ``batch_size``) with the Keras-style penalty ``l2 * ||W||^2``
    added to each minibatch's mean loss."""

    encoder: Encoder
    lr: float = 1e-3
    epochs: int = 12
    batch_size: int = 32
    l2: float = 0.01
    chunk_size: int = 256

    def __post_init__(self):
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        self.head  # validates the other hyper-parameters

    @property
    def head(self) -> MLP:
        # MLP's penalty is alpha / (2 * batch) * ||W||^2 per minibatch, hence alpha = 2 * l2 * batch;
        # n_iter_no_change = epochs disables early stopping, as in the paper's fixed-epoch Keras fit.
        return MLP(hidden=(), lr=self.lr, batch_size=self.batch_size, alpha=2 * self.l2 * self.batch_size,
                   max_epochs=self.epochs, n_iter_no_change=self.epochs, chunk_size=self.chunk_size)

    @property
    def alpha(self) -> float:
        """The head's L2 coefficient in the MLP convention (what gradient attacks use)."""
        return self.head.alpha

    def features(self, X) -> np.ndarray:
        """The encoder's features (n, encoder.dim) float32, from the representation cache."""
        return cache_for(self.encoder).features(X)

    def fit(self, X, y, n_classes: int, sample_weight=None, seed: int = 0) -> "ProbeModel":
        weights = np.ones(len(y)) if sample_weight is None else sample_weight
        return self.fit_many(X, y, n_classes, [TrainJob(weights, seed)])[0]

    def fit_many(self, X, y, n_classes: int, jobs: list[TrainJob]) -> list["ProbeModel"]:
        """One head per job over the pool X (n, d) (encoder inputs), y (n,)."""
        heads = self.head.fit_many(self.features(X), y, n_classes, jobs)
        return [ProbeModel(self, h) for h in heads]


@dataclass(frozen=True, eq=False)
class ProbeModel:
    """A trained head on the frozen encoder; ``embed`` is the encoder's features."""

    probe: LinearProbe
    head: MLPModel

    @property
    def n_classes(self) -> int:
        return self.head.n_classes

    def embed(self, X) -> np.ndarray:
        """Encoder features (n, encoder.dim)."""
        return self.probe.features(X)

    def decision_function(self, X) -> np.ndarray:
        return self.head.decision_function(self.embed(X))

    def predict_proba(self, X) -> np.ndarray:
        return self.head.predict_proba(self.embed(X))

    def predict(self, X) -> np.ndarray:
        return self.head.predict(self.embed(X))


@MODELS.register("minilm-ll")
def minilm_ll(max_tokens: int = 128, **head) -> LinearProbe:
    """Offline IMDB recipe: frozen all-MiniLM-L6-v2 embeddings (384-d) + linear softmax head."""
    return LinearProbe(MiniLM(max_tokens=max_tokens), **head)


@MODELS.register("cifar10-conv-ll")
def cifar10_conv_ll(backbone_width: int = 8, backbone_images: int = 50000, backbone_epochs: int = 5,
                    backbone_seed: int = 0, **head) -> LinearProbe:
    """Offline image recipe: the benchmark's ``conv`` pretrained on CIFAR-10 (frozen, cached on
    disk, :mod:`bench.models.pretrain`) + linear softmax head."""
    backbone = Backbone(backbone_width, backbone_images, backbone_epochs, backbone_seed)
    return LinearProbe(PretrainedConv(backbone), **head)
