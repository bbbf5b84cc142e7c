"""The paper's CIFAR-10 network ``conv`` (PROTOCOL.md section 2) and its training loop.

Conv(w), then three scales s = 0, 1, 2 of [Conv(w 2^s), Conv(2w 2^s), AvgPool 2], 3x3 convolutions
with LeakyReLU 0.1, then a 1x1 Conv(n_classes) and the global mean (w = 32 in the paper). The 1x1
classifier commutes with the global mean, so the last hidden representation (``embed``) is the
global mean of the third scale, 8w wide, and the logits are a linear map of it.

Inputs are the image datasets' rows: X (n, 3*S*S) float32 in [0, 1], channel-major; each batch is
resized to ``input_size`` when S differs and normalised with CIFAR-10's channel statistics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.models import MODELS, TrainJob, check_weights

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
LAYERS = ("pool1", "pool2", "pool3")  # the outputs of the three scales, (n, C, H, W) flattened


def as_images(X: np.ndarray | torch.Tensor, size: int, mean=MEAN, std=STD) -> torch.Tensor:
    """Rows (n, 3*S*S) -> images (n, 3, size, size) float32 (bilinear, antialiased), normalised
    with the channel statistics ``mean`` and ``std`` (CIFAR-10's by default). Differentiable in a
    tensor ``X`` (the optimisation attacks move pixels through it)."""
    X = X.float() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X, dtype=np.float32))
    side = math.isqrt(X.shape[1] // 3)
    if 3 * side * side != X.shape[1]:
        raise ValueError(f"image rows must have 3*S*S values, got {X.shape[1]}")
    images = X.reshape(-1, 3, side, side)
    if side != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)
    mean, std = (torch.tensor(v, device=images.device).view(1, 3, 1, 1) for v in (mean, std))
    return (images - mean) / std


class ConvNet(nn.Module):
    """The network; ``forward`` gives logits, ``stages`` the three scales' outputs."""

    def __init__(self, width: int = 32, n_classes: int = 10):
        super().__init__()

        def conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1))

        self.stem = conv(3, width)
        self.scales = nn.ModuleList()
        cin = width
        for s in range(3):
            self.scales.append(nn.Sequential(conv(cin, width * 2 ** s), conv(width * 2 ** s, 2 * width * 2 ** s),
                                             nn.AvgPool2d(2)))
            cin = 2 * width * 2 ** s
        self.dim = cin
        self.classifier = nn.Conv2d(cin, n_classes, 1)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, h = [], self.stem(x)
        for scale in self.scales:
            h = scale(h)
            outs.append(h)
        return outs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1].mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stages(x)[-1]).mean((2, 3))


def augment(images: torch.Tensor, generator: torch.Generator, shift: float = 0.125) -> torch.Tensor:
    """Random translation by up to ``shift`` of the side (reflect padding) and horizontal flips.
    The draws come from the CPU ``generator`` whatever the images' device, so a seed gives the
    same augmentation on every device."""
    n, _, side, _ = images.shape
    dev = images.device
    pad = max(int(round(shift * side)), 0)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect") if pad else images
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    steps = torch.arange(side, device=dev)[None, :]
    rows = (dy[:, None] + steps)[:, None, :, None].expand(n, 3, side, side + 2 * pad)
    shifted = padded.gather(2, rows)
    cols = (dx[:, None] + steps)[:, None, None, :].expand(n, 3, side, side)
    shifted = shifted.gather(3, cols)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], shifted.flip(3), shifted)


def train_network(net: nn.Module, X: np.ndarray, y: np.ndarray, weights: np.ndarray, seed: int,
                  epochs: int, batch_size: int, optimizer: torch.optim.Optimizer,
                  inputs: Callable[[np.ndarray], torch.Tensor], device: str = "cpu",
                  resident: bool = False, progress: str | None = None) -> nn.Module:
    """Minibatch training of ``net`` on the weighted cross-entropy of rows X (n, d), labels y (n,);
    ``weights`` (n,) as in :class:`bench.models.TrainJob` (integer parts are copies, fractions
    scale the loss). ``inputs(rows)`` turns a batch of rows into the network's input (resizing,
    normalisation, augmentation). The parameters ``optimizer`` holds are trained. ``resident``
    copies X to ``device`` once and gives ``inputs`` tensor rows already there (image inputs
    take them), so that a GPU does not wait for each batch to be prepared on the CPU. ``progress``,
    when given, is the description of a progress bar over the images seen (minutes-long trainings
    such as pretraining a backbone)."""
    from tqdm import tqdm

    w = check_weights(weights, len(y))
    support = np.flatnonzero(w)
    copies = np.ceil(w[support]).astype(np.int64)
    rows = np.repeat(support, copies)
    visit = torch.tensor(np.repeat(w[support] / copies, copies), dtype=torch.float32)
    rng = np.random.default_rng(seed)
    net.to(device).train()
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    source = torch.from_numpy(np.asarray(X, np.float32)).to(device) if resident else X
    bar = tqdm(total=epochs * len(rows), desc=progress, unit="img", disable=progress is None,
               dynamic_ncols=True)
    for _ in range(epochs):
        order = rng.permutation(len(rows))
        for start in range(0, len(order), batch_size):
            pick = order[start:start + batch_size]
            batch = source[torch.from_numpy(rows[pick]).to(device)] if resident else X[rows[pick]]
            loss = F.cross_entropy(net(inputs(batch).to(device)), labels[rows[pick]].to(device),
                                   reduction="none")
            optimizer.zero_grad()
            (loss * visit[pick].to(device)).sum().div(len(pick)).backward()
            optimizer.step()
            bar.update(len(pick))
    bar.close()
    return net.eval()


