"""The command line, as a user runs it (subprocesses)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.cli import main
from bench.store import Store

CLI = [sys.executable, "-m", "bench"]


def cli(*args, cwd=None, env=None, timeout=900):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_list_names(capsys):
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    assert "none" in out and "sphere" in out
    assert main(["list", "suites"]) == 0
    out = capsys.readouterr().out
    assert "quick" in out and "paper-adult" in out


def test_unknown_names_suggest_the_closest(capsys, tmp_path):
    assert main(["run", "--defense", "sphre", "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "did you mean 'sphere'" in capsys.readouterr().err
    assert main(["run", "--suite", "paper-adlt", "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "did you mean 'paper-adult'" in capsys.readouterr().err


def test_missing_adult_data_gives_a_clear_error(capsys, tmp_path):
    code = main(["run", "--suite", "paper-adult", "--defense", "none", "--data-root", str(tmp_path),
                 "--store", str(tmp_path / "s.sqlite"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "adult" / "adult.data") in err and "subpop-bench data fetch adult" in err


def test_leaderboard_without_store_says_so(capsys, tmp_path):
    assert main(["leaderboard", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no result store" in capsys.readouterr().err


def test_run_then_leaderboard_json(tmp_path):
    store = str(tmp_path / "s.sqlite")
    done = cli("run", "--suite", "synthetic", "--defense", "none", "--defense", "sphere",
               "--track", "blind", "--store", store, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "| none" in done.stdout and "| sphere" in done.stdout
    out = cli("leaderboard", "--store", store, "--format", "json")
    rows = json.loads(out.stdout)
    required = {"scenario", "alpha", "defense", "track", "n_targets", "clean_acc", "mean_td",
                "worst1_td", "worst5_td", "worst10_td", "mean_cd", "defense_clean_cost"}
    assert rows and all(required <= set(r) for r in rows)
    assert {(r["defense"], r["track"]) for r in rows} == {("none", "any"), ("sphere", "blind")}
    csv = cli("leaderboard", "--store", store, "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("scenario,alpha,defense,track") and len(csv) == len(rows) + 1


def test_kill_and_rerun_finishes_without_duplicates(tmp_path):
    """kill -9 in the middle of a run, run the same command again: the store ends with exactly
    the trials and metrics of an uninterrupted run."""
    # One trial per chunk, so that the store grows one trial at a time: with the fused trainer the
    # whole run writes its 48 trials in well under a second, and chunks of 4 were all written
    # before a poll every 0.2 s could see 8 of them and kill the run.
    args = ["run", "--suite", "synthetic", "--defense", "none", "--chunk-size", "1", "--no-progress"]
    reference = tmp_path / "reference.sqlite"
    assert cli(*args, "--store", str(reference)).returncode == 0
    with Store(reference) as s:
        expected = {r["key"]: r["metrics"] for r in s.rows()}

    store = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(CLI + args + ["--store", str(store)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:
        time.sleep(0.01)
        if store.exists():
            with Store(store) as s:
                if s.count() >= 4:
                    break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(store) as s:
        partial = s.count()
    assert 0 < partial < len(expected)
    assert cli(*args, "--store", str(store)).returncode == 0
    with Store(store) as s:
        got = {r["key"]: r["metrics"] for r in s.rows()}
        assert s.count() == len(expected)
    assert got == expected


@pytest.mark.slow
def test_no_arguments_runs_the_quick_suite(tmp_path):
    """`subpop-bench` alone: offline quick suite, every defense, leaderboard on stdout."""
    env = {"SUBPOP_DATA_ROOT": str(tmp_path / "no-data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "subpop-bench")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    assert "digits/mlp/clustermatch/label-flip" in done.stdout
    for defense in ("none", "sphere"):
        assert f"| {defense}" in done.stdout
    assert (tmp_path / "subpop-bench-results" / "results.sqlite").exists()


def test_fetch_without_network_says_where_to_put_the_files(capsys, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["data", "fetch", "adult"]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and str(tmp_path / "subpop-bench" / "data" / "adult") in err
    assert not list((tmp_path / "subpop-bench" / "data" / "adult").glob("adult.*"))


@pytest.mark.realdata
def test_fetch_verifies_files_already_there(capsys, tmp_path, monkeypatch, data_root):
    import shutil

    dest = tmp_path / "subpop-bench" / "data" / "adult"
    dest.mkdir(parents=True)
    for name in ("adult.data", "adult.test"):
        shutil.copy(data_root / "adult" / name, dest / name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["data", "fetch", "adult"]) == 0
    assert "verified" in capsys.readouterr().out
    (dest / "adult.test").write_text("garbage\n")
    assert main(["data", "fetch", "adult"]) == 2
    assert "md5" in capsys.readouterr().err


def test_alpha_option_restricts_the_poison_rates(tmp_path):
    store = str(tmp_path / "a.sqlite")
    done = cli("run", "--suite", "synthetic", "--defense", "none", "--alpha", "2",
               "--store", store, "--no-progress")
    assert done.returncode == 0, done.stderr
    with Store(store) as s:
        assert {r["alpha"] for r in s.rows()} == {2.0} and s.count() > 0


def test_options_without_a_command_are_those_of_run(tmp_path, capsys):
    store = str(tmp_path / "o.sqlite")
    assert main(["--suite", "synthetic", "--defense", "none", "--alpha", "2", "--track", "blind",
                 "--store", store, "--no-progress"]) == 0
    assert "| none" in capsys.readouterr().out
    with Store(store) as s:
        assert {r["alpha"] for r in s.rows()} == {2.0} and s.count() > 0
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{run,leaderboard" in capsys.readouterr().out


def test_data_backbone_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["data", "backbone", "--help"])
    out = capsys.readouterr().out
    assert "--images IMAGES" in out and "--epochs EPOCHS" in out and "pretrain the offline image backbone" in out


def test_alpha_not_in_the_scenarios_is_rejected(capsys, tmp_path):
    assert main(["run", "--suite", "synthetic", "--alpha", "7", "--store",
                 str(tmp_path / "s.sqlite"), "--no-progress"]) == 2
    assert "--alpha 7 is not a poison rate of the chosen scenarios (they have 1, 2)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def none_store(tmp_path_factory) -> str:
    """The synthetic suite with defense none (48 trials), run once for the bundle commands."""
    store = str(tmp_path_factory.mktemp("cli") / "s.sqlite")
    assert main(["run", "--suite", "synthetic", "--defense", "none", "--store", store,
                 "--no-progress"]) == 0
    return store


def test_submit_then_build_the_site_from_bundles(tmp_path, none_store, capsys):
    bundles = tmp_path / "bundles"
    assert main(["submit", "--store", none_store, "--defense", "none",
                 "--out", str(bundles / "none.json")]) == 0
    assert f"wrote {bundles / 'none.json'}: none version 1, 48 trials" in capsys.readouterr().err
    assert json.loads((bundles / "none.json").read_text())["defense"]["name"] == "none"
    (bundles / "broken.json").write_text("{")
    site = tmp_path / "site"
    assert main(["leaderboard", "build", "--bundles", str(bundles), "--out", str(site)]) == 1
    captured = capsys.readouterr()
    assert f"rejected {bundles / 'broken.json'}: not valid JSON" in captured.err
    assert "1 bundle(s) accepted, 1 rejected" in captured.err
    assert captured.out.strip() == str(site / "index.html") and (site / "index.html").is_file()


def test_build_without_a_valid_bundle_fails(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[]")
    assert main(["leaderboard", "build", "--bundles", str(tmp_path), "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert "rejected" in err and f"no valid result bundle in {tmp_path}" in err
    assert not (tmp_path / "site").exists()


def test_submit_says_what_the_store_lacks(none_store, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["submit", "--store", none_store, "--defense", "sphere", "--out", str(out)]) == 2
    assert "no trials of defense 'sphere' (it has: none)" in capsys.readouterr().err
    assert not out.exists()


def test_leaderboard_html_from_the_store(none_store, tmp_path, monkeypatch, capsys):
    from leaderboard import site

    calls = []
    monkeypatch.setattr(site, "build", lambda rows, out: calls.append((rows, out)) or f"{out}/index.html")
    assert main(["leaderboard", "--store", none_store, "--format", "html", "--out", str(tmp_path)]) == 0
    [(rows, out)] = calls
    with Store(none_store) as s:
        assert [r["key"] for r in rows] == [r["key"] for r in s.rows()] and out == str(tmp_path)
    assert main(["leaderboard", "--store", none_store, "--format", "html"]) == 2
    assert "--format html writes a site and needs --out DIR" in capsys.readouterr().err


def test_report_against_a_baseline_bundle(none_store, tmp_path, capsys):
    baseline = tmp_path / "none.json"
    assert main(["submit", "--store", none_store, "--defense", "none", "--out", str(baseline)]) == 0
    capsys.readouterr()
    assert main(["report", "--store", none_store, "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# subpop-bench report") and "48 trials (0 failed)" in out
    compared = [line for line in out.split("## Against the baseline")[1].splitlines()
                if line.startswith("| synthetic")]
    assert len(compared) == 2 and all(line.count(" = |") == 3 for line in compared)
    baseline.write_text("{}")
    assert main(["report", "--store", none_store, "--baseline", str(baseline)]) == 2
    assert f"error: {baseline}: does not follow the bundle schema at $" in capsys.readouterr().err
