"""Cleanlab: drop the points that confident learning finds most likely mislabelled (Northcutt,
Jiang & Chuang 2021, "Confident learning: estimating uncertainty in dataset labels"), with the
``cleanlab`` package.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from bench.models import TrainJob
from bench.seeding import derive_seed
from bench.validation import check_integer
from defenses import DEFENSES, Defense, DefenseInput, Sanitized

# cleanlab's find_label_issues keeps its per-class inputs in module globals when n_jobs=1
# (cleanlab/filter.py: "global variable for find_label_issues multiprocessing"), so two calls in
# threads at once (the runner runs a chunk's defenses in threads) read each other's data. Calls
# are serialised; they are fast next to the cross-validation fits.
_FIND_LABEL_ISSUES = threading.Lock()

FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
           "predicted_neq_given", "low_normalized_margin", "low_self_confidence")


def out_of_fold_proba(data: DefenseInput, n_folds: int) -> np.ndarray:
    """Predicted probabilities (n, n_classes), each row from the recipe trained on the other
    folds of a stratified ``n_folds``-fold split of (X, y)."""
    split = StratifiedKFold(n_folds, shuffle=True,
                            random_state=derive_seed(data.seed, "cleanlab", "folds"))
    folds = [test for _, test in split.split(np.zeros(len(data.y)), data.y)]
    jobs = []
    for i, test in enumerate(folds):
        weights = np.ones(len(data.y))
        weights[test] = 0.0
        jobs.append(TrainJob(weights, derive_seed(data.seed, "cleanlab", i)))
    # One batched call: the recipe trains the folds side by side over the shared pool.
    models = data.fit_many(jobs)
    proba = np.zeros((len(data.y), data.n_classes))
    for model, test in zip(models, folds):
        proba[test] = model.predict_proba(data.X[test])
    return proba


@DEFENSES.register("cleanlab")
@dataclass(frozen=True)
class Cleanlab(Defense):
    """Confident learning on out-of-sample predicted probabilities (n, n_classes) from
    ``n_folds``-fold stratified cross-validation of the victim recipe on ``X`` (n, d), ``y`` (n,).

    Informed track: remove the ``budget`` points ranked most likely mislabelled by
    ``cleanlab.filter.find_label_issues`` (``filter_by``, ranked by self-confidence p(y | x));
    if it flags fewer, the rest are the unflagged points of lowest self-confidence. Blind track:
    remove every point it flags.
    """

    name = "cleanlab"
    version = "1"
    n_folds: int = 5
    filter_by: str = "prune_by_noise_rate"

    def __post_init__(self):
        check_integer("n_folds", self.n_folds, 2)
        if self.filter_by not in FILTERS:
            raise ValueError(f"filter_by must be one of {', '.join(FILTERS)}; "
                             f"got {self.filter_by!r}")

    def sanitize(self, data: DefenseInput) -> Sanitized:
        # Imported here so that importing the defenses registry stays fast.
        from cleanlab.filter import find_label_issues

        proba = out_of_fold_proba(data, self.n_folds)
        y = np.asarray(data.y)
        keep = np.ones(len(y), dtype=bool)
        # n_jobs=1: a cleanlab process pool would compete with the runner's own workers.
        def issues(**kwargs):
            with _FIND_LABEL_ISSUES:
                try:
                    return find_label_issues(y, proba, filter_by=self.filter_by, n_jobs=1, **kwargs)
                except ValueError:
                    # cleanlab 2.9's prune_by_noise_rate can fail on a class whose estimated
                    # noise count exceeds its size (seen on small digits clusters);
                    # confident_learning, the other standard filter, has no such step.
                    return find_label_issues(y, proba, filter_by="confident_learning", n_jobs=1, **kwargs)

        if data.budget is None:
            keep[issues()] = False
            return Sanitized.keep(keep)
        if data.budget <= 0:
            return Sanitized.keep(keep)
        ranked = np.asarray(issues(return_indices_ranked_by="self_confidence"), dtype=np.int64)
        if len(ranked) < data.budget:
            flagged = np.zeros(len(y), dtype=bool)
            flagged[ranked] = True
            self_conf = proba[np.arange(len(y)), y]
            rest = np.flatnonzero(~flagged)
            rest = rest[np.argsort(self_conf[rest], kind="stable")]
            ranked = np.concatenate([ranked, rest])
        keep[ranked[:data.budget]] = False
        return Sanitized.keep(keep)