def image_inputs(size: int, augmented: bool, seed: int, mean=MEAN, std=STD) -> Callable[[np.ndarray], torch.Tensor]:
    """Batch preparation for image networks: resize, normalise, then (``augmented``) shift + flip."""
    gen = torch.Generator().manual_seed(seed)

    def prepare(rows: np.ndarray) -> torch.Tensor:
        images = as_images(rows, size, mean, std)
        return augment(images, gen) if augmented else images

    return prepare


def forward_batched(fn, X: np.ndarray, input_size: int, batch_size: int = 256, device: str = "cpu",
                    mean=MEAN, std=STD) -> np.ndarray:
    """``fn(images)`` over batches of rows X, concatenated as float32 numpy."""
    outs = []
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            images = as_images(X[start:start + batch_size], input_size, mean, std)
            outs.append(fn(images.to(device)).float().cpu().numpy())
    return np.concatenate(outs)


@MODELS.register("conv")
@dataclass(frozen=True)
class Conv:
    """The paper's CIFAR-10 recipe: the whole network trained with Adam (``lr``) for ``epochs``
    epochs of ``batch_size``, shift 0.125 + horizontal-flip augmentation. Jobs train one after
    the other (a convolutional network is compute-bound, so stacking K of them gains little)."""

    width: int = 32
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    augmented: bool = True
    input_size: int = 32
    device: str = "cpu"

    def __post_init__(self):
        for name in ("width", "epochs", "batch_size", "input_size"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"conv {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"conv lr must be > 0, got {self.lr}")

    def fit(self, X, y, n_classes: int, sample_weight=None, seed: int = 0) -> "ConvModel":
        weights = np.ones(len(y)) if sample_weight is None else sample_weight
        return self.fit_many(X, y, n_classes, [TrainJob(weights, seed)])[0]

    def fit_many(self, X, y, n_classes: int, jobs: list[TrainJob]) -> list["ConvModel"]:
        """One network per job over the pool X (n, 3*S*S), y (n,)."""
        X = np.asarray(X, dtype=np.float32)
        out = []
        for job in jobs:
            if job.private is not None:
                raise ValueError("the conv recipe does not implement DP-SGD")
            torch.manual_seed(job.seed)
            net = ConvNet(self.width, n_classes)
            labels = y if job.labels is None else job.labels
            train_network(net, X, labels, job.weights, job.seed, self.epochs, self.batch_size,
                          torch.optim.Adam(net.parameters(), lr=self.lr),
                          image_inputs(self.input_size, self.augmented, job.seed), self.device,
                          resident=True)
            out.append(ConvModel(net.cpu(), n_classes, self.input_size))
        return out


@dataclass(frozen=True, eq=False)
class ConvModel:
    """A trained network. ``layers`` name the scales' outputs for ClusterMatch (PROTOCOL.md
    section 3: the paper's Table 3 compares the input and the layers of this network)."""

    net: ConvNet
    n_classes: int
    input_size: int
    layers: tuple[str, ...] = LAYERS

    def decision_function(self, X) -> np.ndarray:
        """Logits (n, n_classes)."""
        return forward_batched(self.net, np.asarray(X, np.float32), self.input_size)

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X).astype(np.float64)
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X).argmax(1)

    def embed(self, X) -> np.ndarray:
        """Global mean of the last scale (n, 8 * width)."""
        return forward_batched(self.net.embed, np.asarray(X, np.float32), self.input_size)

    def layer_output(self, X, layer: str) -> np.ndarray:
        """Output of scale ``pool1``/``pool2``/``pool3``, flattened (n, C * H * W)."""
        stage = self.layers.index(layer)
        return forward_batched(lambda x: self.net.stages(x)[stage].flatten(1),
                               np.asarray(X, np.float32), self.input_size)
