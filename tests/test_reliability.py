"""Reliability (docs/reliability.md): runs killed at random moments resume to the store of an
uninterrupted run; concurrent runs share a store; faulty defenses and attacks become failed
trials with their reason while the run goes on; bad inputs get clear errors; hostile bundles
are escaped on the site."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest

import attacks
import defenses
from attacks.label_flip import LabelFlip
from bench.batching import FitBatcher, TrialTimeout
from bench.cli import main
from bench.runner import Scenario, run
from bench.scenarios import SCENARIOS, SUITES, freeze, register_suite
from bench.store import Store
from defenses import Defense, Sanitized
from leaderboard import aggregate, bundle, render
from leaderboard.aggregate import boards

SPEC = SCENARIOS.get(SUITES.get("synthetic")[0])
KILLS = 10
# The run that is killed: two defenses, 48 trials in 48 transactions of 1. With chunks of 4 the
# fused trainer wrote all of them within a few tenths of a second, and only 6 or 7 kills of 10
# landed mid-run (the test needs 5); with chunks of 1, 9 of 10 in three runs.
RUN = ["run", "--suite", "synthetic", "--defense", "none", "--defense", "sphere", "--track",
       "blind", "--alpha", "2", "--chunk-size", "1", "--no-progress"]
NOT_DETERMINISTIC = ("created_at", "runtime_s", "timing")  # wall-clock bookkeeping


def quiet(*_):
    pass


# --------------------------------------------------------------------------------------------
# Crash safety and concurrent writers: real `subpop-bench run` processes, killed with SIGKILL
# --------------------------------------------------------------------------------------------

# Imports take seconds (torch) and a killed run must start many times: this server imports the
# package once, then forks a child per run; each child runs the command line's main() as
# `subpop-bench` would and is a process of its own, killed for real.
ZYGOTE = """
import json, os, sys
import bench.cli, bench.executors, bench.runner, defenses, leaderboard  # noqa: F401
print("ready", flush=True)
for line in sys.stdin:
    command, _, rest = line.partition(" ")
    if command == "start":  # start {"args": [...], "log": path}: prints the child's pid
        request = json.loads(rest)
        pid = os.fork()
        if pid == 0:
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os._exit(bench.cli.main(request["args"]))
        print(pid, flush=True)
    else:  # wait PID: prints its status as os.waitpid gives it
        print(os.waitpid(int(rest), 0)[1], flush=True)
