"""Checksums and downloads of official data files."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from bench.datasets import DataError


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    got = md5sum(path)
    if got != expected:
        raise DataError(
            f"{path} has md5 {got}, expected {expected} (the official file). The file is corrupt, "
            f"truncated or a different version: replace it with the official one."
        )


def download(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary file, checksum, rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                out.write(block)
        if md5 is not None:
            verify_md5(Path(tmp), md5)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"could not download {url} to {dest}: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest
