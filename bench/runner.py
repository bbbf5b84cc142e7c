"""Runs scenarios: attack, defend, train, measure, store (DESIGN.md, "The flow of one scenario").

Shared work is done once: a scenario's splits, subpopulations and clean models serve all its
targets, a poison set serves every defense, and a defense's cost on clean data is measured once
per scenario on the blind track. Trials are processed in chunks: the victim models of a chunk are
trained together by one ``fit_many`` call over a pool made of D and the chunk's poison sets.
"""
from __future__ import annotations

import json
import platform
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

import attacks
from bench import __version__, datasets, executors, models
from bench.metrics import filtering_metrics, trial_metrics
from bench.scenarios import ScenarioSpec
from bench.seeding import derive_seed
from bench.batching import FitBatcher
from bench.store import Store, TrialRow
from bench.subpops import FINDERS, Subpopulations
from defenses import Defense, DefenseInput, Filtered, Sanitized

ANY_TRACK = "any"  # the track of defenses that ignore the budget hint: one run serves both
TRUSTED_FRACTION = 0.05  # of D, verified clean, shown to oracle defenses (docs/protocol.md)


def environment() -> str:
    import sklearn
    import torch

    from bench.models import fused

    return json.dumps({"subpop_bench": __version__, "python": sys.version.split()[0],
                       "numpy": np.__version__, "torch": torch.__version__,
                       "scikit_learn": sklearn.__version__, "platform": platform.platform(),
                       "mlp_fused_kernel": fused.describe()},
                      sort_keys=True)


def defense_id(defense: Defense) -> str:
    return f"{defense.name}@{derive_seed(json.dumps(defense.hyperparameters(), sort_keys=True, default=str)):08x}"


def tracks_for(defense: Defense, tracks: tuple[str, ...]) -> tuple[str, ...]:
    return (ANY_TRACK,) if not defense.uses_budget else tracks


def trial_key(spec: ScenarioSpec, target: int, alpha: float, trial: int, defense: Defense, track: str) -> str:
    return f"{spec.id}|{spec.hash}|t{target}|a{alpha:g}|r{trial}|{defense_id(defense)}|{track}"


