"""Subpopulation finders (PROTOCOL.md section 3) and the rule that picks the attacked ones.

A finder sees only D_aux (the attacker's data) and defines subpopulations there; D and D_t are
then assigned to them (FeatureMatch: same annotation values; ClusterMatch: the fitted KMeans).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.datasets import Splits
from bench.registry import Registry

FINDERS: Registry = Registry("finder")


@dataclass(frozen=True, eq=False)
class Subpopulations:
    """Subpopulation id of every example of each part, ``-1`` where none applies.

    ``aux`` (n_aux,), ``train`` (n_train,), ``test`` (n_test,) int64 ids in [0, len(names));
    ``names[i]`` describes subpopulation i.
    """

    aux: np.ndarray
    train: np.ndarray
    test: np.ndarray
    names: tuple[str, ...]

    def sizes(self, part: str) -> np.ndarray:
        ids = getattr(self, part)
        return np.bincount(ids[ids >= 0], minlength=len(self.names))


@dataclass(frozen=True)
class TargetRule:
    """Attack subpopulation s when ``min_aux < |s ∩ D_aux| < max_aux`` and ``|s ∩ D_t| >= min_test``
    (``max_aux`` None: no upper bound)."""

    min_aux: int = 0
    max_aux: int | None = None
    min_test: int = 1

    def select(self, subpops: Subpopulations) -> np.ndarray:
        aux, test = subpops.sizes("aux"), subpops.sizes("test")
        ok = (aux > self.min_aux) & (test >= self.min_test)
        if self.max_aux is not None:
            ok &= aux < self.max_aux
        return np.flatnonzero(ok)


@FINDERS.register("featurematch")
@dataclass(frozen=True)
class FeatureMatch:
    """Exact match on annotation ``columns``; one subpopulation per value combination in D_aux."""

    columns: tuple[str, ...] = ("education-num", "race", "sex")

    def find(self, splits: Splits, seed: int = 0) -> Subpopulations:
        parts = {name: getattr(splits, name).annotations for name in ("aux", "train", "test")}
        for name, frame in parts.items():
            if frame is None:
                raise ValueError(f"featurematch needs annotation columns; dataset "
                                 f"{splits.dataset!r} has none")
            missing = [c for c in self.columns if c not in frame.columns]
            if missing:
                raise ValueError(f"featurematch columns {missing} are not annotations of "
                                 f"{splits.dataset!r} (available: {list(frame.columns)})")
        combos = parts["aux"][list(self.columns)].drop_duplicates()
        combos = combos.sort_values(list(self.columns)).reset_index(drop=True)
        combos["_id"] = np.arange(len(combos))

        def assign(frame: pd.DataFrame) -> np.ndarray:
            merged = frame[list(self.columns)].merge(combos, how="left", on=list(self.columns))
            return merged["_id"].fillna(-1).to_numpy(np.int64)

        names = tuple(", ".join(f"{c}={v}" for c, v in zip(self.columns, row))
                      for row in combos[list(self.columns)].itertuples(index=False))
        return Subpopulations(assign(parts["aux"]), assign(parts["train"]), assign(parts["test"]),
                              names)


@FINDERS.register("clustermatch")
@dataclass(frozen=True)
class ClusterMatch:
    """KMeans with ``k`` clusters fitted on the D_aux model inputs (optionally after PCA fitted on
    D_aux keeping ``pca_components``); D and D_t are assigned to the nearest centre."""

    k: int = 100
    pca_components: int | None = None
    n_init: int = 10

    def find(self, splits: Splits, seed: int = 0) -> Subpopulations:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        if self.k < 2 or self.k > len(splits.aux):
            raise ValueError(f"clustermatch k must be in [2, |D_aux| = {len(splits.aux)}], got {self.k}")
        aux, train, test = splits.aux.X, splits.train.X, splits.test.X
        if self.pca_components:
            pca = PCA(self.pca_components, random_state=seed).fit(aux)
            aux, train, test = pca.transform(aux), pca.transform(train), pca.transform(test)
        km = KMeans(self.k, n_init=self.n_init, random_state=seed).fit(aux)
        return Subpopulations(km.labels_.astype(np.int64), km.predict(train).astype(np.int64),
                              km.predict(test).astype(np.int64),
                              tuple(f"cluster {i}" for i in range(self.k)))
