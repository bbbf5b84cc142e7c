"""Subpopulation finders and the target rule (PROTOCOL.md section 3)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans

from bench.datasets import Part, load
from bench.subpops import FINDERS, ClusterMatch, FeatureMatch, Subpopulations, TargetRule

ADULT_COLUMNS = ("education-num", "race", "sex")


def reference_feature_match(splits, columns):
    """Independent FeatureMatch: groupby(...).ngroup() numbers the D_aux combinations in sorted
    order; D and D_t rows look their combination up, -1 when D_aux lacks it."""
    cols = list(columns)
    aux = splits.aux.annotations[cols]
    aux_ids = aux.groupby(cols, sort=True).ngroup().to_numpy()
    table = {}
    for key, gid in zip(map(tuple, aux.to_numpy()), aux_ids):
        assert table.setdefault(key, gid) == gid
    combos = sorted(table, key=table.get)

    def lookup(frame):
        return np.array([table.get(tuple(row), -1) for row in frame[cols].to_numpy()], dtype=np.int64)

    return aux_ids, lookup(splits.train.annotations), lookup(splits.test.annotations), combos


def check_feature_match(splits, columns):
    sub = FeatureMatch(columns=tuple(columns)).find(splits)
    aux, train, test, combos = reference_feature_match(splits, columns)
    assert sub.aux.dtype == np.int64 and sub.train.dtype == np.int64 and sub.test.dtype == np.int64
    np.testing.assert_array_equal(sub.aux, aux)
    np.testing.assert_array_equal(sub.train, train)
    np.testing.assert_array_equal(sub.test, test)
    assert len(sub.names) == len(combos)
    for name, combo in zip(sub.names, combos):
        assert name == ", ".join(f"{c}={v}" for c, v in zip(columns, combo))
    assert (sub.aux >= 0).all(), "every D_aux row defines its own subpopulation"
    return sub


@pytest.fixture(scope="module")
def adult(data_root):
    return load("adult", seed=0, data_root=data_root)


@pytest.fixture(scope="module")
def adult_featurematch(adult):
    return check_feature_match(adult, ADULT_COLUMNS)


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic", seed=0)


# --------------------------------------------------------------------------------------------
# FeatureMatch
# --------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_featurematch_adult_matches_groupby(adult_featurematch):
    sub = adult_featurematch
    assert len(sub.names) > 50
    # Some D / D_t combinations are absent from D_aux and must be unassigned (-1), not dropped.
    assert (sub.train == -1).any() or (sub.test == -1).any()


@pytest.mark.realdata
def test_featurematch_adult_unassigned_rows_are_absent_combinations(adult, adult_featurematch):
    cols = list(ADULT_COLUMNS)
    aux_keys = set(map(tuple, adult.aux.annotations[cols].to_numpy()))
    for name in ("train", "test"):
        ids = getattr(adult_featurematch, name)
        keys = list(map(tuple, getattr(adult, name).annotations[cols].to_numpy()))
        assert all((ids[i] == -1) == (k not in aux_keys) for i, k in enumerate(keys))


def test_featurematch_synthetic_matches_groupby(synthetic):
    sub = check_feature_match(synthetic, ("group",))
    assert len(sub.names) == synthetic.aux.annotations["group"].nunique()


def test_featurematch_multi_column_with_absent_combinations(synthetic):
    """Two columns, D_aux missing some combinations: those rows of D and D_t get -1."""
    def with_extra(part, drop_groups=()):
        ann = part.annotations.assign(parity=np.where(part.X[:, 0] > 0, "pos", "neg"))
        keep = ~ann["group"].isin(drop_groups).to_numpy()
        return Part(part.X[keep], part.y[keep], ann[keep].reset_index(drop=True))

    splits = dataclasses.replace(synthetic, aux=with_extra(synthetic.aux, drop_groups=(0, 5)),
                                 train=with_extra(synthetic.train), test=with_extra(synthetic.test))
    sub = check_feature_match(splits, ("group", "parity"))
    for name in ("train", "test"):
        groups = getattr(splits, name).annotations["group"].to_numpy()
        ids = getattr(sub, name)
        assert (ids[np.isin(groups, (0, 5))] == -1).all()
        assert np.isin(groups, (0, 5)).any()


def test_featurematch_rejects_missing_annotations(synthetic):
    with pytest.raises(ValueError, match="not annotations"):
        FeatureMatch(columns=("race",)).find(synthetic)
    digits = load("digits", seed=0)
    with pytest.raises(ValueError, match="needs annotation columns"):
        FeatureMatch(columns=("group",)).find(digits)


def test_subpopulations_sizes_ignores_unassigned():
    sub = Subpopulations(aux=np.array([0, 0, 2]), train=np.array([-1, 1, -1]),
                         test=np.array([2, 2, -1]), names=("a", "b", "c", "d"))
    np.testing.assert_array_equal(sub.sizes("aux"), [2, 0, 1, 0])
    np.testing.assert_array_equal(sub.sizes("train"), [0, 1, 0, 0])
    np.testing.assert_array_equal(sub.sizes("test"), [0, 0, 2, 0])


# --------------------------------------------------------------------------------------------
# ClusterMatch
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, k, n_init, seed", [("synthetic", 7, 3, 5), ("digits", 20, 2, 0)])
def test_clustermatch_matches_kmeans(dataset, k, n_init, seed):
    splits = load(dataset, seed=0)
    sub = ClusterMatch(k=k, n_init=n_init).find(splits, seed=seed)
    km = KMeans(k, n_init=n_init, random_state=seed).fit(splits.aux.X)
    np.testing.assert_array_equal(sub.aux, km.labels_)
    np.testing.assert_array_equal(sub.train, km.predict(splits.train.X))
    np.testing.assert_array_equal(sub.test, km.predict(splits.test.X))
    assert len(sub.names) == k
    assert sub.aux.dtype == np.int64
    assert sub.sizes("aux").sum() == len(splits.aux)  # every point is assigned


def test_clustermatch_with_pca_matches_sklearn(synthetic):
    from sklearn.decomposition import PCA

    sub = ClusterMatch(k=6, n_init=2, pca_components=3).find(synthetic, seed=1)
    pca = PCA(3, random_state=1).fit(synthetic.aux.X)
    km = KMeans(6, n_init=2, random_state=1).fit(pca.transform(synthetic.aux.X))
    np.testing.assert_array_equal(sub.aux, km.labels_)
    np.testing.assert_array_equal(sub.test, km.predict(pca.transform(synthetic.test.X)))


def test_clustermatch_rejects_bad_k(synthetic):
    for k in (1, len(synthetic.aux) + 1):
        with pytest.raises(ValueError, match="k must be"):
            ClusterMatch(k=k).find(synthetic)


def test_finder_registry():
    assert FINDERS.get("featurematch") is FeatureMatch
    assert FINDERS.get("clustermatch") is ClusterMatch


# --------------------------------------------------------------------------------------------
# TargetRule
# --------------------------------------------------------------------------------------------

def brute_force_targets(sub, min_aux, max_aux, min_test=1):
    chosen = []
    for s in range(len(sub.names)):
        n_aux = sum(1 for g in sub.aux if g == s)
        n_test = sum(1 for g in sub.test if g == s)
        if n_aux > min_aux and (max_aux is None or n_aux < max_aux) and n_test >= min_test:
            chosen.append(s)
    return chosen


def test_targetrule_bounds_are_strict():
    # subpop: 0 (aux 10) 1 (aux 11) 2 (aux 99) 3 (aux 100) 4 (aux 50, no test point) 5 (aux 0)
    aux = np.repeat([0, 1, 2, 3, 4], [10, 11, 99, 100, 50])
    test = np.array([0, 1, 2, 3, 5, -1])
    sub = Subpopulations(aux=aux, train=np.array([], dtype=np.int64), test=test,
                         names=tuple("abcdef"))
    assert TargetRule(min_aux=10, max_aux=100).select(sub).tolist() == [1, 2]
    assert TargetRule(min_aux=10, max_aux=None).select(sub).tolist() == [1, 2, 3]
    assert TargetRule(min_aux=10, max_aux=100, min_test=0).select(sub).tolist() == [1, 2, 4]
    assert TargetRule().select(sub).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(5))
def test_targetrule_matches_brute_force_on_random_assignments(seed):
    rng = np.random.default_rng(seed)
    n_sub = 40
    sizes = rng.integers(0, 150, n_sub)
    aux = rng.permutation(np.repeat(np.arange(n_sub), sizes))
    test = rng.integers(-1, n_sub, 300)
    sub = Subpopulations(aux=aux, train=np.array([], dtype=np.int64), test=test,
                         names=tuple(map(str, range(n_sub))))
    expected = brute_force_targets(sub, 10, 100)
    assert TargetRule(min_aux=10, max_aux=100).select(sub).tolist() == expected
    assert 0 < len(expected) < n_sub


def test_targetrule_on_synthetic_featurematch(synthetic):
    sub = FeatureMatch(columns=("group",)).find(synthetic)
    sizes = sub.sizes("aux")
    lo, hi = int(np.sort(sizes)[2]), int(np.sort(sizes)[-3])  # some groups on either side
    got = TargetRule(min_aux=lo, max_aux=hi).select(sub).tolist()
    assert got == brute_force_targets(sub, lo, hi)
    assert 0 < len(got) < len(sub.names)


@pytest.mark.realdata
def test_targetrule_adult_featurematch(adult_featurematch):
    sub = adult_featurematch
    targets = TargetRule(min_aux=10, max_aux=100, min_test=1).select(sub)
    assert len(targets) > 0
    assert targets.tolist() == brute_force_targets(sub, 10, 100)
    aux_sizes, test_sizes = sub.sizes("aux"), sub.sizes("test")
    assert ((aux_sizes[targets] > 10) & (aux_sizes[targets] < 100)).all()
    assert (test_sizes[targets] >= 1).all()


def test_sampled_targets_draw_a_seeded_subset_of_the_admitted():
    from bench.subpops import SampledTargets

    rng = np.random.default_rng(0)
    aux, test = rng.integers(0, 40, 2000), rng.integers(0, 40, 500)
    sub = Subpopulations(aux=aux, train=np.array([], dtype=np.int64), test=test,
                         names=tuple(f"c{i}" for i in range(40)))
    admitted = TargetRule(min_aux=45).select(sub)
    picked = SampledTargets(min_aux=45, count=10).select(sub)
    assert len(picked) == 10 and set(picked) <= set(admitted) and list(picked) == sorted(picked)
    np.testing.assert_array_equal(picked, SampledTargets(min_aux=45, count=10).select(sub))
    assert not np.array_equal(picked, SampledTargets(min_aux=45, count=10, seed=1).select(sub))
    np.testing.assert_array_equal(SampledTargets(min_aux=45, count=1000).select(sub), admitted)
    with pytest.raises(ValueError, match="count must be >= 1"):
        SampledTargets(count=0).select(sub)


def test_variant_joins_the_dataset_in_the_id_and_leaves_other_hashes_alone():
    from bench.scenarios import SCENARIOS, ScenarioSpec

    spec = SCENARIOS.get("cifar10+gpu-sample/conv/clustermatch@pool1/label-flip")
    assert spec.dataset == "cifar10" and spec.variant == "gpu-sample"
    plain = ScenarioSpec("adult", "mlp", "featurematch", "label-flip")
    assert "variant" not in plain.to_dict() and plain.id == "adult/mlp/featurematch/label-flip"
    assert dataclasses.replace(plain, variant="x").hash != plain.hash
