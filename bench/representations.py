"""Representation cache: a frozen encoder's features, computed once and reused everywhere.

The last-layer (``-ll``) recipes train only a head on top of a frozen encoder, so the encoder's
output for an input never changes. The cache is content-addressed: each input row (the model
input X of the dataset, e.g. pixels or token ids) is keyed by a hash of its bytes, and its features
are stored on disk under ``<user cache>/representations/<encoder>/``. Every trial, attack, defense
and later run that shows the same rows (D, D_aux, D_t, copies of them as label-flip poisons) gets
the stored features; only rows never seen before (e.g. optimised poisons) go through the encoder.
So features are computed once per (dataset, encoder, preprocessing): the dataset by the rows'
content, the encoder and its preprocessing by the encoder's ``key``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from bench.datasets import user_cache_dir


class Encoder(Protocol):
    """A frozen feature extractor. ``key`` names it, its weights and its preprocessing (two
    encoders with the same key must give the same features); ``dim`` is the feature width;
    ``encode(X)`` maps inputs (n, d) float32 to features (n, dim) float32. Encoders of
    continuous inputs (images) also have ``differentiable(X)``: the same map on a torch tensor,
    differentiable in X, through which the optimisation attacks move their poisons."""

    key: str
    dim: int

    def encode(self, X: np.ndarray) -> np.ndarray: ...


def run_batched(fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray, batch_size: int, dim: int,
                order: np.ndarray | None = None) -> np.ndarray:
    """``fn`` over batches of ``batch_size`` rows of X; returns (n, dim) float32 in X's row order.
    ``order`` visits rows in another order (e.g. texts sorted by length, so each batch pads to
    similar lengths)."""
    order = np.arange(len(X)) if order is None else order
    out = np.empty((len(X), dim), dtype=np.float32)
    for start in range(0, len(X), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = fn(X[rows])
    return out


def row_keys(X: np.ndarray) -> list[bytes]:
    """A 16-byte BLAKE2b digest of each row's float32 bytes."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in X]


class RepresentationCache:
    """The features of one encoder, on disk and in memory.

    ``features(X)`` returns (n, dim) float32; rows not yet stored are encoded with a progress bar,
    ``shard_rows`` at a time, each lot saved at once as a new shard file (an interrupted run keeps
    what it encoded; concurrent processes never write the same file). Arrays passed in are
    treated as immutable: the result for the same array object is remembered without rehashing
    its rows (the runner asks again and again for D_t and the pool); each call returns its own
    copy.
    """

    def __init__(self, encoder: Encoder, root: Path | None = None, shard_rows: int = 1024):
        self.encoder = encoder
        self.shard_rows = shard_rows
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", encoder.key)[:60]
        digest = hashlib.sha256(encoder.key.encode()).hexdigest()[:12]
        self.folder = (root or user_cache_dir() / "representations") / f"{slug}-{digest}"
        self.encoded_rows = 0  # rows this object sent through the encoder
        self._index: dict[bytes, int] | None = None
        self._matrix = np.zeros((0, encoder.dim), np.float32)
        self._recent: dict[int, tuple[weakref.ref, np.ndarray]] = {}
        self._lock = threading.Lock()  # defenses call embed from several threads

    def features(self, X: np.ndarray) -> np.ndarray:
        with self._lock:
            hit = self._recent.get(id(X))
            if hit is not None and hit[0]() is X:
                return hit[1].copy()  # callers may change their copy in place
            keys = row_keys(X)
            self._load()
            missing = list(dict.fromkeys(k for k in keys if k not in self._index))
            if missing:
                self._encode(X, keys, missing)
            out = self._matrix[[self._index[k] for k in keys]]
            if len(self._recent) >= 8:
                self._recent.pop(next(iter(self._recent)))
            self._recent[id(X)] = (weakref.ref(X), out)
            return out.copy()

    def _encode(self, X: np.ndarray, keys: list[bytes], missing: list[bytes]) -> None:
        from tqdm import tqdm

        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        with tqdm(total=len(missing), desc=f"encoding ({self.encoder.key[:40]})", unit="ex",
                  dynamic_ncols=True) as bar:
            for start in range(0, len(missing), self.shard_rows):
                lot = missing[start:start + self.shard_rows]
                rows = np.array([first[k] for k in lot])
                feats = np.asarray(self.encoder.encode(np.asarray(X[rows], np.float32)), np.float32)
                if feats.shape != (len(rows), self.encoder.dim):
                    raise ValueError(f"encoder {self.encoder.key} returned {feats.shape}, expected "
                                     f"({len(rows)}, {self.encoder.dim})")
                self.encoded_rows += len(rows)
                self._save(lot, feats)
                self._add(lot, feats)
                bar.update(len(rows))

    def _load(self) -> None:
        if self._index is not None:
            return
        self._index = {}
        keys, feats = [], []
        for shard in sorted(self.folder.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as f:
                keys += [k.tobytes() for k in f["keys"]]
                feats.append(f["features"])
        if feats:
            self._add(keys, np.concatenate(feats))

    def _add(self, keys: list[bytes], feats: np.ndarray) -> None:
        start = len(self._matrix)
        for i, key in enumerate(keys):
            self._index.setdefault(key, start + i)
        self._matrix = np.concatenate([self._matrix, feats.astype(np.float32)])

    def _save(self, keys: list[bytes], feats: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "encoder.json"
        if not meta.exists():
            meta.write_text(json.dumps({"key": self.encoder.key, "dim": self.encoder.dim}) + "\n")
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".shard-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(out, keys=np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 16),
                         features=feats)
            # A sortable, unique name: shards load in creation order across processes.
            os.replace(tmp, self.folder / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.npz")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


_CACHES: dict[tuple[str, str], RepresentationCache] = {}  # per process, like executors._SCENARIOS


def cache_for(encoder: Encoder) -> RepresentationCache:
    """The process's cache of ``encoder`` under the current user cache dir (one per key, so all
    models of the encoder share its memory)."""
    key = (encoder.key, str(user_cache_dir()))
    if key not in _CACHES:
        _CACHES[key] = RepresentationCache(encoder)
    return _CACHES[key]
