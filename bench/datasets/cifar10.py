"""CIFAR-10 (PROTOCOL.md section 1): D and D_aux 25,000 each from the 50,000 training images
(stratified by class), D_t the 10,000 test images.

Two layouts are read from ``<data root>/cifar10``: the official python batches
(``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``, read with torchvision) and the JPEG tree
``{train,test}/<class>/NNNN.jpg`` (a folder or any ``*.tar.gz`` of it). Both are put in one
canonical order, by class and then by position within the class in the original batches, so a seed
selects the same images from either layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.datasets import (DATASETS, DataError, FeatureDomain, Part, Splits, resolve_data_root,
                            three_way_split, user_cache_dir)
from bench.datasets.archives import (cached, decode_image, images_to_X, member_names, members,
                                     source_key)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZE = 32
COUNTS = {"train": 50000, "test": 10000}
PART_SIZE = 25000
OFFICIAL_DIR = "cifar-10-batches-py"
OFFICIAL_TGZ = "cifar-10-python.tar.gz"


def fetch(dest: Path | None = None) -> Path:
    """Download the official python batches into ``dest`` (default: the user cache) with
    torchvision, which verifies their md5."""
    from torchvision.datasets import CIFAR10

    dest = dest or user_cache_dir() / "data" / "cifar10"
    try:
        for train in (True, False):
            CIFAR10(str(dest), train=train, download=True)
    except Exception as err:  # torchvision raises URLError, RuntimeError, ... when offline
        raise DataError(f"could not download CIFAR-10 into {dest}: {err}. Without a network, copy "
                        f"{OFFICIAL_TGZ} (or the JPEG tree) into a cifar10/ folder under "
                        f"--data-root / SUBPOP_DATA_ROOT.") from None
    return dest


def _official(source: Path) -> dict[str, np.ndarray]:
    """The python batches (the ``cifar-10-batches-py`` folder or the official archive, then
    extracted into the cache) through torchvision."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import extract_archive

    root = source.parent
    if not source.is_dir():
        # The data root may be read-only: extract the official archive into the cache.
        root = user_cache_dir() / "extracted" / f"cifar10-{source_key(source)}"
        if not (root / OFFICIAL_DIR).is_dir():
            extract_archive(str(source), str(root))
    out = {}
    for split in COUNTS:
        try:
            data = CIFAR10(str(root), train=split == "train", download=False)
        except RuntimeError as err:
            raise DataError(f"{root / OFFICIAL_DIR}: {err}") from None
        labels = np.asarray(data.targets, dtype=np.int64)
        # Canonical order: by class, then original position (a stable sort keeps the latter).
        order = np.argsort(labels, kind="stable")
        out[f"{split}_images"], out[f"{split}_labels"] = data.data[order], labels[order]
    return out


def _jpeg_tree(source: Path) -> dict[str, np.ndarray]:
    """Decode ``{train,test}/<class>/NNNN.jpg`` from a folder or archive into canonical order."""
    found: dict[str, list[tuple[int, int, np.ndarray]]] = {split: [] for split in COUNTS}
    for name, content in members(source, ".jpg"):
        parts = name.split("/")
        if len(parts) < 3 or parts[-3] not in COUNTS or parts[-2] not in CLASSES:
            raise DataError(f"{source}: unexpected member {name!r}; expected "
                            f"{{train,test}}/<class>/NNNN.jpg with class one of {CLASSES}")
        try:
            index = int(parts[-1][:-4])
        except ValueError:
            raise DataError(f"{source}: {name!r} is not named NNNN.jpg") from None
        found[parts[-3]].append((CLASSES.index(parts[-2]), index, decode_image(content, SIZE, name)))
    out = {}
    for split, rows in found.items():
        rows.sort(key=lambda r: r[:2])
        out[f"{split}_images"] = np.stack([r[2] for r in rows]) if rows else np.zeros((0, SIZE, SIZE, 3), np.uint8)
        out[f"{split}_labels"] = np.array([r[0] for r in rows], dtype=np.int64)
    return out


