"""Result bundles: one defense's stored trials as a self-describing JSON file (docs/submitting.md).

A defense author makes a bundle from a result store (``subpop-bench submit``); maintainers build
the leaderboard from a folder of bundles (``subpop-bench leaderboard build``). A bundle is data
only: it is parsed with :mod:`json` (never unpickled, evaluated or imported), checked against
``bundle.schema.json``, then against this benchmark: its scenarios must be registered with the
same spec, its trials must fill each scenario's grid exactly once under the keys and seeds the
runner gives them, and its summary must be what the leaderboard computes from its trials.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FORMAT = "subpop-bench result bundle"
FORMAT_VERSION = 1
# paper-adult makes about 1.3 MB per track (docs/submitting.md); the limit stops a huge file
# before it is parsed.
MAX_BYTES = 50 * 2**20
_MISSING = object()


class BundleError(ValueError):
    """A rejected bundle; the message names the problem (a JSON path, a scenario or a trial)."""


@dataclass(frozen=True)
class _Declared:
    """The defense a bundle declares: what :func:`bench.runner.trial_key` needs of a defense."""

    name: str
    params: dict

    def hyperparameters(self) -> dict:
        return self.params


def source_sha256(cls: type) -> tuple[str, str]:
    """sha256 of the source of defense class ``cls`` and what was hashed: ``"class"``, or
    ``"module"`` (its module's file) when the class's own source cannot be found."""
    try:
        return hashlib.sha256(inspect.getsource(cls).encode()).hexdigest(), "class"
    except (OSError, TypeError):
        pass
    try:
        path = inspect.getfile(sys.modules[cls.__module__])
        return hashlib.sha256(Path(path).read_bytes()).hexdigest(), "module"
    except (KeyError, OSError, TypeError) as err:
        raise ValueError(f"cannot find the source of defense class {cls.__qualname__} to hash "
                         f"it: {err}") from None


def _finite(value):
    """``value`` with NaN and infinities as None (JSON has no such numbers)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def create(rows: list[dict], defense) -> dict:
    """The bundle of ``defense``'s trials among ``rows`` (``Store.rows()``).

    ``defense`` is an instance (``defenses.make(name)``): the bundle takes the trials run with its
    name and hyper-parameters, which must have been run with its version, since the bundle
    records the hash of its class's source.
    """
    from bench import __version__
    from bench.scenarios import SCENARIOS
    from leaderboard.aggregate import COLUMNS, aggregate

    named = [r for r in rows if r["defense"] == defense.name]
    if not named:
        known = ", ".join(sorted({r["defense"] for r in rows})) or "none"
        raise ValueError(f"the store has no trials of defense {defense.name!r} (it has: {known})")
    params = json.dumps(defense.hyperparameters(), sort_keys=True, default=str)
    mine = [r for r in named if r["defense_params"] == params]
    if not mine:
        stored = "; ".join(sorted({r["defense_params"] for r in named}))
        raise ValueError(f"the store has no trials of {defense.name!r} with hyper-parameters "
                         f"{params} (it has them with: {stored})")
    versions = sorted({r["defense_version"] for r in mine})
    if versions != [defense.version]:
        raise ValueError(f"the store's trials of {defense.name!r} were run with version(s) "
                         f"{', '.join(versions)}, the installed one is version {defense.version}: "
                         f"run it again into a fresh store")
    digest, hashed = source_sha256(type(defense))

    scenarios = []
    for sid in dict.fromkeys(r["scenario"] for r in mine):
        trials = [r for r in mine if r["scenario"] == sid]
        scenarios.append({
            "id": sid, "hash": trials[0]["scenario_hash"],
            # the spec as JSON sees it (tuples become lists), as its hash is computed
            "spec": json.loads(json.dumps(SCENARIOS.get(sid).to_dict(), default=list)),
            "alphas": sorted({r["alpha"] for r in trials}),
            "tracks": sorted({r["track"] for r in trials})})
    environments = list(dict.fromkeys(r["environment"] for r in mine))
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "subpop_bench_version": __version__,
        "defense": {"name": defense.name, "version": defense.version,
                    "hyperparameters": json.loads(params), "source_sha256": digest,
                    "source_hashed": hashed},
        "scenarios": scenarios,
        "environments": [json.loads(e) for e in environments],
        "trials": [{"key": r["key"], "scenario": r["scenario"], "target": r["target"],
                    "target_name": r["target_name"], "alpha": r["alpha"], "trial": r["trial"],
                    "track": r["track"], "seed": r["seed"], "status": r["status"],
                    "error": r["error"], "metrics": {k: _finite(v) for k, v in r["metrics"].items()},
                    "runtime_s": r["runtime_s"], "timing": r["timing"],
                    "environment": environments.index(r["environment"])} for r in mine],
        "summary": [{k: _finite(row[k]) for k in COLUMNS} for row in aggregate(mine)],
    }


