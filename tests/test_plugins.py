"""Defenses from outside the package: an installed entry point, and a file given as path:Class."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis

import defenses
from bench.runner import run
from bench.scenarios import SCENARIOS, SUITES
from bench.store import Store
from defenses import DefenseInput

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_defense"
EXAMPLE_FILE = f"{EXAMPLE / 'my_defense' / '__init__.py'}:Mahalanobis"
CLI = [sys.executable, "-m", "bench.cli"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example package pip-installed (no network) into this test environment, and
    uninstalled afterwards."""
    source = tmp_path_factory.mktemp("src") / "my_defense"
    shutil.copytree(EXAMPLE, source)  # the build writes into the source tree: keep the checkout clean
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "install", "--no-build-isolation", "--no-deps", "--no-index", str(source)], check=True)
    try:
        yield {**os.environ, "PYTHONPATH": str(ROOT)}
    finally:
        subprocess.run([*pip, "uninstall", "-y", "my-defense"], check=True)


def test_installed_plugin_is_listed(installed):
    out = subprocess.run([*CLI, "list", "defenses"], env=installed, capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("my-defense"))
    assert "shrinkage=0.1" in line and "informed, blind" in line


@pytest.mark.slow
def test_installed_plugin_runs_on_the_quick_suite(installed, tmp_path):
    store = tmp_path / "s.sqlite"
    out = subprocess.run([*CLI, "run", "--defense", "my-defense", "--store", str(store), "--no-progress"],
                         env=installed, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with Store(store) as s:
        rows = s.rows()
    quick = SCENARIOS.get(SUITES.get("quick")[0])
    assert rows and {r["defense"] for r in rows} == {"my-defense"}
    assert {r["scenario"] for r in rows} == {quick.id} and {r["track"] for r in rows} == {"informed", "blind"}
    assert all(r["status"] == "ok" for r in rows)
    assert "| my-defense" in out.stdout


def test_a_broken_plugin_is_reported_and_the_rest_still_works(tmp_path):
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[subpop_bench.defenses]\nbroken = no_such_module:Thing\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = subprocess.run([*CLI, "list", "defenses"], env=env, capture_output=True, text=True)
    assert out.returncode == 0
    assert "sphere" in out.stdout and "broken" not in out.stdout
    assert "defense plug-in 'broken' not loaded" in out.stderr and "no_such_module" in out.stderr


def test_file_defense_runs_through_the_runner(tmp_path):
    defense = defenses.make(EXAMPLE_FILE, shrinkage=0.5)
    assert defense.name == "my-defense" and defense.hyperparameters()["shrinkage"] == 0.5
    spec = SCENARIOS.get(SUITES.get("synthetic")[0])
    with Store(tmp_path / "s.sqlite") as store:
        summary = run([spec], [defense], tracks=("blind",), store=store, progress=False, log=lambda *_: None)
        rows = store.rows()
    assert summary.failed == 0 and len(rows) == summary.ran > 0
    assert all(r["defense"] == "my-defense" and "poison_recall" in r["metrics"] for r in rows)


@pytest.mark.parametrize("spec,message", [
    ("no/such/file.py:Thing", "existing file"),
    (f"{EXAMPLE / 'my_defense' / '__init__.py'}:", "existing file"),
    (f"{EXAMPLE / 'my_defense' / '__init__.py'}:DefenseInput", "not a Defense subclass"),
])
def test_bad_file_defenses_are_refused_clearly(spec, message):
    with pytest.raises(ValueError, match=message):
        defenses.make(spec)


def test_example_scores_equal_scipy_mahalanobis():
    """The example defense's scores, cross-checked against scipy with the same covariance."""
    cls = defenses.load_file(EXAMPLE_FILE)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32) @ np.array([[2, 0, 0], [0.5, 1, 0], [0, 0, 0.3]], np.float32)
    y = (np.arange(60) % 2).astype(np.int64)
    scores = cls(shrinkage=0.2).score(DefenseInput(X, y, 2, None, None, 0))
    for c in (0, 1):
        Xc = X[y == c].astype(np.float64)
        cov = 0.8 * np.cov(Xc, rowvar=False) + 0.2 * np.eye(3)
        expected = [mahalanobis(x, Xc.mean(0), np.linalg.inv(cov)) for x in Xc]
        np.testing.assert_allclose(scores[y == c], expected, rtol=1e-4)
