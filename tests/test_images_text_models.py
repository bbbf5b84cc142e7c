"""The representation cache, the last-layer recipes (minilm-ll, cifar10-conv-ll), ClusterMatch on
representations, the IMDB confidence-band target rule and the offline suites."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import pytest

import defenses
from bench import executors, models, representations
from bench.datasets import DATASETS, FeatureDomain, Part, Splits, imdb, load
from bench.models import TrainJob
from bench.models.encoders import MiniLM, PretrainedConv
from bench.models.pretrain import Backbone
from bench.representations import RepresentationCache
from bench.scenarios import SCENARIOS, SUITES, ScenarioSpec, freeze
from bench.subpops import ClusterMatch, ConfidenceBands, Subpopulations, TargetRule


@pytest.fixture
def rep_cache(tmp_path, monkeypatch):
    """Representation caches in a fresh folder (the decoded-data cache stays where it is)."""
    monkeypatch.setattr(representations, "user_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(representations, "_CACHES", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache" / "representations"


@dataclasses.dataclass(frozen=True)
class CountingEncoder:
    key: str = "counting/v1"
    dim: int = 3
    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def encode(self, X):
        self.calls.append(len(X))
        return np.stack([X.sum(1), X.max(1), np.full(len(X), len(self.calls))], 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Representation cache
# --------------------------------------------------------------------------------------------

def test_cache_encodes_each_distinct_row_once_and_persists(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    pool = np.vstack([X, X[[1, 1, 3]]])  # D plus label-flip copies of its rows
    enc = CountingEncoder()
    cache = RepresentationCache(enc, root=tmp_path, shard_rows=2)
    first = cache.features(pool)
    assert first.shape == (7, 3) and enc.calls == [2, 2] and cache.encoded_rows == 4
    np.testing.assert_array_equal(first[4], first[1])
    assert len(list(cache.folder.glob("shard-*.npz"))) == 2
    # A new process (a new cache object) reads the shards: the encoder is not called.
    again = RepresentationCache(enc, root=tmp_path).features(pool[::-1].copy())
    assert enc.calls == [2, 2]
    np.testing.assert_array_equal(again, first[::-1])
    # A row never seen (an optimised poison) is encoded, and only it.
    cache.features(np.vstack([X, X[:1] + 0.5]))
    assert enc.calls == [2, 2, 1]


def test_cache_remembers_an_array_without_rehashing(tmp_path, monkeypatch):
    X = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    cache = RepresentationCache(CountingEncoder(), root=tmp_path)
    first = cache.features(X)
    monkeypatch.setattr(representations, "row_keys", lambda X: pytest.fail("rehashed"))
    again = cache.features(X)
    np.testing.assert_array_equal(again, first)
    again[:] = 0  # a caller's copy: changing it leaves the cache alone
    np.testing.assert_array_equal(cache.features(X), first)


def test_cache_rejects_an_encoder_of_the_wrong_width(tmp_path):
    enc = CountingEncoder(dim=5)
    with pytest.raises(ValueError, match=r"returned \(2, 3\), expected \(2, 5\)"):
        RepresentationCache(enc, root=tmp_path).features(np.ones((2, 2), np.float32) * [[1], [2]])


# --------------------------------------------------------------------------------------------
# minilm-ll
# --------------------------------------------------------------------------------------------

def _reviews(n: int) -> tuple[np.ndarray, np.ndarray]:
    words = ["wonderful", "great", "awful", "boring"]
    texts = [f"the film was {words[i % 4]} and {words[(i * 3) % 4]}" for i in range(n)]
    return imdb.tokenize(texts).astype(np.float32), np.array([(i % 4) < 2 for i in range(n)], np.int64)


def test_minilm_ll_trains_offline_and_embeds_384(rep_cache):
    X, y = _reviews(12)
    recipe = models.make("minilm-ll", max_tokens=16, epochs=2, batch_size=4)
    fitted = recipe.fit_many(X, y, 2, [TrainJob(np.ones(12), 0), TrainJob(np.r_[np.ones(6), np.zeros(6)], 1)])
    assert len(fitted) == 2 and fitted[0].head.n_epochs == 2
    emb = fitted[0].embed(X)
    assert emb.shape == (12, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert fitted[1].predict_proba(X).shape == (12, 2)


@pytest.mark.realdata
def test_minilm_ll_on_real_reviews(data_root, rep_cache):
    arrays = imdb.read(data_root / "imdb")
    rows = np.r_[0:6, 12500:12506]  # six negative and six positive training reviews
    X, y = arrays["tokens"][rows].astype(np.float32), arrays["label"][rows]
    fitted = models.make("minilm-ll", max_tokens=32, epochs=1).fit(X, y, 2)
    assert fitted.embed(X).shape == (12, 384)
    assert set(fitted.predict(X)) <= {0, 1}


def test_truncated_reviews_end_with_sep():
    from bench.models.encoders import truncate_tokens

    X, _ = _reviews(2)
    ids = truncate_tokens(X, 4)
    assert ids.shape == (2, 4) and (ids[:, 0] == imdb.CLS_ID).all() and (ids[:, -1] == imdb.SEP_ID).all()
    with pytest.raises(ValueError, match="max_tokens"):
        MiniLM(max_tokens=1)


def test_linear_probe_l2_maps_to_the_mlp_penalty():
    probe = models.make("minilm-ll", l2=0.01, batch_size=32)
    # Keras adds l2 * ||W||^2 to the batch mean loss; the MLP adds alpha / (2 B) ||W||^2.
    assert probe.alpha / (2 * 32) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="l2"):
        models.make("minilm-ll", l2=-1)


# --------------------------------------------------------------------------------------------
# cifar10-conv-ll (the benchmark's own pretrained backbone)
# --------------------------------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:UTKFace. skipped")
def test_cifar10_conv_ll_pretrains_records_command_and_embeds(data_root, rep_cache, tmp_path, monkeypatch,
                                                               capsys):
    from bench.models import pretrain

    monkeypatch.setenv("SUBPOP_DATA_ROOT", str(data_root))
    monkeypatch.setattr(pretrain, "user_cache_dir", lambda: tmp_path / "cache")
    recipe = models.make("cifar10-conv-ll", backbone_width=4, backbone_images=100, backbone_epochs=1,
                         epochs=2)
    faces = load("utkface", data_root=data_root)
    X, y = faces.train.X[:20], faces.train.y[:20]
    fitted = recipe.fit(X, y, 2)
    assert fitted.embed(X).shape == (20, 32)  # 8 * width
    meta = (recipe.encoder.backbone.folder / "meta.json").read_text()
    assert "subpop-bench data backbone --width 4 --images 100 --epochs 1" in meta
    assert "cifar10_test_accuracy" in meta
    # Pretraining takes minutes at the default size, so it shows a progress bar over the images.
    assert "pretraining cifar10-conv-w4-n100-e1-s0" in capsys.readouterr().err


def test_pretrained_conv_without_data_names_the_command(tmp_path, monkeypatch):
    from bench.datasets import DataError
    from bench.models import pretrain

    monkeypatch.setenv("SUBPOP_DATA_ROOT", str(tmp_path / "nothing"))
    monkeypatch.setattr(pretrain, "user_cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(DataError, match="subpop-bench data backbone --width 4"):
        PretrainedConv(Backbone(width=4, images=100, epochs=1)).key


# --------------------------------------------------------------------------------------------
# ClusterMatch on representations and the IMDB target rule
# --------------------------------------------------------------------------------------------

def test_clustermatch_defaults_unchanged_and_surrogate_layers():
    splits = load("synthetic", seed=0)
    plain = ClusterMatch(k=5).find(splits)
    assert plain.scores is None
    deep = ClusterMatch(k=5, surrogate="mlp", surrogate_params=(("hidden", (6,)), ("max_epochs", 30)),
                        layer="embed").find(splits)
    assert deep.scores.shape == (5,) and np.isfinite(deep.scores).all()
    assert deep.aux.max() == 4 and len(deep.test) == len(splits.test)
    with pytest.raises(ValueError, match="needs a surrogate"):
        ClusterMatch(k=5, layer="embed").find(splits)
    with pytest.raises(ValueError, match="'pool9' is not a layer"):
        ClusterMatch(k=5, surrogate="logreg", layer="pool9").find(splits)


def test_confidence_bands_pick_lowest_median_highest():
    n = 40
    ids = np.arange(n)
    sub = Subpopulations(ids, ids, ids, tuple(map(str, ids)), scores=np.arange(n, dtype=float)[::-1])
    chosen = ConfidenceBands(per_band=3).select(sub)
    scores = sub.scores[chosen]
    assert sorted(scores) == [0, 1, 2, 19, 20, 21, 37, 38, 39]
    few = Subpopulations(ids[:5], ids[:5], ids[:5], tuple("abcde"), scores=np.arange(5.0))
    assert ConfidenceBands(per_band=3).select(few).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="needs subpopulation scores"):
        ConfidenceBands().select(dataclasses.replace(few, scores=None))


def test_existing_spec_hashes_unchanged():
    """The new fields (finder options, target-rule subclass) leave earlier scenario hashes alone."""
    assert SCENARIOS.get("adult/mlp/featurematch/label-flip").hash == "a847c743c7b0553b"
    assert SCENARIOS.get("adult/mlp/clustermatch/label-flip").hash == "2ef24b92ebf39a34"
    assert SCENARIOS.get("digits/mlp/clustermatch/label-flip").hash == "e776954c22d3ad91"
    assert dataclasses.asdict(TargetRule()) == {"min_aux": 0, "max_aux": None, "min_test": 1}


# --------------------------------------------------------------------------------------------
# Offline suites
# --------------------------------------------------------------------------------------------

def test_offline_suites_are_registered():
    imdb_spec = SCENARIOS.get(SUITES.get("offline-imdb")[0])
    assert (imdb_spec.dataset, imdb_spec.model, imdb_spec.finder) == ("imdb", "minilm-ll", "clustermatch")
    assert isinstance(imdb_spec.target_rule, ConfidenceBands)
    utk = [SCENARIOS.get(i) for i in SUITES.get("offline-utkface")]
    assert {s.finder for s in utk} == {"featurematch", "clustermatch"}
    assert all(s.model == "cifar10-conv-ll" for s in utk)


@DATASETS.register("tiny-reviews")
def _tiny_reviews(seed: int = 0, data_root=None) -> Splits:
    X, y = _reviews(48)
    parts = [Part(X[i::3], y[i::3]) for i in range(3)]
    return Splits("tiny-reviews", *parts, n_classes=2,
                  domain=FeatureDomain(np.zeros(X.shape[1]), np.full(X.shape[1], imdb.VOCAB_SIZE - 1.0)))


def test_second_run_reuses_the_representation_cache(rep_cache, monkeypatch):
    from bench.runner import run

    params = freeze({"max_tokens": 12, "epochs": 2})
    spec = ScenarioSpec("tiny-reviews", "minilm-ll", "clustermatch", "label-flip", alphas=(1.0,),
                        trials=1, clean_models=1, model_params=params,
                        finder_params=freeze({"k": 4, "pca_components": 3, "surrogate": "minilm-ll",
                                              "surrogate_params": params, "layer": "embed"}),
                        attack_params=freeze({"rule": "least-frequent"}),
                        target_rule=ConfidenceBands(per_band=1))
    monkeypatch.setattr(executors, "_SCENARIOS", {})
    first = run([spec], [defenses.make("none")], ("blind",), progress=False)
    assert first.ran >= 1 and first.failed == 0
    # A second run in a fresh process: nothing in memory, the encoder must not run.
    monkeypatch.setattr(executors, "_SCENARIOS", {})
    monkeypatch.setattr(representations, "_CACHES", {})
    monkeypatch.setattr(MiniLM, "encode", lambda self, X: pytest.fail("the encoder ran again"))
    second = run([spec], [defenses.make("none")], ("blind",), progress=False)
    assert second.ran == first.ran and second.failed == 0


# --------------------------------------------------------------------------------------------
# conv (the paper's CIFAR-10 network)
# --------------------------------------------------------------------------------------------

def test_conv_trains_and_exposes_its_layers():
    rng = np.random.default_rng(0)
    X = rng.random((24, 3 * 32 * 32), dtype=np.float32)
    y = np.arange(24) % 3
    recipe = models.make("conv", width=4, epochs=1, batch_size=8)
    fitted = recipe.fit_many(X, y, 3, [TrainJob(np.ones(24), 0), TrainJob(np.r_[np.ones(12), np.zeros(12)], 1)])
    assert fitted[0].predict_proba(X).shape == (24, 3)
    assert fitted[0].embed(X).shape == (24, 32)  # 8 * width
    shapes = [fitted[1].layer_output(X, layer).shape for layer in fitted[1].layers]
    assert shapes == [(24, 8 * 16 * 16), (24, 16 * 8 * 8), (24, 32 * 4 * 4)]
    # Inputs of another resolution (64x64 faces) are resized to the recipe's input size.
    assert fitted[0].predict(rng.random((2, 3 * 64 * 64), dtype=np.float32)).shape == (2,)
    with pytest.raises(ValueError, match="width"):
        models.make("conv", width=0)


@pytest.mark.realdata
def test_conv_few_steps_on_real_cifar(data_root):
    s = load("cifar10", data_root=data_root)
    fitted = models.make("conv", width=4, epochs=1).fit(s.train.X[:64], s.train.y[:64], 10)
    assert fitted.embed(s.test.X[:8]).shape == (8, 32)
    sub = ClusterMatch(k=3, surrogate="conv", surrogate_params=(("width", 4), ("epochs", 1)),
                       layer="pool2")
    tiny = Splits("cifar10", *(Part(p.X[:60], p.y[:60]) for p in (s.train, s.aux, s.test)),
                  n_classes=10, domain=s.domain)
    assert sub.find(tiny).aux.shape == (60,)


# --------------------------------------------------------------------------------------------
# vgg16-* and bert-* (random weights stand in for the downloaded ones)
# --------------------------------------------------------------------------------------------

def test_vgg16_recipes_with_random_weights(rep_cache):
    rng = np.random.default_rng(0)
    X = rng.random((4, 3 * 32 * 32), dtype=np.float32)
    y = np.arange(4) % 2
    ll = models.make("vgg16-ll", weights="random", input_size=32, epochs=1).fit(X, y, 2)
    assert ll.embed(X).shape == (4, 512)
    ft = models.make("vgg16-ft", weights="random", input_size=32, epochs=1, batch_size=2).fit(X, y, 2)
    assert ft.embed(X).shape == (4, 512) and ft.predict_proba(X).shape == (4, 2)


def test_bert_recipes_with_random_weights():
    X, y = _reviews(6)
    for name in ("bert-ll", "bert-ft"):
        fitted = models.make(name, weights="random", max_tokens=16, epochs=1, batch_size=3).fit(X, y, 2)
        assert fitted.embed(X).shape == (6, 64)  # the random stand-in is 64 wide (bert-base: 768)
        assert fitted.predict(X).shape == (6,)


def test_bert_ll_trains_only_the_last_block_and_classifier():
    from bench.models.pretrained import BertNet

    net = BertNet(2, "random")
    trained = {id(p) for p in net.last_layer_parameters()}
    frozen = [n for n, p in net.named_parameters() if id(p) not in trained]
    assert frozen and all(n.startswith(("bert.embeddings", "bert.encoder.layer.0")) for n in frozen)


def test_absent_pretrained_weights_name_the_file(tmp_path, monkeypatch):
    from bench.models.pretrained import VGG16Features, WeightsError

    monkeypatch.setattr(torch_hub(), "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch_hub(), "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"hub/checkpoints/vgg16-397923af.pth.*Copy that file"):
        VGG16Features().key
    with pytest.raises(WeightsError, match="weights not found locally"):
        models.make("bert-ll", weights=str(tmp_path / "no-bert")).fit(*_reviews(2), 2)


def torch_hub():
    import torch.hub

    return torch.hub


def test_device_resident_training_equals_batches_prepared_from_numpy():
    """``resident`` only changes where batches are cut from; same seed, same network."""
    from bench.models.conv import ConvNet, image_inputs, train_network

    rng = np.random.default_rng(0)
    X, y = rng.uniform(0, 1, (40, 3 * 8 * 8)).astype(np.float32), rng.integers(0, 3, 40)
    nets = []
    for resident in (False, True):
        torch.manual_seed(0)
        net = ConvNet(2, 3)
        train_network(net, X, y, np.ones(40), 1, 2, 8, torch.optim.Adam(net.parameters(), lr=1e-2),
                      image_inputs(8, True, 1), resident=resident)
        nets.append(net)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b)