def dumps(bundle: dict) -> str:
    """The JSON text of ``bundle`` (NaN is refused: it is not JSON)."""
    return json.dumps(bundle, indent=1, allow_nan=False) + "\n"


def to_rows(bundle: dict) -> list[dict]:
    """The trials of a valid bundle as ``Store.rows()`` dicts, the defense filled from its header
    (missing metrics back to NaN, as the store has them)."""
    defense = bundle["defense"]
    params = json.dumps(defense["hyperparameters"], sort_keys=True, default=str)
    hashes = {s["id"]: s["hash"] for s in bundle["scenarios"]}
    environments = [json.dumps(e, sort_keys=True) for e in bundle["environments"]]
    return [{"key": t["key"], "scenario": t["scenario"], "scenario_hash": hashes[t["scenario"]],
             "target": int(t["target"]), "target_name": t["target_name"], "alpha": float(t["alpha"]),
             "trial": int(t["trial"]), "defense": defense["name"],
             "defense_version": defense["version"], "defense_params": params, "track": t["track"],
             "seed": t["seed"], "status": t["status"], "error": t["error"],
             "metrics": {k: float("nan") if v is None else v for k, v in t["metrics"].items()},
             "runtime_s": float(t["runtime_s"]), "timing": dict(t["timing"]),
             "environment": environments[int(t["environment"])]} for t in bundle["trials"]]


# --- validation -----------------------------------------------------------------------------


def _no_constant(name: str):
    raise BundleError(f"not valid JSON: {name} is not a JSON number (a missing value is null)")


