"""The metrics of PROTOCOL.md section 6, on per-example correctness (``pred == y``)."""
from __future__ import annotations

import numpy as np


def group_accuracy(correct: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Accuracy (n_groups,) within each group id (ids < 0 ignored); NaN for an empty group."""
    valid = groups >= 0
    hits = np.bincount(groups[valid], weights=correct[valid].astype(float), minlength=n_groups)
    sizes = np.bincount(groups[valid], minlength=n_groups)
    return np.where(sizes > 0, hits / np.maximum(sizes, 1), np.nan)


def split_accuracy(correct: np.ndarray, in_target: np.ndarray) -> tuple[float, float, float]:
    """(acc_s, acc_rest, acc): accuracy on the target's test points, on the others, on all."""
    def mean(values):
        return float(values.mean()) if len(values) else float("nan")

    return mean(correct[in_target]), mean(correct[~in_target]), mean(correct)


def mean_split_accuracy(correct: np.ndarray, in_target: np.ndarray) -> tuple[float, float, float]:
    """``split_accuracy`` averaged over models: ``correct`` (n_models, n_test)."""
    return tuple(float(np.mean(v)) for v in zip(*(split_accuracy(c, in_target) for c in correct)))


def worst_k(values, k: int) -> float:
    """Mean of the k largest values (of all of them when fewer than k)."""
    v = np.sort(np.asarray(values, dtype=float))[::-1]
    return float(v[:k].mean()) if len(v) else float("nan")


def trial_metrics(correct_clean: np.ndarray, correct_pois: np.ndarray, correct_def_clean: np.ndarray,
                  test_groups: np.ndarray, target: int, targets: np.ndarray) -> dict:
    """Accuracy metrics of one trial.

    ``correct_clean`` (n_clean, n_test): the clean models; ``correct_pois`` (n_test,): the model
    trained on the defended poisoned set; ``correct_def_clean`` (n_def, n_test): the defense
    applied to clean D. ``test_groups`` (n_test,) subpopulation ids; ``targets``: the attacked ids,
    over which the worst per-subpopulation clean cost is taken.
    """
    in_t = test_groups == target
    acc_s_c, acc_r_c, acc_c = mean_split_accuracy(correct_clean, in_t)
    acc_s_p, acc_r_p, acc_p = split_accuracy(correct_pois, in_t)
    acc_s_d, _, acc_d = mean_split_accuracy(correct_def_clean, in_t)
    n_groups = int(max(test_groups.max(initial=-1), np.max(targets, initial=-1))) + 1
    per_clean = np.mean([group_accuracy(c, test_groups, n_groups) for c in correct_clean], axis=0)
    per_def = np.mean([group_accuracy(c, test_groups, n_groups) for c in correct_def_clean], axis=0)
    drops = (per_clean - per_def)[targets]
    drops = drops[~np.isnan(drops)]
    return {
        "acc_s_clean": acc_s_c, "acc_rest_clean": acc_r_c, "acc_clean": acc_c,
        "acc_s_pois": acc_s_p, "acc_rest_pois": acc_r_p, "acc_pois": acc_p,
        "td": acc_s_c - acc_s_p, "cd": acc_r_c - acc_r_p,
        "acc_def_clean": acc_d, "acc_s_def_clean": acc_s_d,
        "defense_clean_cost": acc_c - acc_d, "defense_clean_cost_s": acc_s_c - acc_s_d,
        "defense_clean_cost_worst": float(drops.max()) if len(drops) else float("nan"),
    }


def filtering_metrics(removed: np.ndarray, n_train: int, train_groups: np.ndarray, target: int) -> dict:
    """Filtering statistics: ``removed`` (n_train + m,) bool over D then the m poisons."""
    m = len(removed) - n_train
    return {
        "poisons_removed": int(removed[n_train:].sum()),
        "poison_recall": float(removed[n_train:].mean()) if m else float("nan"),
        "clean_removed": int(removed[:n_train].sum()),
        "clean_s_removed": int(removed[:n_train][train_groups == target].sum()),
    }
