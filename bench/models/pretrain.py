"""The benchmark's own image backbone: the ``conv`` network pretrained on CIFAR-10, for machines
that cannot download ImageNet weights (PROTOCOL.md section 2, offline variants).

Pretraining is short on a CPU (a narrow network on a class-stratified subset of the CIFAR-10
training images) and runs once: the weights go to ``<user cache>/backbones/<name>/weights.pt``
beside ``meta.json``, which records the command that made them, the settings, the wall time and
the accuracy on the CIFAR-10 test images, and the mean and standard deviation of each feature
over the pretraining images (the encoder standardises with them: a fixed affine map, part of the
frozen encoder, so the head sees unit-scale features whatever dataset it serves). CIFAR-10 is
disjoint from UTKFace, the dataset the backbone then serves. Run it ahead of time with::

    subpop-bench data backbone --width 8 --images 50000 --epochs 5 --seed 0
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.datasets import DataError, three_way_split, user_cache_dir
from bench.datasets.archives import images_to_X
from bench.models.conv import ConvNet, forward_batched, image_inputs, train_network

INPUT_SIZE = 32


@dataclass(frozen=True)
class Backbone:
    """Pretraining settings: network ``width`` (the paper's is 32), ``images`` CIFAR-10 training
    images (stratified), ``epochs`` of Adam (``lr``, batches of ``batch_size``, shift + flip
    augmentation), ``seed``."""

    width: int = 8
    images: int = 50000
    epochs: int = 5
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self):
        if self.width < 1 or not 10 <= self.images <= 50000 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"backbone needs width >= 1, 10 <= images <= 50000, epochs >= 1 and "
                             f"batch_size >= 1; got {self}")

    @property
    def name(self) -> str:
        return f"cifar10-conv-w{self.width}-n{self.images}-e{self.epochs}-s{self.seed}"

    @property
    def folder(self) -> Path:
        return user_cache_dir() / "backbones" / self.name

    @property
    def command(self) -> str:
        return (f"subpop-bench data backbone --width {self.width} --images {self.images} "
                f"--epochs {self.epochs} --seed {self.seed} --lr {self.lr:g} --batch-size {self.batch_size}")


def _pretraining_rows(spec: Backbone, data_root=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The backbone's CIFAR-10 training images as rows (images, 3*32*32), their labels, and the
    whole CIFAR-10 arrays."""
    from bench.datasets import cifar10, resolve_data_root

    arrays = cifar10.read(resolve_data_root(data_root) / "cifar10")
    labels = arrays["train_labels"]
    rows, _, _ = three_way_split(len(labels), (spec.images, 0, 0), spec.seed, stratify=labels)
    return images_to_X(arrays["train_images"][rows]), labels[rows], arrays


def pretrain(spec: Backbone, data_root=None) -> Path:
    """Train the backbone on CIFAR-10 and store it; returns the weights file."""
    X, y, arrays = _pretraining_rows(spec, data_root)
    torch.manual_seed(spec.seed)
    net = ConvNet(spec.width, 10)
    start = time.time()
    train_network(net, X, y, np.ones(len(y)), spec.seed, spec.epochs, spec.batch_size,
                  torch.optim.Adam(net.parameters(), lr=spec.lr),
                  image_inputs(INPUT_SIZE, augmented=True, seed=spec.seed),
                  progress=f"pretraining {spec.name}")
    seconds = time.time() - start
    test = images_to_X(arrays["test_images"])
    accuracy = float((forward_batched(net, test, INPUT_SIZE).argmax(1) == arrays["test_labels"]).mean())
    spec.folder.mkdir(parents=True, exist_ok=True)
    weights = spec.folder / "weights.pt"
    fd, tmp = tempfile.mkstemp(dir=spec.folder, suffix=".pt")
    os.close(fd)
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, weights)
    meta = {"command": spec.command, "settings": asdict(spec), "train_seconds": round(seconds, 1),
            "cifar10_test_accuracy": accuracy, "torch": torch.__version__,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), **feature_stats(net.eval(), X)}
    _write_meta(spec, meta)
    return weights


def feature_stats(net: ConvNet, X: np.ndarray) -> dict:
    """Per-feature mean and standard deviation (float64 lists) of ``net.embed`` over image rows X."""
    F = forward_batched(net.embed, X, INPUT_SIZE).astype(np.float64)
    return {"feature_mean": F.mean(0).tolist(), "feature_std": F.std(0).tolist()}


def _write_meta(spec: Backbone, meta: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=spec.folder, suffix=".json")
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, spec.folder / "meta.json")


@dataclass(frozen=True, eq=False)
class Pretrained:
    """A loaded backbone: the network (eval mode), its weights' sha256 and its feature statistics
    ``mean``, ``std`` (8 * width,) float32 over the pretraining images."""

    net: ConvNet
    sha256: str
    mean: np.ndarray
    std: np.ndarray


def load(spec: Backbone, data_root=None) -> Pretrained:
    """The pretrained backbone; pretrains it first when it is not cached (that needs CIFAR-10
    under the data root). A backbone stored without feature statistics (before they were
    recorded) gets them computed from its pretraining images and added to ``meta.json``."""
    weights = spec.folder / "weights.pt"
    try:
        if not weights.exists():
            pretrain(spec, data_root)
        net = ConvNet(spec.width, 10)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.eval()
        meta = json.loads((spec.folder / "meta.json").read_text())
        if "feature_mean" not in meta:
            meta.update(feature_stats(net, _pretraining_rows(spec, data_root)[0]))
            _write_meta(spec, meta)
    except DataError as err:
        raise DataError(f"backbone {spec.name} is not in {spec.folder} and cannot be pretrained: "
                        f"{err}. Make it where CIFAR-10 is available with `{spec.command}` and "
                        f"copy {spec.folder} here.") from None
    std = np.asarray(meta["feature_std"], np.float32)
    return Pretrained(net, hashlib.sha256(weights.read_bytes()).hexdigest(),
                      np.asarray(meta["feature_mean"], np.float32), np.where(std > 0, std, 1.0))
