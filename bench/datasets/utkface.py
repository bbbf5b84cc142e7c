"""UTKFace (PROTOCOL.md section 1): gender of faces aged 15 or more (20,054 images), D and D_aux
7,000 each and D_t the other 6,054, stratified by gender.

Reads ``<data root>/utkface``: the official folder ``UTKFace/`` of ``age_gender_race_date.jpg.chip.jpg``
files (200x200 in the official release) or any ``*.tar.gz`` of it, at any resolution (images are
resized to 64x64; recipes resize further to their own input size). Labels come from file names.
A few official names are malformed; every name that cannot give age, gender and race is skipped
and reported (:func:`parse_names` returns them, the loader warns with the count and the names).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.datasets import (DATASETS, DataError, FeatureDomain, Part, Splits, resolve_data_root,
                            three_way_split)
from bench.datasets.archives import cached, decode_image, images_to_X, members, source_key

SIZE = 64
MIN_AGE = 15
PART_SIZE = 7000
POOL_SIZE = 20054  # faces aged >= 15 with a parseable name in the official release
RACES = ("white", "black", "asian", "indian", "other")
AGE_BUCKETS = ((15, 30), (30, 45), (45, 60), (60, None))
# age_gender_race_ then the date. Also accepts the two real names whose tail is damaged (a space
# before ".jpg", a missing dot): the labels are intact, only the date part is not.
NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>[01])_(?P<race>[0-4])_\d+")


@dataclass(frozen=True)
class ParsedNames:
    """``labels`` one row per usable file (file, age, gender, race) in input order, ``rows`` its
    positions in the input, ``skipped`` the names that do not carry all three labels."""

    labels: pd.DataFrame
    rows: np.ndarray
    skipped: tuple[str, ...]


def parse_names(names: list[str]) -> ParsedNames:
    """Labels from ``age_gender_race_date.jpg.chip.jpg`` base names (folders are stripped)."""
    records, rows, skipped = [], [], []
    for i, name in enumerate(names):
        base = name.rsplit("/", 1)[-1]
        match = NAME.match(base)
        if match is None:
            skipped.append(base)
            continue
        rows.append(i)
        records.append((base, int(match["age"]), int(match["gender"]), int(match["race"])))
    labels = pd.DataFrame(records, columns=["file", "age", "gender", "race"])
    return ParsedNames(labels, np.array(rows, dtype=np.int64), tuple(skipped))


def age_bucket(age: pd.Series) -> pd.Series:
    """PROTOCOL.md's buckets [15,30) [30,45) [45,60) [60,inf) as strings like ``"15-29"``."""
    edges = [lo for lo, _ in AGE_BUCKETS] + [np.inf]
    names = [f"{lo}-{hi - 1}" if hi else f"{lo}+" for lo, hi in AGE_BUCKETS]
    return pd.cut(age, edges, right=False, labels=names).astype(str)


def locate(folder: Path) -> Path:
    if (folder / "UTKFace").is_dir():
        return folder / "UTKFace"
    archives = sorted(folder.glob("*.tar.gz")) if folder.is_dir() else []
    if archives:
        return archives[0]
    raise DataError(
        f"UTKFace not found in {folder}: expected the official folder UTKFace/ of "
        f"age_gender_race_date.jpg.chip.jpg files or a .tar.gz of it. Download the aligned and "
        f"cropped faces (UTKFace.tar.gz) from the UTKFace site and put it in {folder}, or point "
        f"--data-root / SUBPOP_DATA_ROOT at a folder holding utkface/.")


def read(folder: Path) -> tuple[np.ndarray, ParsedNames]:
    """All usable faces: images (n, 64, 64, 3) uint8 and their parsed labels; cached decode."""
    source = locate(folder)

    def build() -> dict[str, np.ndarray]:
        names, images = [], []
        for name, content in members(source, ".jpg"):
            names.append(name)
            images.append(decode_image(content, SIZE, name))
        parsed = parse_names(names)
        return {"names": np.array(names), "images": np.stack(images)[parsed.rows]}

    arrays = cached("utkface", source_key(source, size=SIZE, version=1), build)
    parsed = parse_names(arrays["names"].tolist())
    if not len(parsed.labels):
        raise DataError(f"{source}: no file named age_gender_race_date.jpg.chip.jpg")
    return arrays["images"], parsed


@DATASETS.register("utkface")
def load_utkface(seed: int = 0, data_root=None) -> Splits:
    """UTKFace gender (0 male, 1 female); X (n, 3*64*64) float32 in [0, 1], channel-major.
    Annotations: file, age, gender, race (name), age_bucket (for FeatureMatch race x age bucket)."""
    folder = resolve_data_root(data_root) / "utkface"
    images, parsed = read(folder)
    if parsed.skipped:
        warnings.warn(f"UTKFace: skipped {len(parsed.skipped)} files whose names lack age, gender "
                      f"or race: {', '.join(parsed.skipped)}", stacklevel=2)
    labels = parsed.labels
    keep = np.flatnonzero(labels["age"].to_numpy() >= MIN_AGE)
    if len(keep) != POOL_SIZE:
        raise DataError(f"{locate(folder)}: expected {POOL_SIZE} faces aged >= {MIN_AGE} (the "
                        f"official release), found {len(keep)}")
    labels = labels.iloc[keep].reset_index(drop=True)
    labels["race"] = [RACES[r] for r in labels["race"]]
    labels["age_bucket"] = age_bucket(labels["age"])
    y = labels["gender"].to_numpy(np.int64)
    tr, au, te = three_way_split(len(y), (PART_SIZE, PART_SIZE, POOL_SIZE - 2 * PART_SIZE), seed,
                                 stratify=y)

    def part(rows: np.ndarray) -> Part:
        return Part(images_to_X(images[keep[rows]]), y[rows], labels.iloc[rows].reset_index(drop=True))

    d = 3 * SIZE * SIZE
    return Splits("utkface", part(tr), part(au), part(te), n_classes=2,
                  domain=FeatureDomain(np.zeros(d, np.float32), np.ones(d, np.float32)))
