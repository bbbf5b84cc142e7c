"""The result store under stress: concurrent writers, kill -9 in the middle of writes, files of
other schemas or none, and `subpop-bench store check` (docs/reliability.md)."""
from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from bench.cli import main
from bench.runner import trial_key
from bench.store import COLUMNS, Store, StoreError, TrialRow

N_ROWS = 4000
BATCH = 200  # rows per transaction of the writers below
WRITERS = 4
KILLS = 10


def make_row(i: int) -> TrialRow:
    """Row ``i`` of a made-up run, with the key the runner gives its fields; its content depends
    on ``i`` only, so any writer writes the same row."""
    spec = SimpleNamespace(id="toy/mlp/featurematch/label-flip", hash="0123456789abcdef")
    defense = SimpleNamespace(name="none", hyperparameters=dict)
    target, trial = divmod(i, 10)
    return TrialRow(key=trial_key(spec, target, 1.0, trial, defense, "any"), scenario=spec.id,
                    scenario_hash=spec.hash, target=target, target_name=f"group={target}", alpha=1.0,
                    trial=trial, defense="none", defense_version="1", defense_params="{}",
                    track="any", seed=i, status="ok", error=None, metrics={"td": i / N_ROWS},
                    runtime_s=0.0, timing={}, environment="{}")


# A writer process: adds its rows in transactions of BATCH rows, skipping those already stored
# (as a resumed run does); says "writing" once it starts to. It imports only the store.
WRITER = """
import json, sys
from bench.store import Store, TrialRow
path, rows_file = sys.argv[1:3]
rows = [TrialRow(**r) for r in json.load(open(rows_file))]
added = 0
with Store(path) as store:
    stored = store.keys()
    todo = [r for r in rows if r.key not in stored]
    print("writing", flush=True)
    for i in range(0, len(todo), {batch}):
        added += store.add(todo[i:i + {batch}])
print(added)
""".replace("{batch}", str(BATCH))


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "rows.json"
    path.write_text(json.dumps([asdict(make_row(i)) for i in range(N_ROWS)]))
    return path


def writer(store, rows_file) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(rows_file)],
                            stdout=subprocess.PIPE, text=True)


def added(proc: subprocess.Popen) -> int:
    """The number of rows a writer inserted (its last line)."""
    out = proc.communicate(timeout=300)[0].split()
    assert proc.returncode == 0
    return int(out[-1])


def stored(path) -> dict:
    with Store(path) as store:
        return {r["key"]: r for r in store.rows()}


def test_concurrent_writers_store_every_row_exactly_once(tmp_path, rows_file):
    """Four processes open one new store at the same moment and all write the same 4,000 rows
    in transactions of 200: each row is inserted by exactly one of them, none is lost."""
    path = tmp_path / "shared.sqlite"
    procs = [writer(path, rows_file) for _ in range(WRITERS)]
    # INSERT OR IGNORE: a row another writer stored first is skipped, not duplicated
    assert sum(added(p) for p in procs) == N_ROWS
    rows = stored(path)
    assert len(rows) == N_ROWS and all(rows[make_row(i).key]["seed"] == i for i in range(N_ROWS))
    with Store(path) as store:
        assert store.check() == []


def test_kill_during_writes_leaves_whole_transactions(tmp_path, rows_file):
    """kill -9 a writer at random moments of its writing, ten times, resuming each time: the
    store always holds whole transactions (a prefix of the batches), passes its checks, and ends
    complete."""
    path = tmp_path / "killed.sqlite"
    order = [make_row(i).key for i in range(N_ROWS)]
    proc = writer(tmp_path / "timing.sqlite", rows_file)
    proc.stdout.readline()
    start = time.monotonic()
    added(proc)
    seconds = time.monotonic() - start  # how long writing every row takes
    rng = random.Random(8)
    kills = 0
    while kills < KILLS:
        proc = writer(path, rows_file)
        proc.stdout.readline()  # "writing": from here on it only writes
        time.sleep(rng.uniform(0, seconds))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        keys = set(stored(path))
        assert len(keys) % BATCH == 0 and keys == set(order[:len(keys)])
        with Store(path) as store:
            assert store.check() == []
        if len(keys) == N_ROWS:  # finished before the kill: start again from an empty store
            path.unlink()
    proc = writer(path, rows_file)
    proc.communicate(timeout=300)
    assert proc.returncode == 0 and set(stored(path)) == set(order)


