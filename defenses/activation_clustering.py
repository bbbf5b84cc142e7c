"""Activation clustering: split each class's learned representations in two and drop the smaller
cluster when the split looks like a planted group (Chen et al., "Detecting Backdoor Attacks on
Deep Neural Networks by Activation Clustering", SafeAI@AAAI 2019, arXiv:1811.03728, 2018).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from defenses import DEFENSES, Defense, DefenseInput, Sanitized


@DEFENSES.register("activation-clustering")
@dataclass(frozen=True)
class ActivationClustering(Defense):
    """Per class: the representations ``embed`` (n_c, h) of the victim recipe trained on
    everything are projected on their top ``n_components`` principal components (min of that,
    h and n_c), split by 2-means, and the smaller cluster is removed when its share of the class
    is below ``size_threshold`` or the silhouette score of the split exceeds
    ``silhouette_threshold``.

    Either test alone removes the cluster, which is stricter than ART's silhouette analysis
    (``analyze_by_silhouette_score`` removes it only when both hold): 2-means splits of a clean
    unimodal class in a few dimensions often score a silhouette above 0.1, so expect a clean-data
    cost with small representations.

    The same rule runs on both tracks (the budget is ignored). The silhouette score is computed
    on a random subsample of at most ``silhouette_sample`` points of the class, because it costs
    O(n_c^2); ``None`` uses the whole class.
    """

    name = "activation-clustering"
    version = "1"
    uses_budget = False
    n_components: int = 10
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.1
    silhouette_sample: int | None = 10_000

    def __post_init__(self):
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        if not 0 <= self.size_threshold <= 0.5:
            # The smaller of two clusters never holds more than half the class.
            raise ValueError(f"size_threshold must be in [0, 0.5], got {self.size_threshold}")
        if not -1 <= self.silhouette_threshold <= 1:
            raise ValueError(f"silhouette_threshold must be in [-1, 1], got {self.silhouette_threshold}")
        if self.silhouette_sample is not None and self.silhouette_sample < 3:
            raise ValueError(f"silhouette_sample must be None or >= 3, got {self.silhouette_sample}")

    def suspicious(self, reps: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
        """For one class's representations (n_c, h): the mask (n_c,) of its smaller 2-means
        cluster, that cluster's relative size and the silhouette score of the split. A class
        that cannot be split (fewer than 3 points or all representations equal) returns an
        empty mask, size 0 and silhouette 0."""
        reps = np.asarray(reps, dtype=np.float64)
        centred = reps - reps.mean(0)
        none = np.zeros(len(reps), dtype=bool)
        if len(reps) < 3 or not np.any(centred):
            return none, 0.0, 0.0
        k = min(self.n_components, *reps.shape)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        reduced = centred @ vt[:k].T
        # One OpenMP thread: the problem is at most n_c x 10, and on a busy machine KMeans'
        # threads spin-wait at every iteration (measured 100x slower on 2 shared cores).
        with threadpool_limits(1, user_api="openmp"):
            labels = KMeans(2, n_init=10, random_state=seed).fit_predict(reduced)
        counts = np.bincount(labels, minlength=2)
        if counts.min() == 0:  # only when the reduced points coincide
            return none, 0.0, 0.0
        small = int(np.argmin(counts))
        rows = np.arange(len(reps))
        if self.silhouette_sample is not None and len(reps) > self.silhouette_sample:
            # Stratified by cluster: a plain subsample can miss a tiny cluster entirely, and the
            # silhouette score is undefined with one cluster.
            rng = np.random.default_rng(seed)
            take = np.maximum(1, np.rint(self.silhouette_sample * counts / len(reps))).astype(int)
            rows = np.concatenate([rng.choice(np.flatnonzero(labels == j), take[j], replace=False)
                                   for j in range(2)])
        silhouette = float(silhouette_score(reduced[rows], labels[rows]))
        return labels == small, counts[small] / len(reps), silhouette

    def sanitize(self, data: DefenseInput) -> Sanitized:
        reps = data.fit_recipe().embed(data.X)
        keep = np.ones(len(data.y), dtype=bool)
        for c in np.unique(data.y):
            rows = np.flatnonzero(data.y == c)
            smaller, size, silhouette = self.suspicious(reps[rows], data.seed)
            if size < self.size_threshold or silhouette > self.silhouette_threshold:
                keep[rows[smaller]] = False
        return Sanitized.keep(keep)