"""


class Zygote:
    def __init__(self, log):
        self.log = str(log)
        # One thread each: the runs share the machine's cores with each other (and CI's 2 cores
        # with everything else), and torch's default of a thread per core would oversubscribe.
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert self.proc.stdout.readline() == "ready\n"

    def _ask(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def start(self, *args: str) -> int:
        return self._ask("start " + json.dumps({"args": list(args), "log": self.log}))

    def wait(self, pid: int) -> int:
        return self._ask(f"wait {pid}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    server = Zygote(tmp_path_factory.mktemp("zygote") / "runs.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def scenario():
    return Scenario.prepare(SPEC)


def deterministic(path) -> dict[str, str]:
    """Each stored row (as canonical JSON, so NaN compares equal) by key, without its wall-clock
    bookkeeping; {} when there is no store yet."""
    if not path.exists():
        return {}
    with Store(path) as store:
        assert store.check() == []
        return {r["key"]: json.dumps({k: v for k, v in r.items() if k not in NOT_DETERMINISTIC},
                                     sort_keys=True) for r in store.rows()}


@pytest.fixture(scope="module")
def reference(zygote, tmp_path_factory) -> tuple[dict, float]:
    """The rows of an uninterrupted run of RUN, and its wall-clock seconds."""
    path = tmp_path_factory.mktemp("reference") / "store.sqlite"
    start = time.monotonic()
    assert zygote.wait(zygote.start(*RUN, "--store", str(path))) == 0
    seconds = time.monotonic() - start
    rows = deterministic(path)
    assert len(rows) == 48
    return rows, seconds


def test_random_kills_then_resume_give_the_store_of_an_uninterrupted_run(zygote, reference, tmp_path):
    """kill -9 the run at a random moment, ten times, each time resuming what the last one
    stored; then let it finish. After every kill the store holds only whole, correct rows; at
    the end exactly the trials and metrics of the uninterrupted run. A run that finished before
    its kill must equal the reference too, and the kills go on in a new store."""
    expected, seconds = reference
    rng = random.Random(8)
    path = tmp_path / "store-0.sqlite"
    kills = mid_run = 0
    while kills < KILLS:
        pid = zygote.start(*RUN, "--store", str(path))
        time.sleep(rng.uniform(0, seconds))
        os.kill(pid, signal.SIGKILL)  # a zombie (already finished) ignores it
        status = zygote.wait(pid)
        rows = deterministic(path)
        assert rows.items() <= expected.items()  # nothing half-written, duplicated or different
        if os.WIFSIGNALED(status):
            kills += 1
            mid_run += 0 < len(rows) < len(expected)
        else:
            assert status == 0 and rows == expected
            path = tmp_path / f"store-{kills}.sqlite"
    assert mid_run >= KILLS // 2  # most kills hit a run that had stored part of its trials
    assert zygote.wait(zygote.start(*RUN, "--store", str(path))) == 0
    assert deterministic(path) == expected


def test_concurrent_runs_and_a_reader_share_one_store(zygote, reference, tmp_path):
    """Two `subpop-bench run` of the same command write one new store at once while a
    `leaderboard` reads it: all succeed, and the store holds each trial once, as one run would."""
    path = tmp_path / "shared.sqlite"
    writers = [zygote.start(*RUN, "--store", str(path)) for _ in range(2)]
    time.sleep(reference[1] / 2)
    reader = zygote.start("leaderboard", "--store", str(path), "--format", "json")
    assert [zygote.wait(pid) for pid in writers + [reader]] == [0, 0, 0]
    assert deterministic(path) == reference[0]


def test_store_records_each_trials_seed_and_the_library_versions(reference, scenario):
    """Seeds derive from the trial's identity (so any executor, order or resume gives the same
    numbers); each row records the victim's seed and the versions of the libraries it ran with."""
    import sklearn
    import torch

    from bench import __version__

    for text in reference[0].values():
        row = json.loads(text)
        assert row["seed"] == scenario.victim_seed(row["target"], row["alpha"], row["trial"])
        env = json.loads(row["environment"])
        assert env["python"] == sys.version.split()[0] and env["subpop_bench"] == __version__
        assert (env["numpy"], env["torch"], env["scikit_learn"]) == (
            np.__version__, torch.__version__, sklearn.__version__)


# --------------------------------------------------------------------------------------------
# Fault isolation: defenses
# --------------------------------------------------------------------------------------------

ALPHA = 2.0
TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Faulty(Defense):
    """A sanitizer with one ``fault``; it keeps everything on the trials the fault spares."""

    name = "faulty"
    fault: ClassVar[str] = ""
    uses_budget = False
    sleep_at: int = -1  # "timeout": the training-set size whose trials sleep past the limit
    woke: ClassVar[list] = []  # one entry per sleep that ended

    def sanitize(self, data):
        n = len(data.y)
        if self.fault == "timeout" and n == self.sleep_at:
            time.sleep(30 * TIMEOUT_S)
            Faulty.woke.append(n)
            data.fit_recipe()  # raises: the trial was given up, so its thread ends here
        if self.fault == "fit-on-nothing":
            data.fit_recipe(np.zeros(n))  # the batched fit refuses it
        weights, labels = {
            "negative-weights": (np.where(np.arange(n) == 3, -1.0, 1.0), None),
            "string-mask": (np.array(["1"] * n), None),
            "object-mask": (np.array([None] * n, dtype=object), None),
            "2d-mask": (np.ones((n, 1)), None),
            "float-labels": (np.ones(n), data.y + 0.5),
            "labels-out-of-range": (np.ones(n), np.full(n, data.n_classes)),
        }.get(self.fault, (np.ones(n), None))
        return Sanitized(weights, labels)


@dataclass(frozen=True)
class FaultyModel(Defense):
    """Robust training with one ``fault``: no model, or one that predicts too many labels."""

    name = "faulty-model"
    fault: ClassVar[str] = ""
    uses_budget = False

    def fit(self, data):
        if self.fault == "none":
            return None

        class Model:
            def predict(self, X):
                return np.zeros(len(X) + 1, dtype=np.int64)

        return Model()


