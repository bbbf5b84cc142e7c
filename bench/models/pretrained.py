"""The paper's recipes on downloaded pretrained weights (PROTOCOL.md section 2): ImageNet VGG-16
(``vgg16-ll``, ``vgg16-ft``) and bert-base-uncased (``bert-ll``, ``bert-ft``).

``weights`` is ``"pretrained"`` (the usual caches: torch hub for VGG-16, the Hugging Face cache
for BERT, downloading into them when a network is there), a local path (a VGG-16 state dict
``.pth``, or a folder holding a Hugging Face BERT checkpoint), or ``"random"`` (random
initialisation, for tests). Absent weights without a network raise :class:`WeightsError`, naming
the file and where to put it.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.datasets import imdb
from bench.models import MODELS, TrainJob
from bench.models.conv import as_images, forward_batched, image_inputs, train_network
from bench.models.encoders import truncate_tokens
from bench.models.heads import LinearProbe
from bench.representations import run_batched

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
BERT_NAME = "bert-base-uncased"


class WeightsError(RuntimeError):
    """Pretrained weights that are neither cached nor downloadable."""


def vgg16_state(weights: str) -> tuple[dict | None, str]:
    """(state dict or None for random, fingerprint) of the VGG-16 weights."""
    if weights == "random":
        return None, "random"
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name if weights == "pretrained" \
        else Path(weights).expanduser()
    if not path.exists() and weights == "pretrained":
        try:
            torch.hub.load_state_dict_from_url(VGG16_URL, progress=True)
        except Exception as err:  # URLError, HTTPError, ... when offline
            raise WeightsError(f"ImageNet VGG-16 weights not found at {path} and could not be "
                               f"downloaded from {VGG16_URL} ({err}). Copy that file to {path}, "
                               f"or pass weights=<path to the .pth>.") from None
    if not path.exists():
        raise WeightsError(f"VGG-16 weights file {path} does not exist")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    return torch.load(path, map_location="cpu", weights_only=True), f"{path.name}@{digest}"


class VGG16Net(nn.Module):
    """VGG-16's convolutional part, global average pool (512-d), a linear classifier."""

    def __init__(self, n_classes: int, state: dict | None):
        super().__init__()
        from torchvision.models import vgg16

        base = vgg16(weights=None)
        if state is not None:
            base.load_state_dict(state)
        self.features = base.features
        self.head = nn.Linear(512, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@dataclass(frozen=True)
class VGG16Features:
    """Frozen ImageNet VGG-16 features, global average pool (512-d); images resized to
    ``input_size`` and normalised with ImageNet statistics."""

    weights: str = "pretrained"
    input_size: int = 64
    batch_size: int = 64
    dim: int = 512

    @functools.cached_property
    def _loaded(self) -> tuple[VGG16Net, str]:
        state, fingerprint = vgg16_state(self.weights)
        if state is None:
            torch.manual_seed(0)  # "random" must give the same network to every process
        return VGG16Net(2, state).eval(), fingerprint

    @property
    def key(self) -> str:
        return f"vgg16({self._loaded[1]})/input={self.input_size}/imagenet-norm/gap"

    def encode(self, X: np.ndarray) -> np.ndarray:
        return forward_batched(self._loaded[0].embed, X, self.input_size, self.batch_size,
                               mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def differentiable(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` of image rows (n, 3*S*S) as torch operations, differentiable in X."""
        return self._loaded[0].embed(as_images(X, self.input_size, IMAGENET_MEAN, IMAGENET_STD))


def bert_backbone(weights: str):
    """A BertModel: pretrained from the Hugging Face cache (downloading when possible), a local
    checkpoint folder, or a small random one (``"random"``, 2 blocks of width 64, for tests)."""
    from transformers import BertConfig, BertModel

    if weights == "random":
        torch.manual_seed(0)
        return BertModel(BertConfig(vocab_size=imdb.VOCAB_SIZE, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=128))
    source = BERT_NAME if weights == "pretrained" else str(Path(weights).expanduser())
    try:
        return BertModel.from_pretrained(source)
    except OSError as err:
        raise WeightsError(f"{source} weights not found locally and not downloadable ({err}). On a "
                           f"machine with a network run `python -c \"from transformers import "
                           f"BertModel; BertModel.from_pretrained('{BERT_NAME}')\"` and copy the "
                           f"Hugging Face cache (~/.cache/huggingface/hub/models--{BERT_NAME}) here, "
                           f"or pass weights=<checkpoint folder>.") from None


class BertNet(nn.Module):
    """BERT, the pooled ``[CLS]`` representation (``embed``), a linear classifier. Inputs: token
    ids (n, L) int64, 0 = padding."""

    def __init__(self, n_classes: int, weights: str):
        super().__init__()
        self.bert = bert_backbone(weights)
        self.head = nn.Linear(self.bert.config.hidden_size, n_classes)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=(ids != imdb.PAD_ID).long()).pooler_output

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))

    def last_layer_parameters(self):
        """The last encoder block, the pooler and the classifier: what ``bert-ll`` trains."""
        return [*self.bert.encoder.layer[-1].parameters(), *self.bert.pooler.parameters(),
                *self.head.parameters()]


