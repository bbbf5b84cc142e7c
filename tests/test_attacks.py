"""Label flipping (PROTOCOL.md section 4)."""
from __future__ import annotations

import numpy as np
import pytest

import attacks
from attacks import ATTACKS, AttackInput, poison_count
from attacks.label_flip import LabelFlip


def distinct_rows_input(n=60, d=4, n_classes=2, seed=0, target_every=3):
    """X_aux rows are all distinct (row i starts with i), so each poison's source row is known;
    every ``target_every``-th row is in the target."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.arange(n), rng.normal(size=(n, d - 1))]).astype(np.float32)
    y = rng.integers(0, n_classes, n).astype(np.int64)
    target = np.arange(n) % target_every == 0
    return AttackInput(X_aux=X, y_aux=y, target=target, n_classes=n_classes)


def source_rows(data, X_p):
    """Index of the D_aux row each poison copies (asserting it is an exact copy)."""
    src = X_p[:, 0].astype(np.int64)
    np.testing.assert_array_equal(X_p, data.X_aux[src])
    return src


@pytest.mark.parametrize("alpha, size, expected", [
    (0.5, 11, 5), (1, 11, 11), (2, 11, 22), (0.5, 37, 18), (1, 37, 37), (2, 37, 74),
    (0.5, 1, 0), (2, 0, 0)])
def test_poison_count(alpha, size, expected):
    assert poison_count(alpha, size) == expected
    assert poison_count(alpha, size) == int(alpha * size)


@pytest.mark.parametrize("alpha", [0, -1])
def test_poison_count_rejects_non_positive_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        poison_count(alpha, 10)


@pytest.mark.parametrize("alpha", [0.5, 1, 2])
@pytest.mark.parametrize("rule", ["opposite", "least-frequent"])
def test_poisons_are_copies_of_target_rows(alpha, rule):
    data = distinct_rows_input()
    m = poison_count(alpha, int(data.target.sum()))
    X_p, y_p = LabelFlip(rule).generate(data, m, np.random.default_rng(1))
    assert X_p.shape == (m, data.X_aux.shape[1]) and y_p.shape == (m,)
    assert X_p.dtype == np.float32 and y_p.dtype == np.int64
    src = source_rows(data, X_p)
    assert data.target[src].all(), "a poison copies a row outside the target"


def test_poisons_are_drawn_with_replacement():
    data = distinct_rows_input(n=30)
    m = poison_count(2, int(data.target.sum()))
    X_p, _ = LabelFlip().generate(data, m, np.random.default_rng(0))
    src = source_rows(data, X_p)
    assert len(np.unique(src)) < m  # more poisons than target rows: some row repeats
    # and, over a large draw, every target row gets used
    X_big, _ = LabelFlip().generate(data, 2000, np.random.default_rng(0))
    assert set(source_rows(data, X_big)) == set(np.flatnonzero(data.target))


def test_opposite_flips_each_poison_own_label():
    data = distinct_rows_input(n=90)
    assert len(np.unique(data.y_aux[data.target])) == 2  # both labels present in the target
    X_p, y_p = LabelFlip("opposite").generate(data, 200, np.random.default_rng(3))
    src = source_rows(data, X_p)
    np.testing.assert_array_equal(y_p, 1 - data.y_aux[src])
    assert len(np.unique(y_p)) == 2


def brute_least_frequent(data):
    counts = [0] * data.n_classes
    for yi, t in zip(data.y_aux, data.target):
        if t:
            counts[yi] += 1
    best = 0
    for c in range(data.n_classes):
        if counts[c] < counts[best]:
            best = c
    return best


def test_least_frequent_uses_only_target_counts():
    # Target rows: class 0 x3, class 1 x1, class 2 x2; outside the target class 1 dominates and
    # class 2 is rarest, so counting all of D_aux would pick class 2.
    y = np.array([0, 0, 0, 1, 2, 2] + [1] * 10 + [0, 0])
    target = np.array([True] * 6 + [False] * 12)
    X = np.arange(len(y), dtype=np.float32)[:, None]
    data = AttackInput(X, y, target, n_classes=3)
    assert brute_least_frequent(data) == 1
    X_p, y_p = LabelFlip("least-frequent").generate(data, 9, np.random.default_rng(0))
    assert (y_p == 1).all()
    assert y_p.dtype == np.int64
    assert target[X_p[:, 0].astype(int)].all()


def test_least_frequent_ties_go_to_lowest_class():
    y = np.array([3, 3, 1, 1, 2, 2, 2, 0, 0, 0])
    data = AttackInput(np.arange(10, dtype=np.float32)[:, None], y, np.ones(10, bool), n_classes=4)
    assert brute_least_frequent(data) == 1
    _, y_p = LabelFlip("least-frequent").generate(data, 5, np.random.default_rng(0))
    assert (y_p == 1).all()


@pytest.mark.parametrize("seed", range(5))
def test_least_frequent_matches_brute_force_ten_classes(seed):
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.integers(0, 10, n)
    y[:10] = np.arange(10)  # every class present among the target rows
    target = np.zeros(n, bool)
    target[:10] = True
    target[10:] = rng.random(n - 10) < 0.3
    data = AttackInput(rng.normal(size=(n, 3)).astype(np.float32), y, target, n_classes=10)
    _, y_p = LabelFlip("least-frequent").generate(data, 50, np.random.default_rng(seed))
    assert (y_p == brute_least_frequent(data)).all()


def test_opposite_needs_binary_task():
    data = distinct_rows_input(n_classes=10)
    with pytest.raises(ValueError, match="binary"):
        LabelFlip("opposite").generate(data, 5, np.random.default_rng(0))


def test_bad_rule_rejected():
    with pytest.raises(ValueError, match="rule"):
        LabelFlip("random")
    with pytest.raises(ValueError, match="rule"):
        attacks.make("label-flip", rule="most-frequent")


def test_empty_target_rejected():
    data = distinct_rows_input()
    empty = AttackInput(data.X_aux, data.y_aux, np.zeros_like(data.target), 2)
    with pytest.raises(ValueError, match="no D_aux points"):
        LabelFlip().generate(empty, 3, np.random.default_rng(0))


@pytest.mark.parametrize("rule", ["opposite", "least-frequent"])
def test_same_seed_same_poisons(rule):
    data = distinct_rows_input(n=120)
    attack = attacks.make("label-flip", rule=rule)
    a = attack.generate(data, 40, np.random.default_rng(11))
    b = attack.generate(data, 40, np.random.default_rng(11))
    c = attack.generate(data, 40, np.random.default_rng(12))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_registry_and_default_rule():
    assert ATTACKS.get("label-flip") is LabelFlip
    assert LabelFlip().rule == "opposite"
