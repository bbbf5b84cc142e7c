"""RONI, reject on negative impact (Nelson et al., "Exploiting Machine Learning to Subvert Your
Spam Filter", LEET 2008; Barreno et al., "The security of machine learning", MLJ 2010).

An oracle defense: it sees a small trusted clean sample of the training set (``needs_trusted``),
which the other defenses do not, so its rows are marked as such on the leaderboard.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.models import TrainJob
from bench.validation import check_integer
from defenses import DEFENSES, Defense, DefenseInput, Sanitized


def candidate_groups(X: np.ndarray, y: np.ndarray, rows: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """Group id (len(rows),) of each candidate row, numbered 0..G-1: the candidates of each class
    are clustered by KMeans on their features, into about ``n_groups`` clusters over all
    classes, shared in proportion to the classes' sizes (at least one per class)."""
    from sklearn.cluster import KMeans

    group = np.zeros(len(rows), dtype=np.int64)
    next_id = 0
    for c in np.unique(y[rows]):
        members = np.flatnonzero(y[rows] == c)
        k = max(1, min(len(members), round(n_groups * len(members) / len(rows))))
        group[members] = next_id + KMeans(k, n_init=3, random_state=seed % 2**32).fit_predict(X[rows[members]])
        next_id += k
    return group


@DEFENSES.register("roni")
@dataclass(frozen=True)
class RONI(Defense):
    """Measure each candidate group's impact on accuracy and reject the harmful ones.

    Nelson et al. test one candidate at a time: train on a base sample with and without it and
    compare accuracy on held-out trusted data. One point moves a model too little to measure,
    and one retrain per point is out of reach here, so the candidates are groups: the untrusted
    rows of each class clustered (KMeans, ``n_groups`` clusters in all), which keeps a
    subpopulation attack's poisons (copies of one region, with one wrong label) together. For each of
    ``repeats`` random halvings of the trusted rows into a base and a validation half, a
    group's impact is the validation accuracy of the recipe trained on base + group minus that
    of the recipe trained on the base alone; impacts are averaged over the halvings.

    Blind track: reject every group whose impact is below ``-threshold``. Informed track:
    reject groups from the most negative impact up, while the impact is negative and fewer
    than ``budget`` points have been rejected.
    """

    name = "roni"
    version = "1"
    needs_trusted = True
    n_groups: int = 20
    repeats: int = 2
    threshold: float = 0.01

    def __post_init__(self):
        for field in ("n_groups", "repeats"):
            check_integer(field, getattr(self, field), 1)
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")

    def impacts(self, data: DefenseInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate rows (c,) (the untrusted ones), their group ids (c,) and each group's mean
        impact (G,) in accuracy units (negative: adding the group hurts)."""
        if data.trusted is None or data.trusted.sum() < 2:
            raise ValueError("roni needs at least 2 trusted rows (DefenseInput.trusted)")
        trusted = np.flatnonzero(data.trusted)
        candidates = np.flatnonzero(~data.trusted)
        group = candidate_groups(data.X, data.y, candidates, self.n_groups, data.seed)
        n_groups = int(group.max()) + 1
        rng = np.random.default_rng(data.seed)
        jobs, validation = [], []
        for r in range(self.repeats):
            shuffled = rng.permutation(trusted)
            base, val = shuffled[:len(shuffled) // 2], shuffled[len(shuffled) // 2:]
            for g in range(-1, n_groups):  # -1: the base alone
                w = np.zeros(len(data.y))
                w[base] = 1
                if g >= 0:
                    w[candidates[group == g]] = 1
                jobs.append(TrainJob(w, data.seed + r))
            validation.append(val)
        models = data.fit_many(jobs)
        impact = np.zeros(n_groups)
        for r, val in enumerate(validation):
            acc = [np.mean(m.predict(data.X[val]) == data.y[val])
                   for m in models[r * (n_groups + 1):(r + 1) * (n_groups + 1)]]
            impact += (np.array(acc[1:]) - acc[0]) / self.repeats
        return candidates, group, impact

    def sanitize(self, data: DefenseInput) -> Sanitized:
        candidates, group, impact = self.impacts(data)
        if data.budget is None:
            rejected = np.flatnonzero(impact < -self.threshold)
        else:
            sizes = np.bincount(group, minlength=len(impact))
            rejected, removed = [], 0
            for g in np.argsort(impact, kind="stable"):
                if impact[g] >= 0 or removed >= data.budget:
                    break
                rejected.append(g)
                removed += sizes[g]
        keep = np.ones(len(data.y), dtype=bool)
        keep[candidates[np.isin(group, rejected)]] = False
        return Sanitized.keep(keep)
