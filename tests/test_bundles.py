"""Result bundles: a store's trials round-trip through a bundle, and every kind of tampering is
rejected with a message that names the problem."""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import defenses
from bench.runner import run
from bench.scenarios import SCENARIOS, SUITES
from bench.store import Store
from defenses.sphere import Sphere
from leaderboard import bundle
from leaderboard.aggregate import COLUMNS
from leaderboard.bundle import BundleError

SCENARIO = SUITES.get("synthetic")[0]


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """The synthetic suite with none (track any) and sphere (both tracks): 144 trials, seconds."""
    path = tmp_path_factory.mktemp("bundles") / "results.sqlite"
    with Store(path) as store:
        run([SCENARIOS.get(SCENARIO)], [defenses.make("none"), defenses.make("sphere")],
            store=store, progress=False)
        return store.rows()


@pytest.fixture(scope="module")
def good(rows) -> dict:
    return json.loads(bundle.dumps(bundle.create(rows, defenses.make("sphere"))))


@pytest.fixture
def fresh(good) -> dict:
    return copy.deepcopy(good)


def _comparable(rows: list[dict]) -> str:
    # JSON text compares NaN metrics equal; created_at is the store's own bookkeeping
    return json.dumps([{k: v for k, v in r.items() if k != "created_at"} for r in rows], sort_keys=True)


def test_round_trip_gives_back_the_stored_rows(rows, good):
    accepted = bundle.validate(bundle.dumps(good))
    assert accepted == good
    sphere = [r for r in rows if r["defense"] == "sphere"]
    assert _comparable(bundle.to_rows(accepted)) == _comparable(sphere)


def test_bundle_describes_its_defense_and_scenarios(good):
    from bench import __version__

    assert good["defense"] == {
        "name": "sphere", "version": "1", "hyperparameters": {"blind_fraction": 0.05},
        "source_sha256": hashlib.sha256(inspect.getsource(Sphere).encode()).hexdigest(),
        "source_hashed": "class"}
    spec = SCENARIOS.get(SCENARIO)
    [scenario] = good["scenarios"]
    assert (scenario["id"], scenario["hash"]) == (spec.id, spec.hash)
    assert scenario["spec"]["alphas"] == list(spec.alphas)
    assert scenario["alphas"] == [1.0, 2.0] and scenario["tracks"] == ["blind", "informed"]
    assert good["subpop_bench_version"] == __version__
    assert len(good["trials"]) == 96 and len(good["summary"]) == 4
    assert good["environments"][0]["subpop_bench"] == __version__


def test_schema_summary_has_the_leaderboard_columns():
    schema = json.loads((Path(bundle.__file__).parent / "bundle.schema.json").read_text())
    row = schema["$defs"]["summary_row"]
    assert set(row["required"]) == set(row["properties"]) == set(COLUMNS)


def test_load_reads_a_file_and_names_it_when_rejecting(tmp_path, good):
    path = tmp_path / "sphere.json"
    path.write_text(bundle.dumps(good))
    assert bundle.load(path) == good
    path.write_text("{")
    with pytest.raises(BundleError, match=r"sphere\.json: not valid JSON: .* line 1, column 2"):
        bundle.load(path)


def _set(path: tuple, value):
    def change(b):
        *parents, last = path
        for p in parents:
            b = b[p]
        b[last] = value
    return change


def _shift_td(b):
    b["trials"][0]["metrics"]["td"] += 0.25


def _foreign_target(b):
    t = b["trials"][0]
    t["target"], t["key"] = 99, t["key"].replace("|t0|", "|t99|")


def _spec_field(b):
    b["scenarios"][0]["spec"]["trials"] = 1