def _no_duplicate_keys(pairs: list) -> dict:
    # json keeps the last of repeated keys silently; a bundle must not say two things at once
    out = {}
    for key, value in pairs:
        if key in out:
            raise BundleError(f"not valid JSON: the key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse(text: str | bytes):
    """The JSON value of ``text``, refusing more than :data:`MAX_BYTES` bytes (characters, for
    a str), NaN, infinities and repeated keys."""
    if len(text) > MAX_BYTES:
        raise BundleError(f"it is over the {MAX_BYTES // 2**20} MB limit on bundles")
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicate_keys)
    except BundleError:
        raise
    except json.JSONDecodeError as err:
        raise BundleError(f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError:
        raise BundleError("not valid JSON: the file is not UTF-8 text") from None
    except ValueError as err:  # e.g. an integer of more digits than Python will convert
        raise BundleError(f"not valid JSON here: {err}") from None
    except RecursionError:
        raise BundleError("not valid JSON here: nested too deeply") from None


@functools.cache
def _validator():
    import jsonschema

    schema = json.loads(resources.files("leaderboard").joinpath("bundle.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _check_schema(obj) -> None:
    import jsonschema

    version = obj.get("format_version") if isinstance(obj, dict) else None
    if type(version) is int and version != FORMAT_VERSION:
        raise BundleError(f"format_version {version} is not read by this version of subpop-bench "
                          f"(it reads {FORMAT_VERSION})")
    error = jsonschema.exceptions.best_match(_validator().iter_errors(obj))
    if error is None:
        return
    # jsonschema's messages start with the whole offending value; name it briefly instead
    message = error.message.replace(repr(error.instance), _brief(error.instance), 1)
    if {"then", "else"} & set(error.schema_path):
        message += " (an ok trial has error null; a failed trial has an error message and no metrics)"
    raise BundleError(f"does not follow the bundle schema at {error.json_path}: {message}")


def _brief(value) -> str:
    if isinstance(value, dict):
        return f"an object with {len(value)} key(s)"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _check_scenarios(bundle: dict) -> dict:
    """The registered spec of each of the bundle's scenarios, by id."""
    from bench.registry import UnknownNameError
    from bench.scenarios import SCENARIOS

    specs = {}
    for i, entry in enumerate(bundle["scenarios"]):
        sid = entry["id"]
        if sid in specs:
            raise BundleError(f"$.scenarios[{i}]: scenario {sid!r} is listed twice")
        try:
            spec = SCENARIOS.get(sid)
        except UnknownNameError as err:
            raise BundleError(f"$.scenarios[{i}]: {err}") from None
        if entry["hash"] != spec.hash:
            raise BundleError(f"scenario {sid!r}: the bundle's spec hash is {entry['hash']}, this "
                              f"benchmark's is {spec.hash}: the scenario changed since these "
                              f"trials ran (run them again with this version)")
        expected = json.loads(json.dumps(spec.to_dict(), default=list))
        changed = sorted(k for k in expected.keys() | entry["spec"].keys()
                         if expected.get(k, _MISSING) != entry["spec"].get(k, _MISSING))
        if changed:
            raise BundleError(f"scenario {sid!r}: the bundled spec differs from this benchmark's in "
                              f"{', '.join(map(str, changed))} although its hash is the same")
        extra = [a for a in entry["alphas"] if a not in spec.alphas]
        if extra:
            raise BundleError(f"scenario {sid!r}: alpha {extra[0]:g} is not one of its poison "
                              f"rates ({', '.join(f'{a:g}' for a in spec.alphas)})")
        specs[sid] = spec
    return specs


def _check_trials(bundle: dict, specs: dict, data_root) -> None:
    from bench import executors
    from bench.runner import trial_key

    defense = _Declared(bundle["defense"]["name"], bundle["defense"]["hyperparameters"])
    n_environments = len(bundle["environments"])
    by_scenario = defaultdict(list)
    seen = {}
    for i, t in enumerate(bundle["trials"]):
        spec = specs.get(t["scenario"])
        if spec is None:
            raise BundleError(f"$.trials[{i}]: scenario {t['scenario']!r} is not one of the "
                              f"bundle's scenarios")
        # JSON integers may arrive as 3.0; the key check below then insists on the runner's form
        cell = (int(t["target"]), float(t["alpha"]), int(t["trial"]), t["track"])
        key = trial_key(spec, *cell[:3], defense, cell[3])
        if t["key"] != key:
            raise BundleError(f"$.trials[{i}]: key {t['key']!r} does not match the trial's fields, "
                              f"which give {key!r}")
        if (t["scenario"], cell) in seen:
            raise BundleError(f"$.trials[{i}]: trial {key!r} is duplicated "
                              f"($.trials[{seen[t['scenario'], cell]}])")
        seen[t["scenario"], cell] = i
        if t["environment"] >= n_environments:
            raise BundleError(f"$.trials[{i}]: environment {t['environment']} is not an index of "
                              f"$.environments ({n_environments} entries)")
        by_scenario[t["scenario"]].append((i, cell, t))

    entries = {e["id"]: e for e in bundle["scenarios"]}
    for sid, spec in specs.items():
        entry = entries[sid]
        sc = executors.scenario(spec, data_root)
        targets = [int(x) for x in sc.targets]
        for i, (target, alpha, trial, track), t in by_scenario[sid]:
            off = (f"target {target} is not one of its {len(targets)} targets" if target not in targets
                   else f"alpha {alpha:g} is not one the bundle declares for it"
                   if alpha not in entry["alphas"]
                   else f"trial index {trial} is not below its {spec.trials} trials"
                   if trial >= spec.trials
                   else f"track {track} is not one the bundle declares for it"
                   if track not in entry["tracks"] else None)
            if off is not None:
                raise BundleError(f"$.trials[{i}]: outside the grid of scenario {sid!r}: {off}")
            if t["target_name"] != sc.subpops.names[target]:
                raise BundleError(f"$.trials[{i}]: target {target} of {sid!r} is "
                                  f"{sc.subpops.names[target]!r}, not {t['target_name']!r}")
            # the seed derives from the spec's own alpha value, as the runner passes it
            if t["seed"] != sc.victim_seed(target, spec.alphas[spec.alphas.index(alpha)], trial):
                raise BundleError(f"$.trials[{i}]: seed {t['seed']} is not the seed the runner "
                                  f"trains this trial's victim with")
        grid = [(tg, float(a), r, tr) for tg in targets for a in entry["alphas"]
                for r in range(spec.trials) for tr in entry["tracks"]]
        have = {cell for _, cell, _ in by_scenario[sid]}
        missing = [cell for cell in grid if cell not in have]
        if missing:
            target, alpha, trial, track = missing[0]
            raise BundleError(
                f"scenario {sid!r}: {len(missing)} of its {len(grid)} trials are missing, e.g. "
                f"target {target}, alpha {alpha:g}, trial {trial}, track {track} (a bundle "
                f"covers every target x trial of the alphas and tracks it declares)")


def _same(a, b) -> bool:
    a, b = _finite(a), _finite(b)
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    # the summary went through JSON and may have been summed in another order
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _check_summary(bundle: dict) -> None:
    from leaderboard.aggregate import COLUMNS, aggregate

    def name(row) -> str:
        return f"scenario {row[0]!r}, alpha {row[1]:g}, defense {row[2]!r}, track {row[3]}"

    claimed = {}
    for i, row in enumerate(bundle["summary"]):
        rid = (row["scenario"], float(row["alpha"]), row["defense"], row["track"])
        if rid in claimed:
            raise BundleError(f"$.summary[{i}]: a second row for {name(rid)}")
        claimed[rid] = row
    recomputed = {(r["scenario"], r["alpha"], r["defense"], r["track"]): r
                  for r in aggregate(to_rows(bundle))}
    for rid in claimed.keys() - recomputed.keys():
        raise BundleError(f"the summary has a row for {name(rid)} but the bundle has no such trials")
    for rid, row in recomputed.items():
        if rid not in claimed:
            raise BundleError(f"the summary lacks the row for {name(rid)}")
        for column in COLUMNS:
            if not _same(claimed[rid][column], row[column]):
                raise BundleError(f"the summary does not match the trials: for {name(rid)} it "
                                  f"says {column} = {claimed[rid][column]!r}, the trials give "
                                  f"{_finite(row[column])!r}{_other_version(bundle)}")


def _other_version(bundle: dict) -> str:
    """A hint when the bundle was made by another version, whose leaderboard may summarise
    differently (its trials can still be good)."""
    from bench import __version__

    made = bundle["subpop_bench_version"]
    if made == __version__:
        return ""
    return (f" (the bundle was made by subpop-bench {made}, this is {__version__}: if its "
            f"summary is computed differently, make the bundle again with `subpop-bench submit`)")


def validate(obj, data_root=None) -> dict:
    """``obj`` (a parsed bundle, or its JSON text) if it is a valid bundle, else
    :class:`BundleError` naming the first problem found.

    Preparing a scenario to learn its targets reads its dataset from ``data_root`` (see
    ``--data-root``); a missing dataset raises :class:`bench.datasets.DataError`, since it is no
    fault of the bundle.
    """
    if isinstance(obj, (str, bytes)):
        obj = parse(obj)
    try:
        _check_schema(obj)
        _check_trials(obj, _check_scenarios(obj), data_root)
        _check_summary(obj)
    except RecursionError:
        raise BundleError("nested too deeply") from None
    return obj


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            # one byte over the limit is enough for parse() to refuse it, whatever the real size
            return f.read(MAX_BYTES + 1)
    except OSError as err:
        raise BundleError(f"cannot read it: {err.strerror}") from None


def load(path, data_root=None) -> dict:
    """The valid bundle in file ``path``; else :class:`BundleError` naming the file and problem."""
    try:
        return validate(_read(Path(path)), data_root)
    except BundleError as err:
        raise BundleError(f"{path}: {err}") from None


def load_bundles(folder, data_root=None) -> tuple[list[dict], list[tuple[Path, str]]]:
    """The ``*.json`` bundles of ``folder``: ``(accepted, rejected)``, rejected as (path, reason).

    Files are taken in name order; a valid bundle is still rejected when it conflicts with one
    accepted before it: the leaderboard shows one configuration per defense name (it aggregates
    by name), and every trial once.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of result bundles")
    accepted, rejected = [], []
    configs: dict[str, tuple] = {}  # defense name -> (version, hyper-parameters, file)
    owners: dict[str, Path] = {}  # trial key -> file
    for path in sorted(folder.glob("*.json")):
        try:
            bundle = validate(_read(path), data_root)
            d = bundle["defense"]
            first = configs.get(d["name"], (d["version"], d["hyperparameters"], path))
            if first[:2] != (d["version"], d["hyperparameters"]):
                raise BundleError(f"defense {d['name']!r} is already on the leaderboard with "
                                  f"version {first[0]} and hyper-parameters "
                                  f"{json.dumps(first[1], sort_keys=True)} (from {first[2].name})")
            clash = next((t["key"] for t in bundle["trials"] if t["key"] in owners), None)
            if clash is not None:
                raise BundleError(f"trial {clash!r} is already in {owners[clash].name}")
        except BundleError as err:
            rejected.append((path, str(err)))
            continue
        configs.setdefault(d["name"], first)
        owners.update((t["key"], path) for t in bundle["trials"])
        accepted.append(bundle)
    return accepted, rejected