def _faulty(base: type, fault: str) -> type:
    return type(base.__name__, (base,), {"name": f"{base.name}-{fault}", "fault": fault})


# defense name: the reason its failed trials record
DEFENSE_FAULTS = {
    "faulty-negative-weights": "returned NaN, infinite or negative weights",
    "faulty-string-mask": "returned weights of dtype <U1, expected booleans or real numbers",
    "faulty-object-mask": "returned weights of dtype object, expected booleans or real numbers",
    "faulty-2d-mask": "returned weights of shape (",
    "faulty-float-labels": "returned labels of dtype float64, expected integers",
    "faulty-labels-out-of-range": "returned labels of shape (",
    "faulty-fit-on-nothing": "ValueError: weights select no training example (all zero)",
    "faulty-model-predict-shape": "a model's predict returned shape (",
    "faulty-model-none": "AttributeError: 'NoneType' object has no attribute 'predict'",
    "faulty-timeout": f"TrialTimeout: timed out after {TIMEOUT_S:g} s",
}


@pytest.fixture(scope="module")
def sleep_at(scenario) -> int:
    """The training-set size of the trials of the first target, which "faulty-timeout" sleeps on."""
    target_size = scenario.target_size(scenario.targets[0])
    return len(scenario.splits.train) + attacks.poison_count(ALPHA, target_size)


@pytest.fixture(scope="module")
def none_alone(tmp_path_factory) -> dict:
    with Store(tmp_path_factory.mktemp("none") / "s.sqlite") as store:
        run([SPEC], [defenses.make("none")], store=store, progress=False, log=quiet, alphas=(ALPHA,))
        return {r["key"]: r for r in store.rows()}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, sleep_at):
    """One run of every faulty defense next to none, with a per-trial time limit."""
    chosen = [defenses.make("none")]
    for name in DEFENSE_FAULTS:
        base = FaultyModel if name.startswith(FaultyModel.name) else Faulty
        cls = _faulty(base, name.removeprefix(base.name + "-"))
        chosen.append(cls(sleep_at=sleep_at) if name == "faulty-timeout" else cls())
    Faulty.woke.clear()
    with Store(tmp_path_factory.mktemp("faults") / "s.sqlite") as store:
        summary = run([SPEC], chosen, store=store, progress=False, log=quiet, alphas=(ALPHA,),
                      trial_timeout=TIMEOUT_S)
        return summary, store.rows(), list(Faulty.woke)


@pytest.mark.parametrize("name", DEFENSE_FAULTS)
def test_defense_fault_is_a_failed_trial_with_its_reason(fault_run, name, scenario, sleep_at):
    _, rows, _ = fault_run
    mine = [r for r in rows if r["defense"] == name]
    assert len(mine) == 24
    failed = [r for r in mine if r["status"] == "failed"]
    if name == "faulty-timeout":  # only the trials that slept; the others kept everything
        slept = [r for r in mine if len(scenario.splits.train) + attacks.poison_count(
            ALPHA, scenario.target_size(r["target"])) == sleep_at]
        assert failed == slept and len(slept) < len(mine)
    else:
        assert failed == mine
    assert all(DEFENSE_FAULTS[name] in r["error"] for r in failed)


def test_the_run_goes_on_and_the_other_results_equal_a_run_without_the_faults(fault_run, none_alone):
    summary, rows, woke = fault_run
    assert summary.ran == len(rows) == 24 * (1 + len(DEFENSE_FAULTS))
    assert summary.failed == sum(r["status"] == "failed" for r in rows)
    none = {r["key"]: (r["status"], r["metrics"]) for r in rows if r["defense"] == "none"}
    assert none == {k: (r["status"], r["metrics"]) for k, r in none_alone.items()}
    assert woke == []  # the run ended while the timed-out defenses still slept


