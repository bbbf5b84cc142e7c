"""Dataset loaders and the three-way split (PROTOCOL.md section 1)."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from bench.datasets import DATASETS, DataError, load, three_way_split
from bench.datasets import adult as adult_module

ADULT_PART = 7841
ADULT_TEST = 7692
ADULT_NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
ADULT_CATEGORICAL = ("workclass", "marital-status", "occupation", "relationship", "race", "sex")
PARTS = ("train", "aux", "test")


# --------------------------------------------------------------------------------------------
# three_way_split
# --------------------------------------------------------------------------------------------

def _check_disjoint_in_range(parts, n):
    for idx in parts:
        assert idx.ndim == 1
        assert np.issubdtype(idx.dtype, np.integer)
        assert len(np.unique(idx)) == len(idx), "an index repeats inside one part"
        if len(idx):
            assert idx.min() >= 0 and idx.max() < n
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union), "the parts overlap"


@st.composite
def split_problems(draw, stratified: bool):
    n = draw(st.integers(1 if stratified else 0, 300))
    a = draw(st.integers(0, n))
    b = draw(st.integers(0, n - a))
    c = draw(st.integers(0, n - a - b))
    sizes = tuple(draw(st.permutations([a, b, c])))
    labels = None
    if stratified:
        n_classes = draw(st.integers(1, 4))
        labels = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)),
                          dtype=np.int64)
    seed = draw(st.integers(0, 2**32 - 1))
    return n, sizes, labels, seed


@settings(max_examples=150, deadline=None)
@given(split_problems(stratified=False))
def test_three_way_split_unstratified_exact_disjoint(problem):
    n, sizes, _, seed = problem
    parts = three_way_split(n, sizes, seed)
    assert tuple(len(p) for p in parts) == sizes
    _check_disjoint_in_range(parts, n)
    # Deterministic in the seed.
    again = three_way_split(n, sizes, seed)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split_problems(stratified=True))
def test_three_way_split_stratified_properties(problem):
    """Disjoint parts, indices in range, and every class count within 2 of size * share (each
    class is evenly spread over the order that the parts cut)."""
    n, sizes, labels, seed = problem
    parts = three_way_split(n, sizes, seed, stratify=labels)
    _check_disjoint_in_range(parts, n)
    classes, counts = np.unique(labels, return_counts=True)
    for idx, size in zip(parts, sizes):
        for k, c in zip(classes, counts):
            assert abs(np.sum(labels[idx] == k) - size * c / n) < 2


@settings(max_examples=200, deadline=None)
@example(problem=(3, (1, 1, 1), np.array([0, 0, 1]), 0))
@example(problem=(6, (3, 3, 0), np.array([0, 0, 0, 1, 1, 1]), 0))
@given(split_problems(stratified=True))
def test_three_way_split_stratified_exact_sizes(problem):
    """The documented contract: 'index arrays of the given sizes' whenever sum(sizes) <= n."""
    n, sizes, labels, seed = problem
    parts = three_way_split(n, sizes, seed, stratify=labels)
    assert tuple(len(p) for p in parts) == sizes


def test_three_way_split_stratified_empty():
    parts = three_way_split(0, (0, 0, 0), 0, stratify=np.array([], dtype=np.int64))
    assert [len(p) for p in parts] == [0, 0, 0]


def test_three_way_split_rejects_oversized_request():
    with pytest.raises(ValueError, match="only 5 available"):
        three_way_split(5, (2, 2, 2), seed=0)


def test_three_way_split_stratified_adult_shape_is_disjoint():
    """The split the Adult loader makes: balanced pool of 15,682, two halves."""
    labels = np.repeat([0, 1], ADULT_PART)
    tr, au, te = three_way_split(len(labels), (ADULT_PART, ADULT_PART, 0), 0, stratify=labels)
    _check_disjoint_in_range((tr, au, te), len(labels))
    assert len(tr) == ADULT_PART and len(te) == 0


def test_three_way_split_stratified_adult_shape_sizes():
    labels = np.repeat([0, 1], ADULT_PART)
    tr, au, _ = three_way_split(len(labels), (ADULT_PART, ADULT_PART, 0), 0, stratify=labels)
    assert (len(tr), len(au)) == (ADULT_PART, ADULT_PART)


# --------------------------------------------------------------------------------------------
# UCI Adult (real data)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adult(data_root):
    return load("adult", seed=0, data_root=data_root)


@pytest.fixture(scope="module")
def adult_raw(data_root):
    """The official files, parsed (labels normalised), for content checks."""
    folder = data_root / "adult"
    return adult_module.read_file(folder / "adult.data"), adult_module.read_file(folder / "adult.test")


def _row_counter(annotations: pd.DataFrame, y: np.ndarray) -> Counter:
    cols = sorted(annotations.columns)
    frame = annotations[cols].astype(str).assign(_y=y.astype(str))
    return Counter(map(tuple, frame.to_numpy()))


def _file_counter(raw: pd.DataFrame, columns) -> Counter:
    cols = sorted(columns)
    y = (raw["income"] == ">50K").to_numpy(np.int64)
    frame = raw[cols].astype(str).assign(_y=y.astype(str))
    return Counter(map(tuple, frame.to_numpy()))


@pytest.mark.realdata
def test_adult_train_and_test_sizes(adult):
    assert len(adult.train) == ADULT_PART
    assert len(adult.test) == ADULT_TEST
    assert adult.n_classes == 2


@pytest.mark.realdata
def test_adult_aux_size(adult):
    assert len(adult.aux) == ADULT_PART


@pytest.mark.realdata
def test_adult_test_is_exactly_balanced(adult):
    assert int(adult.test.y.sum()) == ADULT_TEST // 2
    assert adult.test.y.mean() == 0.5


@pytest.mark.realdata
def test_adult_pool_is_balanced_and_fully_used(adult):
    positives = int(adult.train.y.sum() + adult.aux.y.sum())
    negatives = int((1 - adult.train.y).sum() + (1 - adult.aux.y).sum())
    assert (positives, negatives) == (ADULT_PART, ADULT_PART)


@pytest.mark.realdata
def test_adult_parts_are_stratified(adult):
    for part in (adult.train, adult.aux):
        assert abs(part.y.mean() - 0.5) <= 1 / len(part)
    # Never more of a class than the balanced pool has.
    assert adult.train.y.sum() + adult.aux.y.sum() <= ADULT_PART
    assert (1 - adult.train.y).sum() + (1 - adult.aux.y).sum() <= ADULT_PART


@pytest.mark.realdata
def test_adult_parts_are_disjoint_samples_of_the_files(adult, adult_raw):
    """D ∪ D_aux, as a multiset of rows (annotations + label), fits inside adult.data, and D_t
    inside adult.test: a part drawn with replacement, or overlapping another, would need some
    row more often than the file holds it."""
    full, test = adult_raw
    cols = adult.train.annotations.columns
    pool = _row_counter(adult.train.annotations, adult.train.y) + \
        _row_counter(adult.aux.annotations, adult.aux.y)
    assert not pool - _file_counter(full, cols)
    assert not _row_counter(adult.test.annotations, adult.test.y) - _file_counter(test, cols)


@pytest.mark.realdata
def test_adult_parts_come_from_disjoint_split_indices(adult, adult_raw, data_root):
    """Rebuild the loader's pool and check each part is pool.iloc[indices] of disjoint indices."""
    full, _ = adult_raw
    rng = np.random.default_rng(0)
    pool = adult_module.balance(full, rng)
    y_pool = (pool["income"] == ">50K").to_numpy(np.int64)
    tr, au, te = three_way_split(len(pool), (ADULT_PART, ADULT_PART, 0), 0, stratify=y_pool)
    _check_disjoint_in_range((tr, au, te), len(pool))
    for idx, part in ((tr, adult.train), (au, adult.aux)):
        expected = pool.iloc[idx].drop(columns=["income", "fnlwgt"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(part.annotations, expected)
        assert np.array_equal(part.y, y_pool[idx])


@pytest.mark.realdata
def test_adult_features(adult):
    assert adult.n_features == 49
    assert len(adult.feature_names) == 49
    for name in PARTS:
        part = getattr(adult, name)
        assert part.X.shape == (len(part), 49)
        assert part.X.dtype == np.float32 and part.y.dtype == np.int64
        assert np.isfinite(part.X).all()
        assert set(np.unique(part.y)) == {0, 1}
    assert list(adult.feature_names[:5]) == list(ADULT_NUMERIC)


@pytest.mark.realdata
def test_adult_numeric_columns_standardised_on_the_pool(adult):
    pool_X = np.vstack([adult.train.X, adult.aux.X]).astype(np.float64)
    pool_raw = pd.concat([adult.train.annotations, adult.aux.annotations])
    for j, col in enumerate(ADULT_NUMERIC):
        assert adult.feature_names[j] == col
        assert abs(pool_X[:, j].mean()) < 5e-3
        assert abs(pool_X[:, j].std() - 1) < 5e-3
        # Every part (D_t included) uses the pool's statistics, not its own.
        mu, sd = pool_raw[col].mean(), pool_raw[col].std(ddof=0)
        for name in PARTS:
            part = getattr(adult, name)
            expected = (part.annotations[col].to_numpy(np.float64) - mu) / sd
            np.testing.assert_allclose(part.X[:, j], expected, atol=5e-3)
    # D_t is not re-standardised with its own statistics (its means would all be ~1e-8).
    assert np.abs(adult.test.X[:, :5].mean(axis=0)).max() > 1e-3


@pytest.mark.realdata
def test_adult_onehot_groups(adult):
    groups = adult.domain.onehot_groups
    assert len(groups) == len(ADULT_CATEGORICAL)
    flat = [i for g in groups for i in g]
    assert flat == list(range(len(ADULT_NUMERIC), 49)), "groups must tile the non-numeric columns"
    for col, group in zip(ADULT_CATEGORICAL, groups):
        assert all(adult.feature_names[i].startswith(col + "=") for i in group)
    for name in PARTS:
        part = getattr(adult, name)
        for col, group in zip(ADULT_CATEGORICAL, groups):
            block = part.X[:, list(group)]
            assert np.isin(block, (0.0, 1.0)).all()
            assert (block.sum(axis=1) == 1).all(), f"{name}: {col} is not exactly one-hot"
            hot = np.array(adult.feature_names)[np.array(group)[block.argmax(axis=1)]]
            assert (hot == (col + "=" + part.annotations[col].astype(str)).to_numpy()).all()


@pytest.mark.realdata
def test_adult_domain_bounds_hold_the_pool(adult):
    for part in (adult.train, adult.aux):
        assert (part.X >= adult.domain.lower).all() and (part.X <= adult.domain.upper).all()


@pytest.mark.realdata
def test_adult_annotations(adult):
    for name in PARTS:
        part = getattr(adult, name)
        cols = set(part.annotations.columns)
        assert {"education-num", "race", "sex", "age"} <= cols
        assert "income" not in cols
        assert len(part.annotations) == len(part)
        assert part.annotations.index.equals(pd.RangeIndex(len(part)))


@pytest.mark.realdata
def test_adult_seed_determinism(adult, data_root):
    same = load("adult", seed=0, data_root=data_root)
    for name in PARTS:
        a, b = getattr(adult, name), getattr(same, name)
        assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
        pd.testing.assert_frame_equal(a.annotations, b.annotations)
    other = load("adult", seed=1, data_root=data_root)
    assert other.train.X.shape == adult.train.X.shape
    assert not np.array_equal(other.train.X, adult.train.X)
    assert not np.array_equal(other.aux.X, adult.aux.X)


@pytest.fixture
def adult_copy(data_root, tmp_path):
    folder = tmp_path / "adult"
    folder.mkdir()
    for name in ("adult.data", "adult.test"):
        shutil.copyfile(data_root / "adult" / name, folder / name)
    return tmp_path


@pytest.mark.realdata
def test_adult_copy_loads(adult_copy, adult):
    """Control for the error tests below: the intact copy loads like the original."""
    copy = load("adult", seed=0, data_root=adult_copy)
    assert np.array_equal(copy.train.X, adult.train.X)


@pytest.mark.realdata
def test_adult_truncated_file_is_a_data_error(adult_copy):
    path = adult_copy / "adult" / "adult.data"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        load("adult", seed=0, data_root=adult_copy)
    assert "md5" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.realdata
def test_adult_missing_test_file_is_a_data_error(adult_copy):
    (adult_copy / "adult" / "adult.test").unlink()
    with pytest.raises(DataError) as err:
        load("adult", seed=0, data_root=adult_copy)
    assert "adult.test" in str(err.value)
    assert "subpop-bench data fetch adult" in str(err.value)


def test_adult_missing_folder_is_a_data_error(tmp_path):
    """No real data needed: an empty root names the missing file and the fetch command."""
    with pytest.raises(DataError, match="subpop-bench data fetch adult") as err:
        load("adult", seed=0, data_root=tmp_path)
    assert str(tmp_path / "adult" / "adult.data") in str(err.value)


# --------------------------------------------------------------------------------------------
# digits (bundled)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load("digits", seed=0)


def _rows(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rows (pixel values * 16 as ints, then the label), sorted lexicographically."""
    table = np.column_stack([np.rint(X * 16).astype(np.int64), y])
    return table[np.lexsort(table.T[::-1])]


def test_digits_parts(digits):
    assert digits.n_classes == 10
    assert digits.n_features == 64
    for name in PARTS:
        part = getattr(digits, name)
        assert part.X.shape == (599, 64)
        assert part.X.dtype == np.float32
        assert part.X.min() >= 0.0 and part.X.max() <= 1.0
        assert set(np.unique(part.y)) == set(range(10))
    assert max(getattr(digits, n).X.max() for n in PARTS) == 1.0  # pixels / 16, not / 255


def test_digits_parts_partition_the_dataset(digits):
    """3 x 599 = all 1,797 images: disjoint parts without replacement use each image once."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = np.vstack([getattr(digits, n).X for n in PARTS])
    y = np.concatenate([getattr(digits, n).y for n in PARTS])
    assert np.array_equal(_rows(X, y), _rows(bunch.data / 16.0, bunch.target))


def test_digits_seed(digits):
    same = load("digits", seed=0)
    other = load("digits", seed=1)
    assert all(np.array_equal(getattr(same, n).X, getattr(digits, n).X) for n in PARTS)
    assert not np.array_equal(other.train.X, digits.train.X)


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------

def test_synthetic_shapes_and_annotations():
    s = load("synthetic", seed=3)
    assert s.n_classes == 2 and s.n_features == 8
    assert len(s.feature_names) == 8
    for name in PARTS:
        part = getattr(s, name)
        assert part.X.shape == (600, 8) and part.y.shape == (600,)
        assert part.X.dtype == np.float32 and part.y.dtype == np.int64
        assert list(part.annotations.columns) == ["group"]
        assert part.annotations["group"].between(0, 11).all()
        assert set(np.unique(part.y)) <= {0, 1}
        assert (part.X >= s.domain.lower).all() and (part.X <= s.domain.upper).all()


def test_synthetic_parameters_and_determinism():
    loader = DATASETS.get("synthetic")
    s = loader(seed=1, n_per_part=50, n_groups=4, n_features=3)
    for name in PARTS:
        part = getattr(s, name)
        assert part.X.shape == (50, 3)
        assert part.annotations["group"].between(0, 3).all()
    again = loader(seed=1, n_per_part=50, n_groups=4, n_features=3)
    assert np.array_equal(again.aux.X, s.aux.X)
    assert not np.array_equal(loader(seed=2, n_per_part=50, n_groups=4, n_features=3).aux.X, s.aux.X)


def test_synthetic_groups_carry_their_label():
    """Planted groups: label = group % 2 except ~5% noise."""
    s = load("synthetic", seed=0)
    for name in PARTS:
        part = getattr(s, name)
        agree = (part.y == part.annotations["group"].to_numpy() % 2).mean()
        assert 0.85 < agree < 1.0


def test_dataset_registry_has_builtins():
    assert {"adult", "digits", "synthetic"} <= set(DATASETS.names())