@dataclass(frozen=True)
class FineTune:
    """A pretrained network trained on the task: ``arch`` ``"vgg16"`` (images) or ``"bert"``
    (IMDB token ids); ``trainable`` ``"all"`` or ``"last"`` (BERT: last block + classifier).
    Adam (AdamW for BERT) with ``lr`` for ``epochs`` epochs of ``batch_size``; jobs train one
    after the other."""

    arch: str
    weights: str = "pretrained"
    trainable: str = "all"
    lr: float = 1e-3
    epochs: int = 12
    batch_size: int = 32
    input_size: int = 64  # vgg16: image side
    max_tokens: int = 256  # bert: tokens read
    device: str = "cpu"

    def __post_init__(self):
        if self.arch not in ("vgg16", "bert"):
            raise ValueError(f"arch must be 'vgg16' or 'bert', got {self.arch!r}")
        if self.trainable not in ("all", "last") or (self.arch == "vgg16" and self.trainable == "last"):
            raise ValueError(f"trainable must be 'all' (or 'last' for bert), got {self.trainable!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")

    def build(self, n_classes: int) -> nn.Module:
        if self.arch == "vgg16":
            return VGG16Net(n_classes, vgg16_state(self.weights)[0])
        return BertNet(n_classes, self.weights)

    def inputs(self, seed: int):
        if self.arch == "vgg16":
            return image_inputs(self.input_size, False, seed, IMAGENET_MEAN, IMAGENET_STD)
        return lambda rows: torch.from_numpy(truncate_tokens(rows, self.max_tokens))

    def fit(self, X, y, n_classes: int, sample_weight=None, seed: int = 0) -> "FineTuned":
        weights = np.ones(len(y)) if sample_weight is None else sample_weight
        return self.fit_many(X, y, n_classes, [TrainJob(weights, seed)])[0]

    def fit_many(self, X, y, n_classes: int, jobs: list[TrainJob]) -> list["FineTuned"]:
        X = np.asarray(X, dtype=np.float32)
        out = []
        for job in jobs:
            if job.private is not None:
                raise ValueError(f"{self.arch} fine-tuning does not implement DP-SGD")
            torch.manual_seed(job.seed)
            net = self.build(n_classes)
            params = net.last_layer_parameters() if self.trainable == "last" else list(net.parameters())
            optimizer = (torch.optim.AdamW if self.arch == "bert" else torch.optim.Adam)(params, lr=self.lr)
            labels = y if job.labels is None else job.labels
            train_network(net, X, labels, job.weights, job.seed, self.epochs, self.batch_size, optimizer,
                          self.inputs(job.seed), self.device)
            out.append(FineTuned(self, net.cpu()))
        return out


@dataclass(frozen=True, eq=False)
class FineTuned:
    """A fine-tuned network; ``embed`` is its last hidden representation (VGG-16: 512-d global
    average pool; BERT: the pooled ``[CLS]`` state, 768-d for bert-base)."""

    recipe: FineTune
    net: nn.Module

    def _run(self, fn, X, dim: int) -> np.ndarray:
        prepare = self.recipe.inputs(0)

        def batch(rows: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return fn(prepare(rows)).float().numpy()

        return run_batched(batch, np.asarray(X, np.float32), 64, dim)

    def decision_function(self, X) -> np.ndarray:
        return self._run(self.net, X, self.net.head.out_features)

    def embed(self, X) -> np.ndarray:
        return self._run(self.net.embed, X, self.net.head.in_features)

    def predict_proba(self, X) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.decision_function(X)).double(), 1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(1)


@MODELS.register("vgg16-ll")
def vgg16_ll(weights: str = "pretrained", input_size: int = 64, **head) -> LinearProbe:
    """UTKFace: frozen ImageNet VGG-16 (global average pool, 512-d) + linear head (L2 0.01)."""
    return LinearProbe(VGG16Features(weights, input_size), **head)


@MODELS.register("vgg16-ft")
def vgg16_ft(lr: float = 1e-4, **params) -> FineTune:
    """VGG-16 from ImageNet, all layers trained (Adam; 1e-3 for CIFAR-10, 1e-4 for UTKFace)."""
    return FineTune("vgg16", lr=lr, **params)


@MODELS.register("bert-ll")
def bert_ll(**params) -> FineTune:
    """bert-base-uncased, last block + classifier trained: AdamW 1e-5, 4 epochs, batch 8, 256 tokens."""
    return FineTune("bert", **{"trainable": "last", "lr": 1e-5, "epochs": 4, "batch_size": 8, **params})


@MODELS.register("bert-ft")
def bert_ft(**params) -> FineTune:
    """bert-base-uncased, all blocks trained: AdamW 1e-5, 4 epochs, batch 8, 256 tokens."""
    return FineTune("bert", **{"trainable": "all", "lr": 1e-5, "epochs": 4, "batch_size": 8, **params})
