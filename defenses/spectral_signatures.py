"""Spectral signatures: drop the points that load most on the top singular direction of their
class's learned representations (Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks",
NeurIPS 2018).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from defenses import DEFENSES, Defense, DefenseInput, Sanitized


def spectral_scores(reps: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Outlier scores (n,) of representations ``reps`` (n, h) with labels ``y`` (n,).

    Per class c: R_c (n_c, h) centred on its class mean, v = top right singular vector of the
    centred matrix, score_i = ((r_i - mean_c) . v)^2. A class with one point, or whose
    representations are all equal, scores 0.
    """
    reps = np.asarray(reps, dtype=np.float64)
    scores = np.zeros(len(y))
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        centred = reps[rows] - reps[rows].mean(0)
        if len(rows) < 2 or not np.any(centred):
            continue
        v = np.linalg.svd(centred, full_matrices=False)[2][0]
        scores[rows] = (centred @ v) ** 2
    return scores


def per_class_quota(y: np.ndarray, n_classes: int, total: float | None, fraction: float) -> np.ndarray:
    """Number of points (n_classes,) to remove from each class.

    ``total`` given: split it over the classes in proportion to their sizes, rounded by largest
    remainder so the counts add up to total rounded half up. Otherwise ``fraction`` of each class,
    rounded half up. Every class keeps at least one point.
    """
    sizes = np.bincount(y, minlength=n_classes)
    # Halves round up: 1.5 m is a half for every odd m, and round-half-even would alternate.
    if total is None:
        quota = np.floor(fraction * sizes + 0.5).astype(np.int64)
    else:
        share = total * sizes / sizes.sum()
        quota = np.floor(share).astype(np.int64)
        # Largest remainder: per-class rounding could drift the sum away from 1.5 m.
        short = math.floor(total + 0.5) - int(quota.sum())
        quota[np.argsort(-(share - quota), kind="stable")[:max(short, 0)]] += 1
    return np.minimum(quota, np.maximum(sizes - 1, 0))


@DEFENSES.register("spectral-signatures")
@dataclass(frozen=True)
class SpectralSignatures(Defense):
    """Score = squared projection of the point's centred representation on the top right
    singular vector of its class (``spectral_scores``); representations are ``embed`` (n, h) of
    the victim recipe trained on everything (the input itself for logistic regression).

    Each class loses its ``removal_factor`` x expected poison count highest scores. Informed
    track: the budget m is split over the classes in proportion to their sizes (total
    ``removal_factor`` x m). Blind track: ``blind_fraction`` (eps) of each class is assumed poison.

    The projection is of the centred representation, as in the paper's Algorithm 1. ART's
    ``SpectralSignatureDefense`` and MadryLab's ``compute_corr.py`` take v from the centred matrix
    but project the uncentred features, which shifts every projection by the class mean's
    component along v and so ranks the points differently.
    """

    name = "spectral-signatures"
    version = "1"
    removal_factor: float = 1.5
    blind_fraction: float = 0.05

    def __post_init__(self):
        if not self.removal_factor > 0:
            raise ValueError(f"removal_factor must be > 0, got {self.removal_factor}")
        if not 0 <= self.blind_fraction < 1:
            raise ValueError(f"blind_fraction must be in [0, 1), got {self.blind_fraction}")

    def sanitize(self, data: DefenseInput) -> Sanitized:
        scores = spectral_scores(data.fit_recipe().embed(data.X), data.y)
        total = None if data.budget is None else self.removal_factor * data.budget
        quota = per_class_quota(data.y, data.n_classes, total, self.removal_factor * self.blind_fraction)
        keep = np.ones(len(data.y), dtype=bool)
        for c in np.unique(data.y):
            rows = np.flatnonzero(data.y == c)
            keep[rows[np.argsort(-scores[rows], kind="stable")[:quota[c]]]] = False
        return Sanitized.keep(keep)