def test_the_leaderboard_shows_failures_instead_of_dropping_them(fault_run):
    _, rows, _ = fault_run
    failed = {name: sum(r["status"] == "failed" for r in rows if r["defense"] == name)
              for name in DEFENSE_FAULTS}
    summaries = {s["defense"]: s for s in aggregate(rows)}
    assert {name: summaries[name]["n_failed"] for name in DEFENSE_FAULTS} == failed
    assert all(summaries[name]["n_trials"] == 24 for name in DEFENSE_FAULTS)
    entries = {e["defense"]: e for e in boards(rows)}
    assert set(DEFENSE_FAULTS) <= set(entries)  # on the board, unranked when nothing succeeded
    assert entries["faulty-string-mask"]["rank"] is None and entries["faulty-timeout"]["rank"] is not None
    lines = [line.strip("|").split("|") for line in render(aggregate(rows), "markdown").splitlines()
             if line.startswith("|")]
    header = [cell.strip() for cell in lines[0]]
    table = {cells[0].strip(): dict(zip(header, (c.strip() for c in cells))) for cells in lines[2:]}
    assert {name: int(table[name]["failed"]) for name in DEFENSE_FAULTS} == failed


def test_a_task_past_the_time_limit_is_given_up_and_the_others_do_not_wait():
    ended = []

    def quick(fit):
        return [fit(["a"]), fit(["b"])]

    def sleepy(fit):
        time.sleep(1.0)
        try:
            fit(["late"])
        except BaseException as err:  # the given-up task's request raises, so it ends
            ended.append(type(err).__name__)
            raise

    batcher = FitBatcher(lambda jobs: list(jobs), time_limit=0.2)
    start = time.monotonic()
    results = batcher.run([quick, sleepy, quick])
    assert time.monotonic() - start < 0.9
    assert results[0] == results[2] == [["a"], ["b"]]
    assert isinstance(results[1], TrialTimeout) and str(results[1]) == "timed out after 0.2 s"
    time.sleep(1.0)
    assert ended == ["_GivenUp"]


def test_a_bad_fit_request_fails_only_its_task():
    def fit_many(jobs):
        if "bad" in jobs:
            raise ValueError("weights select no training example (all zero)")
        return [job.upper() for job in jobs]

    results = FitBatcher(fit_many).run([lambda fit: fit(["a"]), lambda fit: fit(["bad"]),
                                        lambda fit: fit(["c", "d"])])
    assert results[0] == ["A"] and results[2] == ["C", "D"]
    assert isinstance(results[1], ValueError)