TAMPERING = {
    "changed metric": (_shift_td, r"summary does not match the trials: .* alpha 1, defense "
                                  r"'sphere', track blind it says mean_td = "),
    "removed trial": (lambda b: b["trials"].pop(5),
                      r"1 of its 96 trials are missing, e\.g\. target \d+, alpha \d, trial \d"),
    "duplicated trial": (lambda b: b["trials"].append(b["trials"][3]),
                         r"\$\.trials\[96\]: trial .* is duplicated \(\$\.trials\[3\]\)"),
    "changed spec hash": (_set(("scenarios", 0, "hash"), "0" * 16),
                          r"spec hash is 0000000000000000, this benchmark's is [0-9a-f]{16}"),
    "changed spec": (_spec_field, r"bundled spec differs from this benchmark's in trials"),
    "unknown scenario": (_set(("scenarios", 0, "id"), "synthetic/mlp/featurematch/labelflip"),
                         r"\$\.scenarios\[0\]: unknown scenario .*did you mean "
                         r"'synthetic/mlp/featurematch/label-flip'"),
    "wrong type": (_set(("trials", 7, "alpha"), "1"),
                   r"schema at \$\.trials\[7\]\.alpha: '1' is not of type 'number'"),
    "missing field": (lambda b: b.pop("summary"),
                      r"schema at \$: 'summary' is a required property"),
    "unexpected field": (_set(("trials", 0, "note"), "x"),
                         r"schema at \$\.trials\[0\]: Additional properties .*'note' was unexpected"),
    "key inconsistent with fields": (_set(("trials", 0, "trial"), 1),
                                     r"\$\.trials\[0\]: key .*\|r0\|.* does not match the "
                                     r"trial's fields, which give .*\|r1\|"),
    "changed seed": (_set(("trials", 0, "seed"), 5), r"\$\.trials\[0\]: seed 5 is not the seed"),
    "renamed target": (_set(("trials", 0, "target_name"), "x"), r"target 0 of .* is 'group=0', not 'x'"),
    "summary row removed": (lambda b: b["summary"].pop(), r"the summary lacks the row for scenario"),
    "alpha not in the scenario": (lambda b: b["scenarios"][0]["alphas"].append(3.0),
                                  r"alpha 3 is not one of its poison rates \(1, 2\)"),
    "undeclared track": (_set(("scenarios", 0, "tracks"), ["blind"]),
                         r"\$\.trials\[\d+\]: outside the grid of scenario .*: track informed "
                         r"is not one the bundle declares"),
    "target outside the grid": (_foreign_target, r"\$\.trials\[0\]: outside the grid of scenario "
                                                 r".*: target 99 is not one of its 12 targets"),
    "failed trial with metrics": (_set(("trials", 0, "status"), "failed"),
                                  r"a failed trial has an error message and no metrics"),
    "newer format": (_set(("format_version",), 2), r"format_version 2 is not read by this version"),
    "environment index": (_set(("trials", 0, "environment"), 5),
                          r"environment 5 is not an index of \$\.environments \(1 entries\)"),
    "number too large": (_set(("trials", 0, "metrics", "td"), 10**400),
                         r"\$\.trials\[0\]\.metrics\.td: 1000.* is greater than the maximum "
                         r"of 9007199254740991"),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampered_bundle_is_rejected_naming_the_problem(fresh, name):
    tamper, message = TAMPERING[name]
    tamper(fresh)
    with pytest.raises(BundleError, match=message):
        bundle.validate(fresh)


def test_summary_mismatch_of_another_version_says_to_make_the_bundle_again(fresh):
    fresh["subpop_bench_version"] = "0.0.1"
    _shift_td(fresh)
    with pytest.raises(BundleError, match=r"made by subpop-bench 0\.0\.1, .* `subpop-bench submit`"):
        bundle.validate(fresh)


@pytest.mark.parametrize("text, message", [
    ("{", r"not valid JSON: Expecting property name .* line 1, column 2"),
    ('{"format": NaN}', r"NaN is not a JSON number"),
    ('{"a": 1, "a": 2}', r"the key 'a' appears twice"),
    (b"\xff\xfe\x00", r"not UTF-8"),
    ("[" * 100_000, r"nested too deeply"),
    ("[]", r"schema at \$: a list of 0 item\(s\) is not of type 'object'"),
])
def test_invalid_json_is_rejected(text, message):
    with pytest.raises(BundleError, match=message):
        bundle.validate(text)


def test_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(bundle.MAX_BYTES + 1)  # sparse: no disk used, and not JSON either
    with pytest.raises(BundleError, match=r"huge\.json: it is over the 50 MB limit on bundles"):
        bundle.load(path)


def test_load_bundles_accepts_valid_and_reports_each_rejection(tmp_path, rows, good):
    none = bundle.create(rows, defenses.make("none"))
    other_version = copy.deepcopy(good)
    other_version["defense"]["version"] = "2"
    files = {"a-sphere.json": bundle.dumps(good), "b-none.json": bundle.dumps(none),
             "c-copy.json": bundle.dumps(good), "d-v2.json": bundle.dumps(other_version),
             "e-broken.json": "[1, 2", "notes.txt": "not a bundle"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    accepted, rejected = bundle.load_bundles(tmp_path)
    assert [b["defense"]["name"] for b in accepted] == ["sphere", "none"]
    reasons = {path.name: reason for path, reason in rejected}
    assert set(reasons) == {"c-copy.json", "d-v2.json", "e-broken.json"}
    assert "is already in a-sphere.json" in reasons["c-copy.json"]
    assert "'sphere' is already on the leaderboard with version 1" in reasons["d-v2.json"]
    assert "not valid JSON" in reasons["e-broken.json"]
    with pytest.raises(ValueError, match="is not a folder"):
        bundle.load_bundles(tmp_path / "missing")


def test_create_refuses_what_it_cannot_describe(rows):
    with pytest.raises(ValueError, match=r"no trials of defense 'slab' \(it has: none, sphere\)"):
        bundle.create(rows, defenses.make("slab"))
    with pytest.raises(ValueError, match=r"no trials of 'sphere' with hyper-parameters "
                                         r"\{\"blind_fraction\": 0\.1\}"):
        bundle.create(rows, defenses.make("sphere", blind_fraction=0.1))

    class Sphere2(Sphere):
        version = "2"

    with pytest.raises(ValueError, match="run with version\\(s\\) 1, the installed one is version 2"):
        bundle.create(rows, Sphere2())


def test_source_hash_falls_back_to_the_module_file():
    made = type("Made", (), {"__module__": __name__})  # no class statement to find
    digest, hashed = bundle.source_sha256(made)
    assert hashed == "module"
    assert digest == hashlib.sha256(open(__file__, "rb").read()).hexdigest()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (st.lists(children, max_size=5)
                      | st.dictionaries(st.text(max_size=10), children, max_size=5)),
    max_leaves=20)


def _accepts_or_rejects(obj) -> None:
    try:
        bundle.validate(obj)
    except BundleError:
        pass


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_validator_raises_only_bundle_errors_on_any_json(obj):
    _accepts_or_rejects(obj)
    _accepts_or_rejects(json.dumps(obj))


def _paths(value, prefix=()):
    yield prefix
    children = (value.items() if isinstance(value, dict)
                else enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        yield from _paths(child, prefix + (key,))


@pytest.fixture(scope="module")
def small(rows) -> dict:
    """The smaller bundle (none: 48 trials), so that each fuzzed validation is quick."""
    return json.loads(bundle.dumps(bundle.create(rows, defenses.make("none"))))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_validator_raises_only_bundle_errors_on_a_damaged_bundle(small, data):
    """One value anywhere in a valid bundle replaced by arbitrary JSON, or removed."""
    damaged = copy.deepcopy(small)
    *parents, last = data.draw(st.sampled_from([p for p in _paths(small) if p]))
    node = damaged
    for p in parents:
        node = node[p]
    if data.draw(st.booleans()):
        node[last] = data.draw(JSON)
    else:
        del node[last]
    _accepts_or_rejects(damaged)
