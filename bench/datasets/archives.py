"""Reading official layouts from a folder or a ``.tar.gz`` of it, and caching what was decoded.

The real data copies are read-only and decoding tens of thousands of small JPEGs or text files
takes a while, so the decoded arrays go into the user cache, keyed by the source's identity (path,
size and modification time) and the decoding parameters; a changed source is decoded again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from bench.datasets import DataError, user_cache_dir


def members(source: Path, suffix: str) -> Iterator[tuple[str, bytes]]:
    """``(relative path with '/', content)`` of every file ending in ``suffix`` under ``source``,
    a folder or a ``.tar.gz``/``.tgz``/``.tar`` archive, in sorted path order for folders and
    archive order for archives."""
    if source.is_dir():
        for path in sorted(source.rglob(f"*{suffix}")):
            if path.is_file():
                yield path.relative_to(source).as_posix(), path.read_bytes()
        return
    yield from _archive_files(source, suffix, read=True)


def member_names(source: Path, suffix: str) -> list[str]:
    """The relative paths :func:`members` would yield, without keeping the contents."""
    if source.is_dir():
        return [p.relative_to(source).as_posix() for p in sorted(source.rglob(f"*{suffix}"))
                if p.is_file()]
    return [name for name, _ in _archive_files(source, suffix, read=False)]


def _archive_files(source: Path, suffix: str, read: bool) -> Iterator[tuple[str, bytes | None]]:
    """``(name, content or None)`` of the archive's files ending in ``suffix``; any damage
    becomes a :class:`DataError`.

    tarfile stops at the end-of-archive blocks, before the gzip trailer, so bytes changed inside
    a compressed archive would go unnoticed: the rest of the stream is read at the end, which
    makes gzip check its CRC and length."""
    try:
        with tarfile.open(source, "r:*") as tar:
            for info in tar:
                if info.isfile() and info.name.endswith(suffix):
                    yield info.name.removeprefix("./"), tar.extractfile(info).read() if read else None
            while tar.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"could not read {source} as a tar archive: {err}") from err


def decode_image(content: bytes, size: int, name: str) -> np.ndarray:
    """One image file as RGB uint8 (size, size, 3); other resolutions are resized (bilinear, with
    antialiasing when shrinking)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{name}: not a readable image ({err})") from err


def images_to_X(images: np.ndarray) -> np.ndarray:
    """uint8 images (n, H, W, 3) -> model inputs (n, 3*H*W) float32 in [0, 1], channel-major
    (each row is a flattened (3, H, W) tensor)."""
    return (images.transpose(0, 3, 1, 2).reshape(len(images), -1) / np.float32(255)).astype(np.float32)


def source_key(source: Path, **params) -> str:
    """A short hash of the source's identity and the decoding parameters."""
    stat = source.stat()
    text = json.dumps({"path": str(source.resolve()), "size": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns, **params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(name: str, key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``build()``'s arrays, stored once as ``<user cache>/decoded/<name>-<key>.npz``."""
    path = user_cache_dir() / "decoded" / f"{name}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return arrays