def locate(folder: Path) -> tuple[str, Path]:
    """``("official", batches folder or archive)`` or ``("jpeg", tree or archive)``; a clear
    error when neither is there."""
    for official in (folder / OFFICIAL_DIR, folder / OFFICIAL_TGZ):
        if official.exists():
            return "official", official
    if (folder / "train").is_dir():
        return "jpeg", folder
    archives = sorted(p for p in folder.glob("*.tar.gz") if p.name != OFFICIAL_TGZ) if folder.is_dir() else []
    if archives:
        return "jpeg", archives[0]
    raise DataError(
        f"CIFAR-10 not found in {folder}: expected the official {OFFICIAL_DIR}/ or {OFFICIAL_TGZ}, "
        f"or the JPEG tree train/<class>/*.jpg (a folder or a .tar.gz of it). Point --data-root / "
        f"SUBPOP_DATA_ROOT at a folder holding cifar10/, or run `subpop-bench data fetch cifar10` "
        f"on a machine with a network.")


def read(folder: Path) -> dict[str, np.ndarray]:
    """``{train,test}_images`` (n, 32, 32, 3) uint8 and ``{train,test}_labels`` (n,) int64 in
    canonical order, decoded once and cached; counts are checked."""
    kind, source = locate(folder)
    build = (lambda: _official(source)) if kind == "official" else (lambda: _jpeg_tree(source))
    arrays = cached("cifar10", source_key(source, kind=kind, size=SIZE, version=1), build)
    for split, count in COUNTS.items():
        labels = arrays[f"{split}_labels"]
        if len(labels) != count or (np.bincount(labels, minlength=10) != count // 10).any():
            raise DataError(f"{source}: expected {count} {split} images, {count // 10} per class; "
                            f"got {len(labels)} ({np.bincount(labels, minlength=10).tolist()})")
    return arrays


def count_jpeg_members(source: Path) -> dict[str, int]:
    """Number of ``.jpg`` members per split, without decoding (for quick checks)."""
    counts = {split: 0 for split in COUNTS}
    for name in member_names(source, ".jpg"):
        split = name.split("/")[-3] if name.count("/") >= 2 else None
        if split in counts:
            counts[split] += 1
    return counts


def _splits(name: str, seed: int, data_root, part_size: int, test_size: int) -> Splits:
    """D and D_aux of ``part_size`` from the training images, D_t ``test_size`` test images, all
    stratified by class."""
    arrays = read(resolve_data_root(data_root) / "cifar10")
    y_pool = arrays["train_labels"]
    tr, au, _ = three_way_split(len(y_pool), (part_size, part_size, 0), seed, stratify=y_pool)
    y_test = arrays["test_labels"]
    te = np.arange(len(y_test)) if test_size == len(y_test) else \
        three_way_split(len(y_test), (test_size, 0, 0), seed, stratify=y_test)[0]
    images = arrays["train_images"]
    d = 3 * SIZE * SIZE
    return Splits(
        dataset=name,
        train=Part(images_to_X(images[tr]), y_pool[tr]),
        aux=Part(images_to_X(images[au]), y_pool[au]),
        test=Part(images_to_X(arrays["test_images"][te]), y_test[te]),
        n_classes=10,
        domain=FeatureDomain(np.zeros(d, np.float32), np.ones(d, np.float32)),
    )


@DATASETS.register("cifar10")
def load_cifar10(seed: int = 0, data_root=None) -> Splits:
    """CIFAR-10, 10 classes; X (n, 3*32*32) float32 in [0, 1], channel-major."""
    return _splits("cifar10", seed, data_root, PART_SIZE, COUNTS["test"])


@DATASETS.register("cifar10-small")
def load_cifar10_small(seed: int = 0, data_root=None) -> Splits:
    """CIFAR-10 at a tenth of the protocol's scale for CPU runs: D and D_aux 2,500 each, D_t
    1,000 test images, all stratified by class."""
    return _splits("cifar10-small", seed, data_root, PART_SIZE // 10, COUNTS["test"] // 10)