def test_trial_timeout_on_the_command_line(tmp_path, capsys):
    plugin = tmp_path / "slow.py"
    plugin.write_text(
        "import time\n"
        "import numpy as np\n"
        "from dataclasses import dataclass\n"
        "from defenses import Defense, Sanitized\n\n\n"
        "@dataclass(frozen=True)\n"
        "class Slow(Defense):\n"
        "    name = 'slow'\n"
        "    uses_budget = False\n\n"
        "    def sanitize(self, data):\n"
        "        if len(data.y) == 600:  # D alone, whose clean cost every blind trial needs\n"
        "            time.sleep(2)\n"
        "        return Sanitized(np.ones(len(data.y)))\n")
    store = tmp_path / "s.sqlite"
    code = main(["run", "--suite", "synthetic", "--defense", f"{plugin}:Slow", "--alpha", "2",
                 "--trial-timeout", "0.3", "--store", str(store), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ran 24 trials (24 failed)" in captured.err
    assert "| slow " in captured.out  # on the printed leaderboard, with its failures
    with Store(store) as s:
        assert {r["error"] for r in s.rows()} == {"TrialTimeout: timed out after 0.3 s"}


# --------------------------------------------------------------------------------------------
# Fault isolation: attacks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlakyFlip(LabelFlip):
    """label-flip with a fault on the targets whose first D_aux row is listed in ``faults``."""

    faults: tuple = ()  # ((first D_aux row of the target, fault), ...)
    calls: ClassVar[list] = []  # the first D_aux row of each generate call's target

    def generate(self, data, m, rng):
        first = int(np.flatnonzero(data.target)[0])
        FlakyFlip.calls.append(first)
        fault = dict(self.faults).get(first)
        if fault == "raise":
            raise RuntimeError("the attack broke on this target")
        if fault == "slow":  # past ATTACK_TIME_LIMIT; its late answer must be dropped
            time.sleep(3 * ATTACK_TIME_LIMIT)
        X_p, y_p = super().generate(data, m, rng)
        return {"shape": (X_p[:-1], y_p), "nan": (np.where(X_p == X_p.max(), np.nan, X_p), y_p),
                "labels": (X_p, y_p + 2), "not-a-pair": X_p, "float-labels": (X_p, y_p + 0.0),
                "slow": (X_p, y_p), None: (X_p, y_p)}[fault]


attacks.ATTACKS.add("test-flaky-flip", FlakyFlip)

# fault: the reason recorded for each trial of its target
ATTACK_FAULTS = {
    "raise": "attack test-flaky-flip failed: RuntimeError: the attack broke on this target (",
    "shape": "generate returned X_p of shape (",
    "nan": "generate returned X_p with NaN or infinite values",
    "labels": "generate returned labels outside the classes 0..1",
    "float-labels": "generate returned y_p of dtype float64, expected integer labels",
    "not-a-pair": "generate returned ndarray, expected a pair (X_p, y_p)",
    "slow": "attack test-flaky-flip failed: TimeoutError: timed out after 2 s",
}
ATTACK_TIME_LIMIT = 2.0  # seconds, --trial-timeout of the attack run


@pytest.fixture(scope="module")
def attack_run(scenario, tmp_path_factory):
    """none and sphere against an attack that fails on the first targets, one fault each."""
    first_rows = [int(np.flatnonzero(scenario.subpops.aux == t)[0]) for t in scenario.targets]
    faulty = dict(zip(scenario.targets[:len(ATTACK_FAULTS)].tolist(), ATTACK_FAULTS))
    spec = replace(SPEC, attack="test-flaky-flip", attack_params=freeze(
        {"rule": "opposite", "faults": tuple(zip(first_rows, ATTACK_FAULTS))}))
    FlakyFlip.calls.clear()
    with Store(tmp_path_factory.mktemp("attacks") / "s.sqlite") as store:
        summary = run([spec], [defenses.make("none"), defenses.make("sphere")], tracks=("blind",),
                      store=store, progress=False, log=quiet, alphas=(ALPHA,),
                      trial_timeout=ATTACK_TIME_LIMIT)
        return summary, store.rows(), faulty, first_rows, list(FlakyFlip.calls)


@pytest.mark.parametrize("fault", ATTACK_FAULTS)
def test_attack_fault_fails_the_trials_of_its_target_only(attack_run, fault):
    _, rows, faulty, _, _ = attack_run
    [target] = [t for t, f in faulty.items() if f == fault]
    mine = [r for r in rows if r["target"] == target]
    assert len(mine) == 2 * SPEC.trials  # both defenses
    assert all(r["status"] == "failed" and ATTACK_FAULTS[fault] in r["error"] for r in mine)


def test_the_run_goes_on_past_failed_attacks_which_run_once_per_trial(attack_run):
    summary, rows, faulty, first_rows, calls = attack_run
    assert summary.ran == len(rows) == 2 * 24 and summary.failed == 2 * SPEC.trials * len(faulty)
    assert all(r["status"] == "ok" for r in rows if r["target"] not in faulty)
    # each (target, trial) was attacked once: the failure is cached like a poison set
    assert sorted(calls) == sorted(first_rows * SPEC.trials)


# --------------------------------------------------------------------------------------------
# Input validation: clear messages
# --------------------------------------------------------------------------------------------

# name: (command line, the error it prints); {tmp} is a fresh folder
CLI_INPUTS = {
    "unknown scenario": (["run", "--scenario", "synthetic/mlp/featurematch/labelflip"],
                         "did you mean 'synthetic/mlp/featurematch/label-flip'"),
    "chunk size 0": (["run", "--suite", "synthetic", "--defense", "none", "--chunk-size", "0"],
                     "chunk_size must be >= 1, got 0"),
    "no workers": (["run", "--suite", "synthetic", "--defense", "none", "--executor", "process",
                    "--workers", "0"], "--workers must be >= 1, got 0"),
    "negative tolerance": (["report", "--tolerance", "-1"], "--tolerance must be >= 0, got -1"),
    "no bundle folder": (["leaderboard", "build", "--bundles", "{tmp}/missing", "--out", "{tmp}/site"],
                         "{tmp}/missing is not a folder of result bundles"),
    "no store to check": (["store", "check", "--store", "{tmp}/missing.sqlite"],
                          "no result store at {tmp}/missing.sqlite"),
    "adult file is a folder": (["run", "--suite", "paper-adult", "--defense", "none", "--data-root",
                                "{tmp}"], "cannot read the UCI Adult file {tmp}/adult/adult.data: "
                                          "Is a directory"),
    "trial timeout 0": (["run", "--trial-timeout", "0"],
                        "argument --trial-timeout: expected a number of seconds > 0, got '0'"),
    "trial timeout not a number": (["run", "--trial-timeout", "soon"],
                                   "expected a number of seconds > 0, got 'soon'"),
}


@pytest.mark.parametrize("name", CLI_INPUTS)
def test_bad_command_line_input_gets_a_clear_error(name, tmp_path, capsys):
    args, message = CLI_INPUTS[name]
    (tmp_path / "adult" / "adult.data").mkdir(parents=True)
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] in ("run", "report"):
        args += ["--store", str(tmp_path / "s.sqlite"), "--no-progress"][:2 if args[0] == "report" else 3]
    try:
        code = main(args)
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    assert code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def _prepare(**changes):
    return lambda: Scenario.prepare(replace(SPEC, **changes))


# name: (what is tried, the error's message)
API_INPUTS = {
    "no alphas": (lambda: replace(SPEC, alphas=()),
                  "alphas must be a non-empty tuple of positive numbers, got ()"),
    "zero alpha": (lambda: replace(SPEC, alphas=(0.0, 1.0)), "positive numbers, got (0.0, 1.0)"),
    "alpha as text": (lambda: replace(SPEC, alphas=("2",)), "positive numbers, got ('2',)"),
    "fractional trials": (lambda: replace(SPEC, trials=1.5), "trials must be an integer >= 1, got 1.5"),
    "no clean models": (lambda: replace(SPEC, clean_models=0), "clean_models must be an integer >= 1, got 0"),
    "empty dataset name": (lambda: replace(SPEC, dataset=""),
                           "a scenario's dataset must be a registered name, got ''"),
    "unknown dataset": (_prepare(dataset="synthetc"), "unknown dataset 'synthetc'; did you mean 'synthetic'"),
    "unknown attack": (_prepare(attack="labelflip"), "unknown attack 'labelflip'; did you mean 'label-flip'"),
    "unknown finder": (_prepare(finder="featurematc"), "did you mean 'featurematch'"),
    "bad attack rule": (_prepare(attack_params=freeze({"rule": "bogus"})),
                        "label-flip rule must be 'opposite' or 'least-frequent', got 'bogus'"),
    "bad model size": (_prepare(model_params=freeze({"hidden": (0,)})),
                       "hidden layer sizes must be >= 1, got (0,)"),
    "unknown annotation": (_prepare(finder_params=freeze({"columns": ("nope",)})),
                           "featurematch columns ['nope'] are not annotations of 'synthetic'"),
    "scenario id taken": (lambda: register_suite("conflict", [replace(SPEC, trials=5)]),
                          f"scenario id {SPEC.id!r} already names a different spec"),
    "suite name taken": (lambda: register_suite("synthetic", [SPEC]),
                         "suite 'synthetic' is already registered"),
    "defense fraction": (lambda: defenses.make("sphere", blind_fraction=1.5),
                         "blind_fraction must be in [0, 1), got 1.5"),
    "defense k": (lambda: defenses.make("label-sanitization", k=0), "k must be an integer >= 1, got 0"),
    "trial timeout": (lambda: run([SPEC], [], trial_timeout=0), "trial_timeout must be > 0 seconds, got 0"),
}


@pytest.mark.parametrize("name", API_INPUTS)
def test_bad_spec_or_parameter_gets_a_clear_error(name):
    attempt, message = API_INPUTS[name]
    with pytest.raises((ValueError, KeyError)) as err:
        attempt()
    assert message in str(err.value)


@pytest.fixture
def adult_copy(data_root, tmp_path):
    """A copy of the official Adult files, to damage (../shared/data is never touched)."""
    import shutil

    (tmp_path / "adult").mkdir()
    for name in ("adult.data", "adult.test"):
        shutil.copyfile(data_root / "adult" / name, tmp_path / "adult" / name)
    return tmp_path


@pytest.mark.realdata
@pytest.mark.parametrize("damage", ["one byte changed", "emptied", "line endings changed"])
def test_damaged_adult_file_is_refused_by_its_checksum(adult_copy, damage):
    from bench.datasets import DataError, load

    path = adult_copy / "adult" / "adult.test"
    data = path.read_bytes()
    path.write_bytes({"one byte changed": data[:1000] + b"7" + data[1001:], "emptied": b"",
                      "line endings changed": data.replace(b"\n", b"\r\n")}[damage])
    official = "35238206dfdf7f1fe215bbb874adecdc"
    with pytest.raises(DataError, match=rf"has md5 [0-9a-f]{{32}}, expected {official}") as err:
        load("adult", data_root=adult_copy)
    assert str(path) in str(err.value) and "replace it with the official one" in str(err.value)


def _archive(path, damage: str) -> None:
    """A .tar.gz of 20 incompressible files at ``path``, then damaged."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(20):
            content = np.random.default_rng(i).bytes(4096)
            info = tarfile.TarInfo(f"reviews/{i}.txt")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes({"truncated": data[:len(data) // 2], "not an archive": b"<html>404</html>",
                      "one byte changed": bytes(flipped)}[damage])


@pytest.mark.parametrize("damage", ["truncated", "not an archive", "one byte changed"])
def test_damaged_archive_is_a_data_error(tmp_path, damage):
    from bench.datasets import DataError
    from bench.datasets.archives import member_names, members

    path = tmp_path / "aclImdb_v1.tar.gz"
    _archive(path, damage)
    with pytest.raises(DataError, match=f"could not read {path} as a tar archive: "):
        list(members(path, ".txt"))
    with pytest.raises(DataError, match=f"could not read {path} as a tar archive: "):
        member_names(path, ".txt")


@pytest.mark.parametrize("damage", ["not an image", "truncated JPEG"])
def test_unreadable_image_is_a_data_error(damage):
    import io

    from PIL import Image

    from bench.datasets import DataError
    from bench.datasets.archives import decode_image

    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    content = {"not an image": b"GIF89a?", "truncated JPEG": jpeg.getvalue()[:1000]}[damage]
    with pytest.raises(DataError, match=r"UTKFace/1_0_0_1\.jpg: not a readable image \("):
        decode_image(content, 64, "UTKFace/1_0_0_1.jpg")


# --------------------------------------------------------------------------------------------
# Untrusted bundles: a hostile defense, through `subpop-bench leaderboard build`
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile(Defense):
    """Markup and a path in its name, version and hyper-parameter; fails some trials (those of
    the targets of odd size), with markup in the error."""

    name = "../../<script>alert(1)</script>"
    version = "<i>1</i>"
    uses_budget = False
    note: str = "<b onmouseover=alert(3)>x</b>"

    def sanitize(self, data):
        if len(data.y) % 4 == 2:  # |D| + 2 |target|, the target's size odd
            raise RuntimeError("<img src=x onerror=alert(2)>")
        return Sanitized(np.ones(len(data.y)))


def test_hostile_bundle_is_accepted_and_rendered_escaped_inside_the_site(tmp_path, capsys):
    with Store(tmp_path / "run" / "s.sqlite") as store:
        run([SPEC], [Hostile()], store=store, progress=False, log=quiet, alphas=(ALPHA,))
        rows = store.rows()
    assert {r["status"] for r in rows} == {"ok", "failed"}
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "hostile.json").write_text(bundle.dumps(bundle.create(rows, Hostile())))
    site = tmp_path / "out" / "site"
    assert main(["leaderboard", "build", "--bundles", str(bundles), "--out", str(site)]) == 0
    assert "1 bundle(s) accepted, 0 rejected" in capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == {"run", "bundles", "out"}
    assert all(site in p.parents for p in (tmp_path / "out").rglob("*") if p.is_file())
    pages = list(site.rglob("*.html"))
    assert len(pages) == 2  # the index and the defense's page, in a folder named by its slug
    for page in pages:
        markup = page.read_text(encoding="utf-8")
        for raw in ("<script>alert", "<img src=x", "<b onmouseover", "<i>1</i>"):
            assert raw not in markup
        assert markup.count("<script>") == 1  # the page's own sorting script
    defense_page = next(p for p in pages if p.parent != site).read_text(encoding="utf-8")
    assert "../../&lt;script&gt;alert(1)&lt;/script&gt;" in defense_page
    assert "&lt;img src=x onerror=alert(2)&gt;" in defense_page  # the failures are shown
    assert "&lt;i&gt;1&lt;/i&gt;" in defense_page and "&lt;b onmouseover=alert(3)&gt;" in defense_page
