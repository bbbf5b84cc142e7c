"""Metrics of PROTOCOL.md section 6 on hand-made predictions."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.metrics import (filtering_metrics, group_accuracy, mean_split_accuracy, split_accuracy,
                           trial_metrics, worst_k)

approx = pytest.approx

# A tiny test set of 8 points in 3 subpopulations (and one unassigned point).
#                   0  1  2  3  4  5  6   7
GROUPS = np.array([0, 0, 1, 1, 1, 2, 2, -1])
CLEAN = np.array([[1, 1, 1, 1, 0, 1, 0, 1],     # model 1
                  [1, 0, 1, 1, 1, 1, 1, 1]], bool)  # model 2
POIS = np.array([1, 1, 0, 0, 1, 1, 0, 1], bool)
DEF_CLEAN = np.array([[0, 0, 1, 1, 1, 1, 1, 1]], bool)


def test_split_accuracy():
    in_t = GROUPS == 1
    # target: points 2,3,4 -> 1,1,0; rest: 0,1,5,6,7 -> 1,1,1,0,1
    assert split_accuracy(CLEAN[0], in_t) == approx((2 / 3, 4 / 5, 6 / 8))
    assert split_accuracy(POIS, in_t) == approx((1 / 3, 4 / 5, 5 / 8))


def test_split_accuracy_empty_target_is_nan():
    acc_s, acc_rest, acc = split_accuracy(POIS, np.zeros(8, bool))
    assert math.isnan(acc_s)
    assert acc_rest == approx(5 / 8) and acc == approx(5 / 8)


def test_mean_split_accuracy():
    in_t = GROUPS == 1
    # model 1: (2/3, 4/5, 6/8); model 2: (3/3, 4/5, 7/8)
    assert mean_split_accuracy(CLEAN, in_t) == approx((5 / 6, 4 / 5, 13 / 16))
    assert mean_split_accuracy(POIS[None, :], in_t) == approx(split_accuracy(POIS, in_t))


def test_group_accuracy():
    correct = np.array([1, 0, 1, 1, 0], bool)
    groups = np.array([0, 0, 2, -1, 2])
    acc = group_accuracy(correct, groups, n_groups=4)
    assert acc.shape == (4,)
    assert acc[0] == approx(0.5) and acc[2] == approx(0.5)
    assert math.isnan(acc[1]) and math.isnan(acc[3])  # empty groups
    # the unassigned point (-1, correct) is ignored: flipping it changes nothing
    correct[3] = False
    np.testing.assert_array_equal(group_accuracy(correct, groups, 4), acc)


def test_group_accuracy_on_fixture():
    np.testing.assert_allclose(group_accuracy(CLEAN[0], GROUPS, 3), [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(group_accuracy(DEF_CLEAN[0], GROUPS, 3), [0.0, 1.0, 1.0])


def test_worst_k():
    values = [0.1, 0.5, 0.3, -0.2]
    assert worst_k(values, 1) == approx(0.5)
    assert worst_k(values, 2) == approx(0.4)
    assert worst_k(values, 4) == approx(0.175)
    assert worst_k(values, 10) == approx(0.175)  # k > len: mean of all
    assert worst_k([0.7, 0.7, 0.2], 1) == approx(0.7)  # ties
    assert worst_k([0.7, 0.7, 0.2], 2) == approx(0.7)
    assert worst_k(np.array([0.2, 0.7, 0.7]), 3) == approx(1.6 / 3)
    assert math.isnan(worst_k([], 5))


def brute_worst_k(values, k):
    remaining = list(values)
    picked = []
    while remaining and len(picked) < k:
        best = 0
        for i in range(1, len(remaining)):
            if remaining[i] > remaining[best]:
                best = i
        picked.append(remaining.pop(best))
    return math.fsum(picked) / len(picked)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
       st.integers(1, 50))
def test_worst_k_matches_brute_force(values, k):
    expected = brute_worst_k(values, k)
    assert expected == approx(float(np.mean(sorted(values)[-k:])), rel=1e-9, abs=1e-6)
    assert worst_k(values, k) == approx(expected, rel=1e-9, abs=1e-6)


def test_trial_metrics_by_hand():
    out = trial_metrics(CLEAN, POIS, DEF_CLEAN, GROUPS, target=1, targets=np.array([0, 1, 2]))
    # clean: acc_s (2/3 + 1)/2, acc_rest (4/5 + 4/5)/2, acc (6/8 + 7/8)/2
    assert out["acc_s_clean"] == approx(5 / 6)
    assert out["acc_rest_clean"] == approx(4 / 5)
    assert out["acc_clean"] == approx(13 / 16)
    assert out["acc_s_pois"] == approx(1 / 3)
    assert out["acc_rest_pois"] == approx(4 / 5)
    assert out["acc_pois"] == approx(5 / 8)
    assert out["td"] == approx(5 / 6 - 1 / 3)  # 0.5
    assert out["cd"] == approx(0.0)
    assert out["acc_def_clean"] == approx(6 / 8)
    assert out["acc_s_def_clean"] == approx(1.0)
    assert out["defense_clean_cost"] == approx(13 / 16 - 6 / 8)
    assert out["defense_clean_cost_s"] == approx(5 / 6 - 1)
    # per-group clean accuracy (mean of models) g0 (1 + 1/2)/2 = 3/4, g1 5/6, g2 (1/2 + 1)/2 = 3/4;
    # defense on clean data: g0 0, g1 1, g2 1; drops 3/4, -1/6, -1/4 -> worst 3/4 (group 0)
    assert out["defense_clean_cost_worst"] == approx(0.75)


def test_trial_metrics_worst_cost_only_over_targets():
    out = trial_metrics(CLEAN, POIS, DEF_CLEAN, GROUPS, target=1, targets=np.array([1, 2]))
    assert out["defense_clean_cost_worst"] == approx(-1 / 6)
    # a target with no test point (id 3) has no drop and is skipped, not NaN-poisoning the max
    out = trial_metrics(CLEAN, POIS, DEF_CLEAN, GROUPS, target=1, targets=np.array([1, 3]))
    assert out["defense_clean_cost_worst"] == approx(-1 / 6)
    out = trial_metrics(CLEAN, POIS, DEF_CLEAN, GROUPS, target=1, targets=np.array([3]))
    assert math.isnan(out["defense_clean_cost_worst"])


def test_trial_metrics_other_target():
    out = trial_metrics(CLEAN, POIS, DEF_CLEAN, GROUPS, target=2, targets=np.array([0, 1, 2]))
    # target 2 = points 5,6: clean (1/2 + 1)/2 = 3/4, poisoned 1/2
    assert out["td"] == approx(0.25)
    # rest = 0,1,2,3,4,7: clean m1 5/6, m2 5/6; poisoned 1,1,0,0,1,1 = 4/6
    assert out["cd"] == approx(5 / 6 - 4 / 6)


def test_filtering_metrics():
    removed = np.array([1, 0, 0, 1, 0, 0, 1, 1, 0], bool)  # 6 clean then 3 poisons
    train_groups = np.array([0, 1, 1, 1, 2, 1])
    out = filtering_metrics(removed, n_train=6, train_groups=train_groups, target=1)
    assert out == {"poisons_removed": 2, "poison_recall": approx(2 / 3), "clean_removed": 2,
                   "clean_s_removed": 1}


def test_filtering_metrics_without_poisons():
    out = filtering_metrics(np.array([0, 1, 1], bool), 3, np.array([1, 1, 0]), target=1)
    assert out["poisons_removed"] == 0
    assert math.isnan(out["poison_recall"])
    assert out["clean_removed"] == 2 and out["clean_s_removed"] == 1