@dataclass
class Scenario:
    """Everything a scenario's trials share, computed once."""

    spec: ScenarioSpec
    splits: datasets.Splits
    subpops: Subpopulations
    targets: np.ndarray
    recipe: object
    clean_seeds: list[int]
    # One attack instance per scenario: the optimisation attacks cache their surrogate (trained
    # on D_aux) on it and reuse it for every target, rate and trial.
    attack: object
    poisons: dict = field(default_factory=dict)
    attack_seconds: dict = field(default_factory=dict)
    clean_costs: dict = field(default_factory=dict)
    _clean_correct: np.ndarray | None = None

    @classmethod
    def prepare(cls, spec: ScenarioSpec, data_root=None) -> "Scenario":
        """Splits, subpopulations and targets; the clean models are trained on first use."""
        splits = datasets.load(spec.dataset, seed=spec.seed, data_root=data_root)
        finder = FINDERS.get(spec.finder)(**dict(spec.finder_params))
        subpops = finder.find(splits, seed=spec.seed)
        targets = spec.target_rule.select(subpops)
        recipe = models.make(spec.model, **dict(spec.model_params))
        # A bad attack name or hyper-parameter is the spec's fault: it fails here, rather than
        # as the recorded failure of every trial.
        attack = attacks.make(spec.attack, **dict(spec.attack_params))
        seeds = [derive_seed(spec.hash, "clean", i) for i in range(spec.clean_models)]
        return cls(spec, splits, subpops, targets, recipe, seeds, attack)

    @property
    def clean_correct(self) -> np.ndarray:
        """Test correctness (clean_models, n_test) of the recipe trained on D."""
        if self._clean_correct is None:
            self._clean_correct = self.train_on_clean(np.ones(len(self.splits.train)))
        return self._clean_correct

    def train_on_clean(self, weights: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Test correctness (clean_models, n_test) of recipe models trained on D with ``weights``
        (and ``labels``), one per clean-model seed."""
        D = self.splits.train
        jobs = [models.TrainJob(weights, s, labels) for s in self.clean_seeds]
        return np.stack([_correct(self, m)
                         for m in self.recipe.fit_many(D.X, D.y, self.splits.n_classes, jobs)])

    def trusted_mask(self, n: int) -> np.ndarray:
        """(n,) bool over D followed by n - |D| poisons: a fixed random ``TRUSTED_FRACTION`` of
        D, the same for every trial of the scenario; poisons are never trusted."""
        n_train = len(self.splits.train)
        rng = np.random.default_rng(derive_seed(self.spec.hash, "trusted"))
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n_train, size=round(TRUSTED_FRACTION * n_train), replace=False)] = True
        return mask

    def target_size(self, target: int) -> int:
        return int((self.subpops.aux == target).sum())

    def poison(self, target: int, alpha: float, trial: int, time_limit: float | None = None):
        """The poison set (X_p, y_p) of a trial, generated once; an attack running past
        ``time_limit`` seconds raises :class:`TimeoutError` (and nothing is cached)."""
        key = (target, alpha, trial)
        if key not in self.poisons:
            attack = self.attack
            aux = self.splits.aux
            data = attacks.AttackInput(aux.X, aux.y, self.subpops.aux == target,
                                       self.splits.n_classes, self.splits.domain, self.recipe)
            m = attacks.poison_count(alpha, self.target_size(target))
            rng = np.random.default_rng(derive_seed(self.spec.hash, target, alpha, trial, "poison"))
            t0 = time.time()
            self.poisons[key] = _within(time_limit, lambda: attack.generate(data, m, rng))
            self.attack_seconds[key] = time.time() - t0
        return self.poisons[key]

    def victim_seed(self, target: int, alpha: float, trial: int) -> int:
        return derive_seed(self.spec.hash, target, alpha, trial, "victim")


def apply_defense(defense: Defense, X, y, n_classes, recipe, budget, seed, fitter=None, trusted=None,
                  rows=None):
    """Run the defense on the training set shuffled (so position reveals nothing), return
    ``("weights", Sanitized)`` or ``("model", model)`` in the training set's order.

    The training set is ``X`` (n, d), ``y`` (n,), or with ``rows`` (n,) the rows ``X[rows]``,
    ``y[rows]`` of a larger pool (the runner's: then the defense copies features out only if it
    reads them). ``fitter(jobs, order)``, when given, trains jobs whose weights follow the
    shuffled ``order`` (the runner's batched path); otherwise the recipe trains them directly.
    ``trusted`` (n,) bool marks verified-clean rows; only a defense that ``needs_trusted`` sees
    it."""
    n = len(y) if rows is None else len(rows)
    order = np.random.default_rng(seed).permutation(n)
    shown = trusted[order] if trusted is not None and defense.needs_trusted else None
    selected = order if rows is None else np.asarray(rows)[order]
    data = DefenseInput(X, np.asarray(y)[selected], n_classes, recipe, budget, seed,
                        None if fitter is None else (lambda jobs: fitter(jobs, order)), shown, selected)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    if hasattr(defense, "fit"):
        fitted = defense.fit(data)
        if isinstance(fitted, Filtered):
            kept = np.asarray(fitted.kept)
            if kept.dtype != bool or kept.shape != (n,):
                raise ValueError(f"{defense.name} returned a kept mask of dtype {kept.dtype} and "
                                 f"shape {kept.shape}, expected booleans of shape ({n},)")
            return "model", Filtered(fitted.model, kept[inverse])
        return "model", fitted
    result = defense.sanitize(data)
    if not isinstance(result, Sanitized):
        raise TypeError(f"{defense.name}.sanitize returned {type(result).__name__}, expected Sanitized")
    weights = np.asarray(result.weights)
    if weights.dtype.kind not in "biuf":  # strings or objects would convert, or fail, obscurely
        raise TypeError(f"{defense.name} returned weights of dtype {weights.dtype}, expected "
                        f"booleans or real numbers")
    weights = weights.astype(np.float64)
    if weights.shape != (n,):
        raise ValueError(f"{defense.name} returned weights of shape {weights.shape}, expected ({n},)")
    if not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise ValueError(f"{defense.name} returned NaN, infinite or negative weights")
    if not (weights > 0).any():
        raise ValueError(f"{defense.name} removed every training point")
    labels = None
    if result.labels is not None:
        labels = np.asarray(result.labels)
        if labels.dtype.kind not in "iu":  # float labels would be truncated, NaN made garbage
            raise TypeError(f"{defense.name} returned labels of dtype {labels.dtype}, expected integers")
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"{defense.name} returned labels of shape {labels.shape} or out of range")
        labels = labels[inverse].astype(np.int64)
    return "weights", Sanitized(weights[inverse], labels)


def _metrics(sc: Scenario, target: int, m: int, pois: np.ndarray, def_clean: np.ndarray,
             weights: np.ndarray | None) -> dict:
    out = {"m": m, "target_aux": sc.target_size(target),
           "target_train": int((sc.subpops.train == target).sum()),
           "target_test": int((sc.subpops.test == target).sum())}
    out.update(trial_metrics(sc.clean_correct, pois, def_clean, sc.subpops.test, target, sc.targets))
    if weights is not None:
        out.update(filtering_metrics(weights == 0, len(sc.splits.train), sc.subpops.train, target))
    return out


class _Failure(Exception):
    """A defense's error, recorded as the trial's outcome."""


def _failure(err: BaseException) -> _Failure:
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    place = f" ({where.filename}:{where.lineno})" if where else ""
    return _Failure(f"{type(err).__name__}: {err}{place}")


def _report(fitted) -> dict:
    """The numbers a robust-training model reports about itself (``fitted.report``, e.g. DP-SGD's
    epsilon), stored with the trial's metrics under ``defense_<name>``."""
    report = getattr(fitted, "report", None) or {}
    if not isinstance(report, dict) or not all(isinstance(v, (int, float)) for v in report.values()):
        raise TypeError(f"a model's report must be a dict of numbers, got {report!r}")
    return {f"defense_{k}": float(v) for k, v in report.items()}


def _model(result):
    """The fitted model of a robust-training defense's answer (a model, or Filtered)."""
    return result.model if isinstance(result, Filtered) else result


def _correct(sc: Scenario, fitted) -> np.ndarray:
    predicted = np.asarray(fitted.predict(sc.splits.test.X))
    if predicted.shape != sc.splits.test.y.shape:  # a wrong shape would broadcast, or compare False
        raise ValueError(f"a model's predict returned shape {predicted.shape}, expected "
                         f"{sc.splits.test.y.shape}")
    return predicted == sc.splits.test.y


def _within(seconds: float | None, fn):
    """``fn()``, given up with :class:`TimeoutError` after ``seconds`` (None: no limit). Python
    cannot stop a thread: a given-up call runs on in a daemon thread and its result is dropped."""
    if seconds is None:
        return fn()
    box: dict = {}

    def body():
        try:
            box["value"] = fn()
        except BaseException as err:  # re-raised in the caller
            box["error"] = err

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"timed out after {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _poisons(sc: Scenario, target: int, alpha: float, trial: int, time_limit: float | None = None):
    """The checked poison set ``(X_p, y_p)`` of a trial, or the :class:`_Failure` of its attack.
    A failure is cached with the poison sets, so every defense's chunk sees the same outcome and
    a failing attack is not run again."""
    key = (target, alpha, trial)
    try:
        out = sc.poison(*key, time_limit=time_limit)
        if isinstance(out, _Failure):
            return out
        return _checked_poisons(sc, out, attacks.poison_count(alpha, sc.target_size(target)))
    except Exception as err:  # an attack's fault fails this trial only
        sc.poisons[key] = _Failure(f"attack {sc.spec.attack} failed: {_failure(err)}")
        return sc.poisons[key]


def _checked_poisons(sc: Scenario, out, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``out`` as (m, d) float32 and (m,) int64 arrays, or an error naming what is wrong."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"generate returned {type(out).__name__}, expected a pair (X_p, y_p)")
    X_p, y_p = np.asarray(out[0]), np.asarray(out[1])
    d = sc.splits.n_features
    if X_p.shape != (m, d) or y_p.shape != (m,):
        raise ValueError(f"generate returned X_p of shape {X_p.shape} and y_p of shape "
                         f"{y_p.shape}, expected ({m}, {d}) and ({m},)")
    if X_p.dtype.kind not in "biuf":
        raise TypeError(f"generate returned X_p of dtype {X_p.dtype}, expected real numbers")
    if not np.isfinite(X_p).all():
        raise ValueError("generate returned X_p with NaN or infinite values")
    if y_p.dtype.kind not in "iu":
        raise TypeError(f"generate returned y_p of dtype {y_p.dtype}, expected integer labels")
    if m and (y_p.min() < 0 or y_p.max() >= sc.splits.n_classes):
        raise ValueError(f"generate returned labels outside the classes 0..{sc.splits.n_classes - 1}")
    return X_p.astype(np.float32), y_p.astype(np.int64)


class _Pool:
    """D followed by the poison sets of a chunk; maps a defense's jobs onto pool rows."""

    def __init__(self, D, sets):
        self.n = len(D)
        self.sizes = [len(yp) for _, yp in sets]
        self.offsets = np.cumsum([self.n] + self.sizes)[:-1]
        self.X = np.vstack([D.X] + [Xp for Xp, _ in sets])
        self.y = np.concatenate([D.y] + [yp for _, yp in sets])

    def rows(self, i: int | None) -> np.ndarray:
        """Pool rows of D ∪ D_p(i) in local order (D only when ``i`` is None)."""
        if i is None:
            return np.arange(self.n)
        return np.concatenate([np.arange(self.n), self.offsets[i] + np.arange(self.sizes[i])])

    def job(self, rows: np.ndarray, weights, labels, seed: int, private=None) -> models.TrainJob:
        w = np.zeros(len(self.y))
        w[rows] = weights
        pool_labels = None
        if labels is not None:
            pool_labels = self.y.copy()
            pool_labels[rows] = labels
        return models.TrainJob(w, seed, pool_labels, private)


def _defend(sc: Scenario, defense: Defense, pool: _Pool, i: int | None, budget, seed):
    """A task for the batcher: the defense on D ∪ D_p(i) (or D alone), its fits batched."""
    rows = pool.rows(i)

    def task(batched_fit):
        def fitter(jobs, order):
            return batched_fit([pool.job(rows[order], j.weights, j.labels, j.seed, j.private)
                                for j in jobs])

        return apply_defense(defense, pool.X, pool.y, sc.splits.n_classes, sc.recipe, budget, seed,
                             fitter, sc.trusted_mask(len(rows)), rows)

    return task


def run_chunk(sc: Scenario, defense: Defense, track: str, trials: list[tuple[int, float, int]],
              env: str, trial_timeout: float | None = None) -> list[TrialRow]:
    """Attack, defend, train and measure ``trials`` of one (scenario, defense, track); returns one
    row per trial, failed trials included.

    The defenses of all trials run together (their own fits batched by a :class:`FitBatcher`),
    then all victims are trained in one ``fit_many`` over a pool of D and the chunk's poisons.
    A trial whose attack fails, or whose defense fails or runs past ``trial_timeout`` seconds,
    is a failed row with the reason; the other trials go on.
    """
    spec, D = sc.spec, sc.splits.train
    did = defense_id(defense)
    informed = track == "informed"
    poisons = {g: _poisons(sc, *g, trial_timeout) for g in trials}
    plans = [{"trial": g, "seed": sc.victim_seed(*g), "error": str(poisons[g])}
             for g in trials if isinstance(poisons[g], _Failure)]
    trials = [g for g in trials if not isinstance(poisons[g], _Failure)]  # from here: attacked
    pool = _Pool(D, [poisons[g] for g in trials])
    batcher = FitBatcher(lambda jobs: sc.recipe.fit_many(pool.X, pool.y, sc.splits.n_classes, jobs),
                         trial_timeout)

    tasks, keys = [], []
    for i, (target, alpha, trial) in enumerate(trials):
        tasks.append(_defend(sc, defense, pool, i, pool.sizes[i] if informed else None,
                             derive_seed(spec.hash, target, alpha, trial, did, track)))
        keys.append(("poisoned", i))
    # The defense on clean D: blind once per scenario; informed once per (target, alpha), with
    # the hint m of those trials.
    clean_keys = sorted({(did, t, a) for t, a, _ in trials}) if informed else [(did,)]
    for key in clean_keys:
        if key not in sc.clean_costs:
            budget = attacks.poison_count(key[2], sc.target_size(key[1])) if informed else None
            tasks.append(_defend(sc, defense, pool, None, budget,
                                 derive_seed(spec.hash, *key[1:], did, "clean")))
            keys.append(("clean", key))
    t0 = time.time()
    outcomes = dict(zip(keys, batcher.run(tasks)))
    defense_s = (time.time() - t0) / max(len(trials), 1)
    for (kind, key), out in outcomes.items():
        if kind == "clean":
            sc.clean_costs[key] = _failure(out) if isinstance(out, BaseException) else out
    for out in outcomes.values():
        if isinstance(out, KeyboardInterrupt):
            raise out

    jobs: list[models.TrainJob] = []
    for i, (target, alpha, trial) in enumerate(trials):
        seed = sc.victim_seed(target, alpha, trial)
        rows = pool.rows(i)
        plan = {"trial": (target, alpha, trial), "m": pool.sizes[i], "seed": seed, "error": None}
        out = outcomes[("poisoned", i)]
        clean = sc.clean_costs[(did, target, alpha) if informed else (did,)]
        failure = out if isinstance(out, BaseException) else clean if isinstance(clean, _Failure) else None
        if failure is not None:
            plan["error"] = str(failure if isinstance(failure, _Failure) else _failure(failure))
            plans.append(plan)
            continue
        try:
            kind, result = out
            if kind == "model":
                if isinstance(result, Filtered):
                    plan["weights"] = result.kept.astype(np.float64)
                plan["pois"] = _correct(sc, _model(result))
                plan["report"] = _report(_model(result))
            else:
                plan["weights"] = result.weights
                plan["job"] = len(jobs)
                jobs.append(pool.job(rows, result.weights, result.labels, seed))
            if informed:
                ckind, cresult = clean
                if ckind == "model":
                    plan["def_clean"] = _correct(sc, _model(cresult))[None]
                else:
                    plan["def_job"] = len(jobs)
                    jobs.append(pool.job(pool.rows(None), cresult.weights, cresult.labels, seed))
            else:
                plan["def_clean"] = blind_clean_correct(sc, did)
        except Exception as err:  # a returned model that cannot predict fails its trial only
            plan = {k: v for k, v in plan.items() if k not in ("job", "def_job", "weights")}
            plan["error"] = str(_failure(err))
        plans.append(plan)

    t0 = time.time()
    fitted = sc.recipe.fit_many(pool.X, pool.y, sc.splits.n_classes, jobs) if jobs else []
    train_s = (time.time() - t0) / max(len(trials), 1)
    correct = [_correct(sc, f) for f in fitted]

    rows_out = []
    for plan in plans:
        target, alpha, trial = plan["trial"]
        metrics, status = {}, "failed"
        if plan["error"] is None:
            pois = correct[plan["job"]] if "job" in plan else plan["pois"]
            def_clean = correct[plan["def_job"]][None] if "def_job" in plan else plan["def_clean"]
            metrics = _metrics(sc, target, plan["m"], pois, def_clean, plan.get("weights"))
            metrics.update(plan.get("report", {}))
            status = "ok"
        rows_out.append(TrialRow(
            key=trial_key(spec, target, alpha, trial, defense, track), scenario=spec.id,
            scenario_hash=spec.hash, target=target, target_name=sc.subpops.names[target],
            alpha=alpha, trial=trial, defense=defense.name, defense_version=defense.version,
            defense_params=json.dumps(defense.hyperparameters(), sort_keys=True, default=str),
            track=track, seed=plan["seed"], status=status, error=plan["error"], metrics=metrics,
            runtime_s=defense_s + train_s,
            timing={"defense_s": defense_s, "train_s": train_s,
                    "attack_s": sc.attack_seconds.get((target, alpha, trial), 0.0)},
            environment=env))
    return rows_out


def blind_clean_correct(sc: Scenario, did: str) -> np.ndarray:
    """Test correctness (clean_models, n_test) of the blind defense applied to D alone, trained
    with the clean models' seeds (a defense that keeps everything costs exactly 0). Cached."""
    key = (did, "correct")
    if key not in sc.clean_costs:
        kind, out = sc.clean_costs[(did,)]
        if kind == "model":
            sc.clean_costs[key] = _correct(sc, _model(out))[None]
        elif np.all(out.weights == 1) and out.labels is None:
            sc.clean_costs[key] = sc.clean_correct
        else:
            sc.clean_costs[key] = sc.train_on_clean(out.weights, out.labels)
    return sc.clean_costs[key]


@dataclass
class RunSummary:
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    scenarios: list = field(default_factory=list)


def run(specs: list[ScenarioSpec], defense_list: list[Defense], tracks=("informed", "blind"),
        store: Store | None = None, data_root=None, chunk_size: int = 64, progress: bool = True,
        log=None, executor=None, alphas: tuple[float, ...] | None = None,
        trial_timeout: float | None = None) -> RunSummary:
    """Run every (scenario, defense, track) trial not yet in ``store``; returns counts.

    ``alphas``, when given, restricts each scenario to those of its poison rates.
    ``trial_timeout`` (seconds), when given, fails a trial whose defense runs longer (see
    :class:`bench.batching.FitBatcher` for how a chunk's concurrent defenses are timed).

    ``executor`` (default in-process, see :mod:`bench.executors`) runs the chunks; the rows of
    each finished chunk are stored at once, in one transaction, by this process only.
    ``log`` takes one-line messages (default: standard error, above the progress bar)."""
    from tqdm import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if trial_timeout is not None and not trial_timeout > 0:
        raise ValueError(f"trial_timeout must be > 0 seconds, got {trial_timeout}")
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    start = time.time()
    summary = RunSummary()
    env = environment()
    executor = executor or executors.Sequential()
    bar = tqdm(total=0, unit="trial", disable=not progress, dynamic_ncols=True)
    units = []
    for spec in specs:
        summary.scenarios.append(spec.id)
        stored = store.keys(spec.id) if store is not None else set()
        bar.set_description(f"{spec.id}: preparing")
        sc = executors.scenario(spec, data_root)
        rates = [a for a in spec.alphas if alphas is None or a in alphas]
        grid = [(int(t), a, r) for t in sc.targets for a in rates for r in range(spec.trials)]
        for defense in defense_list:
            for track in tracks_for(defense, tuple(tracks)):
                pending = [g for g in grid if trial_key(spec, *g, defense, track) not in stored]
                summary.skipped += len(grid) - len(pending)
                units += [executors.WorkUnit(spec, defense, track, tuple(pending[i:i + chunk_size]),
                                             None if data_root is None else str(data_root), env,
                                             trial_timeout)
                          for i in range(0, len(pending), chunk_size)]
        log(f"{spec.id}: {len(sc.targets)} targets, {len(sc.splits.train)} training points")
    bar.total = sum(len(u.trials) for u in units)
    bar.refresh()
    try:
        for rows in executor.map(units):
            if store is not None:
                store.add(rows)
            summary.ran += len(rows)
            summary.failed += sum(r.status != "ok" for r in rows)
            bar.set_description(f"{rows[0].scenario} {rows[0].defense}/{rows[0].track}")
            bar.update(len(rows))
    finally:
        executor.close()
    bar.close()
    summary.seconds = time.time() - start
    return summary
