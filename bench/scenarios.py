"""Scenario specs: frozen, hashable descriptions of one attacked setting (PROTOCOL.md)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.registry import Registry
from bench.subpops import ConfidenceBands, SampledTargets, TargetRule
from bench.validation import is_integer, is_number

Params = tuple[tuple[str, Any], ...]


def freeze(params: dict | None) -> Params:
    """A dict of hyper-parameters as a sorted tuple of pairs (hashable, order-free)."""
    return tuple(sorted((params or {}).items()))


@dataclass(frozen=True)
class ScenarioSpec:
    """Dataset, victim recipe, subpopulation finder, attack, poison rates and trial count.

    ``clean_models`` recipe models trained on D give the clean reference accuracies.
    ``variant`` names a reduced or adapted copy of a registered spec (e.g. ``gpu-sample``); it
    joins the dataset in the id (``cifar10+gpu-sample/conv/...``) so both can be registered.
    """

    dataset: str
    model: str
    finder: str
    attack: str
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0)
    trials: int = 3
    clean_models: int = 3
    seed: int = 0
    model_params: Params = ()
    finder_params: Params = ()
    attack_params: Params = ()
    target_rule: TargetRule = field(default_factory=TargetRule)
    variant: str = ""

    def __post_init__(self):
        for name in ("dataset", "model", "finder", "attack"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"a scenario's {name} must be a registered name, got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.alphas, tuple) or not self.alphas or not all(
                is_number(a) and a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty tuple of positive numbers, got {self.alphas!r}")
        for name in ("trials", "clean_models"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    @property
    def id(self) -> str:
        data = f"{self.dataset}+{self.variant}" if self.variant else self.dataset
        return f"{data}/{self.model}/{self.finder}/{self.attack}"

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.variant:  # specs from before variants existed keep their hash
            del d["variant"]
        for key in ("model_params", "finder_params", "attack_params"):
            d[key] = dict(getattr(self, key))
        return d

    @property
    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of the spec."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


SCENARIOS: Registry = Registry("scenario")
SUITES: Registry = Registry("suite")


def register_suite(name: str, specs: list[ScenarioSpec]) -> None:
    for spec in specs:
        if spec.id in SCENARIOS and SCENARIOS.get(spec.id) != spec:
            raise ValueError(f"scenario id {spec.id!r} already names a different spec")
        SCENARIOS.add(spec.id, spec)
    SUITES.add(name, tuple(spec.id for spec in specs))


ADULT_TARGETS = TargetRule(min_aux=10, max_aux=100, min_test=1)

register_suite("quick", [
    ScenarioSpec("digits", "mlp", "clustermatch", "label-flip", alphas=(1.0, 2.0), trials=1,
                 clean_models=1, model_params=freeze({"hidden": (32,), "lr": 0.01}),
                 finder_params=freeze({"k": 20}),
                 attack_params=freeze({"rule": "least-frequent"})),
])
register_suite("paper-adult", [
    ScenarioSpec("adult", "mlp", finder, "label-flip", target_rule=ADULT_TARGETS,
                 finder_params=freeze(params), attack_params=freeze({"rule": "opposite"}))
    for finder, params in (("featurematch", {"columns": ("education-num", "race", "sex")}),
                           ("clustermatch", {"k": 100}))
])
register_suite("synthetic", [
    ScenarioSpec("synthetic", "mlp", "featurematch", "label-flip", alphas=(1.0, 2.0), trials=2,
                 clean_models=2, model_params=freeze({"hidden": (8,), "max_epochs": 200}),
                 finder_params=freeze({"columns": ("group",)}),
                 attack_params=freeze({"rule": "opposite"}),
                 target_rule=TargetRule(min_aux=10, max_aux=80)),
])
# Label-flip vs the optimisation attacks on Adult (docs/attacks.md): the paper-adult specs, and the
# same with attack go / influence. Those run one trial per (target, alpha), not three, so that the
# four of them cost less than the two label-flip ones; the label-flip specs keep their three trials
# because they are the paper-adult scenarios themselves (same ids).
PAPER_ADULT = [SCENARIOS.get(spec_id) for spec_id in SUITES.get("paper-adult")]
register_suite("adult-attacks", PAPER_ADULT + [
    replace(spec, attack=attack, trials=1) for attack in ("go", "influence") for spec in PAPER_ADULT
])

# IMDB (PROTOCOL.md section 3): ClusterMatch on the attacker model's hidden states, PCA(10), the
# 10 lowest / median / highest clusters by its confidence. Label flipping gives every poison the
# least frequent true class of the cluster, which for a sentiment cluster is the class the
# attacker model scores lowest there. The offline suite reads the first 64 tokens of each review:
# the encoder is the cost on a CPU (50,000 reviews, once; docs/reproduction.md).
IMDB_TARGETS = ConfidenceBands(per_band=10)
MINILM_PARAMS = freeze({"max_tokens": 64})
register_suite("offline-imdb", [
    ScenarioSpec("imdb", "minilm-ll", "clustermatch", "label-flip", target_rule=IMDB_TARGETS,
                 model_params=MINILM_PARAMS,
                 finder_params=freeze({"k": 100, "pca_components": 10, "surrogate": "minilm-ll",
                                       "surrogate_params": MINILM_PARAMS, "layer": "embed"}),
                 attack_params=freeze({"rule": "least-frequent"})),
])

# UTKFace offline (PROTOCOL.md sections 2-3): the benchmark's CIFAR-10-pretrained conv (width 8,
# 5 epochs on the 50,000 training images; frozen) + linear head; FeatureMatch race x age bucket and
# ClusterMatch on the backbone's features (PCA 40); images attack every subpopulation with a
# test point. The backbone settings are spelled out so that the spec hash names them.
IMAGE_FLIP = freeze({"rule": "least-frequent"})
OFFLINE_IMAGE_LL = freeze({"backbone_width": 8, "backbone_images": 50000, "backbone_epochs": 5})
register_suite("offline-utkface", [
    ScenarioSpec("utkface", "cifar10-conv-ll", "featurematch", "label-flip", model_params=OFFLINE_IMAGE_LL,
                 finder_params=freeze({"columns": ("race", "age_bucket")}), attack_params=IMAGE_FLIP),
    ScenarioSpec("utkface", "cifar10-conv-ll", "clustermatch", "label-flip", model_params=OFFLINE_IMAGE_LL,
                 finder_params=freeze({"k": 100, "pca_components": 40, "surrogate": "cifar10-conv-ll",
                                       "surrogate_params": OFFLINE_IMAGE_LL, "layer": "embed"}),
                 attack_params=IMAGE_FLIP),
])
# Label-flip vs GO vs influence on offline UTKFace (docs/attacks.md), as adult-attacks does for
# Adult: the optimisation attacks move pixels through the frozen backbone, IMAGE_STEP (L2, pixel
# units in [0, 1]) per poison and step, 50 steps; one trial per (target, alpha).
IMAGE_STEP = 0.1
IMAGE_OPTIM = freeze({"rule": "least-frequent", "step_size": IMAGE_STEP})
OFFLINE_UTKFACE = [SCENARIOS.get(spec_id) for spec_id in SUITES.get("offline-utkface")]
register_suite("offline-utkface-attacks", OFFLINE_UTKFACE + [
    replace(spec, attack=attack, trials=1, attack_params=IMAGE_OPTIM)
    for attack in ("go", "influence") for spec in OFFLINE_UTKFACE
])

# CIFAR-10, the paper's Table 3: ClusterMatch (k = 100, PCA 40 on D_aux) on each representation of
# the attacker's `conv` trained on D_aux: the pixels, the three scales and the last hidden layer.
# Each trial trains the whole network (12 epochs on 25,000 images): a GPU suite
# (docs/reproduction.md).
register_suite("paper-cifar10", [
    ScenarioSpec("cifar10", "conv", f"clustermatch@{layer}", "label-flip", attack_params=IMAGE_FLIP,
                 finder_params=freeze({"k": 100, "pca_components": 40,
                                       **({} if layer == "input" else {"surrogate": "conv"})}))
    for layer in ("input", "pool1", "pool2", "pool3", "embed")
])

# The full-scale CIFAR-10 layer comparison on a sample, for one GPU lease (docs/reproduction.md):
# the paper-cifar10 models and clusters (width 32, 12 epochs on 25,000 images, k = 100), 10 of
# the targets drawn at random, alpha 2, one trial, on CUDA.
GPU = freeze({"device": "cuda"})
register_suite("paper-cifar10-gpu-sample", [
    replace(SCENARIOS.get(spec_id), alphas=(2.0,), trials=1, clean_models=1, model_params=GPU,
            target_rule=SampledTargets(count=10), variant="gpu-sample",
            finder_params=freeze({**dict(SCENARIOS.get(spec_id).finder_params),
                                  **({"surrogate_params": GPU} if "surrogate" in dict(
                                      SCENARIOS.get(spec_id).finder_params) else {})}))
    for spec_id in SUITES.get("paper-cifar10")
])

# The paper's UTKFace and IMDB settings and the large-model (fine-tuned) suites. They need the
# ImageNet VGG-16 / bert-base-uncased weights (bench/models/pretrained.py) and, for -ft and BERT,
# a GPU: every trial trains the network.
UTK_FEATURES = freeze({"columns": ("race", "age_bucket")})


def _utkface(model: str, attacks_: tuple[str, ...] = ("label-flip",)) -> list[ScenarioSpec]:
    return [ScenarioSpec("utkface", model, finder, attack, finder_params=params,
                         attack_params=IMAGE_FLIP if attack == "label-flip" else IMAGE_OPTIM)
            for attack in attacks_ for finder, params in (
                ("featurematch", UTK_FEATURES),
                ("clustermatch", freeze({"k": 100, "pca_components": 40, "surrogate": model,
                                         "layer": "embed"})))]


def _imdb(model: str) -> list[ScenarioSpec]:
    return [ScenarioSpec("imdb", model, "clustermatch", "label-flip", target_rule=IMDB_TARGETS,
                         finder_params=freeze({"k": 100, "pca_components": 10, "surrogate": model,
                                               "layer": "embed"}),
                         attack_params=freeze({"rule": "least-frequent"}))]


register_suite("paper-utkface", _utkface("vgg16-ll", ("label-flip", "go", "influence")))
register_suite("paper-imdb", _imdb("bert-ll"))
register_suite("paper-utkface-ft", _utkface("vgg16-ft"))
register_suite("paper-imdb-ft", _imdb("bert-ft"))
register_suite("paper-cifar10-ft", [
    ScenarioSpec("cifar10", "vgg16-ft", "clustermatch", "label-flip", attack_params=IMAGE_FLIP,
                 model_params=freeze({"lr": 1e-3, "input_size": 32}),
                 finder_params=freeze({"k": 100, "pca_components": 40, "surrogate": "vgg16-ft",
                                       "surrogate_params": freeze({"lr": 1e-3, "input_size": 32}),
                                       "layer": "embed"})),
])

# The same at a scale a CPU can run (docs/reproduction.md): CIFAR-10 at a tenth (D, D_aux 2,500,
# D_t 1,000), conv of width 8 trained 2 epochs, k = 10, alpha 2, one trial.
register_suite("paper-cifar10-small", [
    ScenarioSpec("cifar10-small", "conv", f"clustermatch@{layer}", "label-flip", alphas=(2.0,), trials=1,
                 clean_models=1, attack_params=IMAGE_FLIP, model_params=freeze({"width": 8, "epochs": 2}),
                 finder_params=freeze({"k": 10, "pca_components": 40, **({} if layer == "input" else {
                     "surrogate": "conv", "surrogate_params": freeze({"width": 8, "epochs": 2})})}))
    for layer in ("input", "pool1", "pool2", "pool3", "embed")
])
