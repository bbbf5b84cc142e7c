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
    ``names[i]`` describes subpopulation i. ``scores`` (len(names),), when the finder trained an
    attacker model, is that model's mean true-class logit over each subpopulation's D_aux points
    (NaN for one without D_aux points).
    """

    aux: np.ndarray
    train: np.ndarray
    test: np.ndarray
    names: tuple[str, ...]
    scores: np.ndarray | None = None

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


@dataclass(frozen=True)
class SampledTargets(TargetRule):
    """Of the subpopulations :class:`TargetRule` admits, ``count`` drawn uniformly at random
    (seeded by ``seed``), in index order; all of them when fewer are admitted. For a sample of a
    suite too costly to run on every target (full-scale CIFAR-10 on one GPU lease)."""

    count: int = 10
    seed: int = 0

    def select(self, subpops: Subpopulations) -> np.ndarray:
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        eligible = super().select(subpops)
        if len(eligible) <= self.count:
            return eligible
        return np.sort(np.random.default_rng(self.seed).choice(eligible, self.count, replace=False))


@dataclass(frozen=True)
class ConfidenceBands(TargetRule):
    """PROTOCOL.md's IMDB rule: of the subpopulations :class:`TargetRule` admits, the
    ``per_band`` lowest, ``per_band`` median and ``per_band`` highest by the attacker model's mean
    true-class logit (``Subpopulations.scores``); all of them when there are fewer than three bands."""

    per_band: int = 10

    def select(self, subpops: Subpopulations) -> np.ndarray:
        if self.per_band < 1:
            raise ValueError(f"per_band must be >= 1, got {self.per_band}")
        if subpops.scores is None:
            raise ValueError("the confidence-band target rule needs subpopulation scores: use a "
                             "finder with an attacker model (clustermatch with surrogate=...)")
        eligible = super().select(subpops)
        ranked = eligible[np.argsort(subpops.scores[eligible], kind="stable")]
        if len(ranked) <= 3 * self.per_band:
            return np.sort(ranked)
        mid = len(ranked) // 2 - self.per_band // 2
        bands = np.concatenate([ranked[:self.per_band], ranked[mid:mid + self.per_band],
                                ranked[-self.per_band:]])
        return np.sort(bands)


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
    """KMeans with ``k`` clusters fitted on D_aux representations (optionally after PCA fitted on
    D_aux keeping ``pca_components``); D and D_t are assigned to the nearest centre.

    Representations: the model inputs by default; with ``surrogate`` (a recipe name, its
    hyper-parameters ``surrogate_params`` as (name, value) pairs), the attacker trains that recipe
    on D_aux and clusters its ``layer``: ``"input"``, ``"embed"`` (the last hidden
    representation) or a layer the fitted model names in ``layers`` (e.g. ``conv``'s pooling
    stages). The surrogate's mean true-class logits per cluster become the subpopulation scores.
    The paper keeps the first 40 of 100 principal components for images; with an exact SVD those
    are the 40 of PCA(40), so ``pca_components=40`` says the same.
    """

    k: int = 100
    pca_components: int | None = None
    n_init: int = 10
    surrogate: str | None = None
    surrogate_params: tuple = ()
    layer: str = "input"

    def find(self, splits: Splits, seed: int = 0) -> Subpopulations:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        if self.k < 2 or self.k > len(splits.aux):
            raise ValueError(f"clustermatch k must be in [2, |D_aux| = {len(splits.aux)}], got {self.k}")
        model = None
        if self.surrogate is not None:
            from bench import models

            recipe = models.make(self.surrogate, **dict(self.surrogate_params))
            model = recipe.fit(splits.aux.X, splits.aux.y, splits.n_classes, seed=seed)
        elif self.layer != "input":
            raise ValueError(f"clustermatch layer {self.layer!r} needs a surrogate recipe")
        aux, train, test = (representation(model, getattr(splits, p).X, self.layer)
                            for p in ("aux", "train", "test"))
        if self.pca_components:
            pca = PCA(self.pca_components, random_state=seed).fit(aux)
            aux, train, test = pca.transform(aux), pca.transform(train), pca.transform(test)
        km = KMeans(self.k, n_init=self.n_init, random_state=seed).fit(aux)
        labels = km.labels_.astype(np.int64)
        scores = None if model is None else cluster_scores(model, splits.aux.X, splits.aux.y, labels, self.k)
        return Subpopulations(labels, km.predict(train).astype(np.int64),
                              km.predict(test).astype(np.int64),
                              tuple(f"cluster {i}" for i in range(self.k)), scores)


def representation(model, X: np.ndarray, layer: str) -> np.ndarray:
    """``layer`` of a fitted ``model`` for inputs X (n, d): "input" is X, "embed" the model's last
    hidden representation, other names the model's ``layer_output(X, layer)``."""
    if layer == "input":
        return X
    if layer == "embed":
        return model.embed(X)
    names = getattr(model, "layers", ())
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not a layer of {type(model).__name__} (layers: "
                         f"'input', 'embed'{''.join(f', {n!r}' for n in names)})")
    return model.layer_output(X, layer)


def cluster_scores(model, X: np.ndarray, y: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean true-class logit per cluster (k,): log p(y|x) - log(1 - p(y|x)) of the model, averaged
    over each cluster's rows (NaN for an empty cluster)."""
    p = np.clip(model.predict_proba(X)[np.arange(len(y)), y], 1e-12, 1 - 1e-12)
    logit = np.log(p) - np.log1p(-p)
    sums = np.bincount(labels, weights=logit, minlength=k)
    counts = np.bincount(labels, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _layer_finder(layer: str):
    def make(**params) -> ClusterMatch:
        return ClusterMatch(layer=layer, **params)

    make.__doc__ = f"ClusterMatch on layer {layer!r} of the surrogate (one scenario id per layer)."
    return make


# The paper's Table 3 compares ClusterMatch per representation layer of `conv`; a scenario id
# names its finder, so each layer has its own finder name.
for _layer in ("input", "pool1", "pool2", "pool3", "embed"):
    FINDERS.add(f"clustermatch@{_layer}", _layer_finder(_layer))