def test_store_check_passes_a_sound_store_and_names_each_problem(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.add([make_row(i) for i in range(30)])
    assert main(["store", "check", "--store", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{path}: 30 trials (0 failed), store schema 1: no problems found"

    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE trials SET target = 99 WHERE key = ?", (make_row(0).key,))
        db.execute("UPDATE trials SET metrics = '{bad' WHERE key = ?", (make_row(1).key,))
        db.execute("UPDATE trials SET status = 'failed' WHERE key = ?", (make_row(2).key,))
        db.execute("UPDATE trials SET status = 'maybe' WHERE key = ?", (make_row(3).key,))
    db.close()
    assert main(["store", "check", "--store", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"problem: trial {make_row(0).key!r}: the key does not match the row's fields, which give " in out
    assert "|t99|" in out
    assert f"problem: trial {make_row(1).key!r}: metrics is not JSON" in out
    assert f"problem: trial {make_row(2).key!r}: status failed with no error and metrics" in out
    assert f"problem: trial {make_row(3).key!r}: unknown status 'maybe'" in out
    assert out.strip().endswith("30 trials (1 failed), store schema 1: 4 problem(s)")


def test_store_check_reports_a_damaged_file(tmp_path, capsys):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.add([make_row(i) for i in range(N_ROWS)])
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all rows into the main file
    data = bytearray(path.read_bytes())
    page = 4096
    data[5 * page:7 * page] = bytes(2 * page)  # two pages of rows and index zeroed
    path.write_bytes(bytes(data))
    assert main(["store", "check", "--store", str(path)]) == 1
    out = capsys.readouterr().out
    assert "problem: SQLite" in out and "trials unreadable, store schema 1: " in out
    assert main(["leaderboard", "--store", str(path)]) == 2
    assert "error: the result store cannot be read: " in capsys.readouterr().err


def _old_layout(path, version: str = "1", columns=COLUMNS) -> None:
    """A store file as another version wrote it: ``columns`` and ``schema_version``."""
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (version,))
        db.execute(f"CREATE TABLE trials ({', '.join(columns)})")
    db.close()


@pytest.mark.parametrize("make, message", [
    (lambda p: _old_layout(p, columns=[c for c in COLUMNS if c != "timing"]),
     r"written by an earlier development version of subpop-bench: its trials table does not "
     r"have the columns of store schema 1 \(it lacks timing\)\. Keep it aside and run again "
     r"into a new store \(--store NEW\.sqlite\)"),
    (lambda p: _old_layout(p, columns=COLUMNS + ("note",)), r"\(it has unknown note\)"),
    (lambda p: _old_layout(p, version="2"),
     r"has store schema 2, written by a newer subpop-bench; this version reads schema 1: upgrade"),
    (lambda p: _old_layout(p, version="0"), r"has store schema 0, written by an older subpop-bench"),
    (lambda p: _old_layout(p, version="one"), r"has an unreadable store schema version 'one'"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE users (name TEXT)").connection.commit(),
     r"is an SQLite database but not a subpop-bench result store \(it has the table\(s\) users "
     r"and no meta table\)"),
    (lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(50)),
     r"is not a subpop-bench result store: file is not a database"),
    (lambda p: p.mkdir(), r"cannot open the result store .*: unable to open database file"),
])
def test_a_file_of_another_schema_or_none_is_refused_clearly(tmp_path, make, message):
    path = tmp_path / "old.sqlite"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StoreError, match=message):
        Store(path)
    assert (path.read_bytes() if path.is_file() else None) == before


def test_cli_refuses_an_older_store_without_touching_it(tmp_path, capsys):
    path = tmp_path / "old.sqlite"
    _old_layout(path, columns=[c for c in COLUMNS if c != "timing"])
    before = path.read_bytes()
    for command in (["store", "check"], ["leaderboard"],
                    ["run", "--suite", "synthetic", "--defense", "none", "--no-progress"]):
        assert main(command + ["--store", str(path)]) == 2
        assert "written by an earlier development version of subpop-bench" in capsys.readouterr().err
    assert path.read_bytes() == before
