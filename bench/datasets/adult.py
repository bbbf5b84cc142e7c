"""UCI Adult from the official files ``adult.data`` and ``adult.test`` (PROTOCOL.md section 1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.datasets import (DATASETS, DataError, FeatureDomain, Part, Splits, resolve_data_root,
                            three_way_split, user_cache_dir)
from bench.datasets.files import download, verify_md5

COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
           "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
           "hours-per-week", "native-country", "income")
NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = ("workclass", "marital-status", "occupation", "relationship", "race", "sex")
DROPPED = ("education", "native-country", "fnlwgt")
URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
FILES = {
    "adult.data": ("5d7c39d7b8804f071cdd1f2a7c460872", 32561),
    "adult.test": ("35238206dfdf7f1fe215bbb874adecdc", 16281),
}
PART_SIZE = 7841  # |D| = |D_aux|: half of the balanced pool of 15,682


def adult_dir(data_root=None) -> Path:
    return resolve_data_root(data_root) / "adult"


def fetch(dest: Path | None = None) -> Path:
    """Download the official files into ``dest`` (default: the user cache) and verify them."""
    dest = dest or user_cache_dir() / "data" / "adult"
    for name, (md5, _) in FILES.items():
        target = dest / name
        if target.exists():
            verify_md5(target, md5)
            continue
        try:
            download(URL + name, target, md5)
        except DataError as err:
            raise DataError(f"{err}. Without a network, copy the official UCI files adult.data and "
                            f"adult.test into {dest} (or any folder given by --data-root / "
                            f"SUBPOP_DATA_ROOT, under adult/).") from None
    return dest


def read_file(path: Path) -> pd.DataFrame:
    """Parse one official file. ``adult.test`` starts with a ``|1x3 Cross validator`` line and
    its labels end in ``.``; both are normalised here."""
    if not path.exists():
        raise DataError(
            f"UCI Adult file not found: {path}. Put the official files adult.data and adult.test "
            f"in {path.parent} (or point --data-root / SUBPOP_DATA_ROOT at a folder holding "
            f"adult/), or run `subpop-bench data fetch adult` on a machine with a network."
        )
    md5, rows = FILES[path.name]
    try:
        verify_md5(path, md5)
    except OSError as err:  # e.g. a folder in its place, or no permission to read it
        raise DataError(f"cannot read the UCI Adult file {path}: {err.strerror or err}") from None
    frame = pd.read_csv(path, header=None, names=list(COLUMNS), skipinitialspace=True,
                        comment="|", skip_blank_lines=True, dtype=str)
    frame["income"] = frame["income"].str.rstrip(".")
    if len(frame) != rows or not frame["income"].isin(["<=50K", ">50K"]).all():
        raise DataError(f"{path}: expected {rows} rows labelled <=50K/>50K, got {len(frame)} rows")
    for col in NUMERIC + ("fnlwgt",):
        frame[col] = pd.to_numeric(frame[col])
    return frame


def balance(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Subsample ``<=50K`` to the count of ``>50K`` (rows keep their file order)."""
    pos = np.flatnonzero(frame["income"].to_numpy() == ">50K")
    neg = np.flatnonzero(frame["income"].to_numpy() == "<=50K")
    keep = np.sort(np.concatenate([pos, rng.choice(neg, size=len(pos), replace=False)]))
    return frame.iloc[keep].reset_index(drop=True)


class Encoder:
    """One-hot categorical columns (categories of the whole ``adult.data`` file, so the feature
    layout does not depend on the seed) and standardised numeric columns (training-pool stats)."""

    def __init__(self, full: pd.DataFrame, pool: pd.DataFrame):
        self.categories = {c: sorted(full[c].unique()) for c in CATEGORICAL}
        self.mean = pool[list(NUMERIC)].mean()
        self.std = pool[list(NUMERIC)].std(ddof=0)
        self.names = list(NUMERIC) + [f"{c}={v}" for c in CATEGORICAL for v in self.categories[c]]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        numeric = ((frame[list(NUMERIC)] - self.mean) / self.std).to_numpy(np.float32)
        onehots = [
            (frame[c].to_numpy()[:, None] == np.array(self.categories[c])[None, :]).astype(np.float32)
            for c in CATEGORICAL
        ]
        return np.hstack([numeric] + onehots)

    def onehot_groups(self) -> tuple[tuple[int, ...], ...]:
        groups, start = [], len(NUMERIC)
        for c in CATEGORICAL:
            groups.append(tuple(range(start, start + len(self.categories[c]))))
            start += len(self.categories[c])
        return tuple(groups)


@DATASETS.register("adult")
def load_adult(seed: int = 0, data_root=None) -> Splits:
    """UCI Adult, income >50K; balanced pool of 15,682 split into D and D_aux of 7,841 each,
    D_t the balanced adult.test (7,692). Annotations: the raw columns (for FeatureMatch)."""
    folder = adult_dir(data_root)
    full = read_file(folder / "adult.data")
    test = read_file(folder / "adult.test")
    rng = np.random.default_rng(seed)
    pool = balance(full, rng)
    test = balance(test, rng)
    encoder = Encoder(full, pool)
    y_pool = (pool["income"] == ">50K").to_numpy(np.int64)
    tr, au, _ = three_way_split(len(pool), (PART_SIZE, PART_SIZE, 0), seed, stratify=y_pool)

    def part(frame: pd.DataFrame) -> Part:
        annotations = frame.drop(columns=["income", "fnlwgt"]).reset_index(drop=True)
        return Part(encoder.transform(frame), (frame["income"] == ">50K").to_numpy(np.int64),
                    annotations)

    X_all = encoder.transform(pool)
    lower, upper = X_all.min(0), X_all.max(0)
    return Splits(
        dataset="adult",
        train=part(pool.iloc[tr]),
        aux=part(pool.iloc[au]),
        test=part(test),
        n_classes=2,
        domain=FeatureDomain(lower, upper, encoder.onehot_groups()),
        feature_names=tuple(encoder.names),
    )
