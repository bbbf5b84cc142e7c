"""The result store: one SQLite row per trial (DESIGN.md).

Rows are written in transactions, a chunk at a time, in WAL mode, so a run killed at any moment
leaves only whole rows; ``INSERT OR IGNORE`` on the trial key makes re-runs skip, never duplicate.
Several processes may write one store at once: SQLite serialises their transactions (each waits
up to :data:`BUSY_TIMEOUT_S` for the others).
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
DEFAULT_STORE = Path("subpop-bench-results") / "results.sqlite"
BUSY_TIMEOUT_S = 60

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    scenario TEXT NOT NULL,
    scenario_hash TEXT NOT NULL,
    target INTEGER NOT NULL,
    target_name TEXT NOT NULL,
    alpha REAL NOT NULL,
    trial INTEGER NOT NULL,
    defense TEXT NOT NULL,
    defense_version TEXT NOT NULL,
    defense_params TEXT NOT NULL,
    track TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    metrics TEXT NOT NULL,
    runtime_s REAL NOT NULL,
    timing TEXT NOT NULL,
    created_at REAL NOT NULL,
    environment TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS trials_by_run ON trials (scenario, defense, track)",
)
# The columns of schema SCHEMA_VERSION, in order. Stores of early development versions say
# schema 1 but lack ``timing`` (their metrics held wall-clock seconds): the check of the columns
# on opening refuses them.
COLUMNS = ("key", "scenario", "scenario_hash", "target", "target_name", "alpha", "trial",
           "defense", "defense_version", "defense_params", "track", "seed", "status", "error",
           "metrics", "runtime_s", "timing", "created_at", "environment")
_JSON_COLUMNS = ("metrics", "timing", "environment", "defense_params")


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class TrialRow:
    key: str
    scenario: str
    scenario_hash: str
    target: int
    target_name: str
    alpha: float
    trial: int
    defense: str
    defense_version: str
    defense_params: str
    track: str
    seed: int
    status: str
    error: str | None
    metrics: dict
    runtime_s: float
    timing: dict
    environment: str


class Store:
    """An SQLite file of trial rows. Open with ``Store(path)``; close with ``close()`` or ``with``.

    Opening refuses, with :class:`StoreError`, a file that is not a result store of this
    schema (another SQLite database, a newer or older store layout)."""

    def __init__(self, path: str | Path = DEFAULT_STORE):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the result store {self.path}: {err}") from err
        try:
            # IMMEDIATE: take the write lock before reading, so that two processes opening a
            # new store at once do not both try to create it. WAL mode only once the file is
            # known to be a store: a file that is not one is left as it was.
            self.db.execute("BEGIN IMMEDIATE")
            with self.db:
                self._open_schema()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except BaseException as err:
            self.db.close()
            if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
                raise StoreError(f"{self.path} stayed locked by another process for over "
                                 f"{BUSY_TIMEOUT_S} s") from err
            if isinstance(err, sqlite3.DatabaseError):
                raise StoreError(f"{self.path} is not a subpop-bench result store: {err}") from err
            raise

    def _open_schema(self) -> None:
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StoreError(f"{self.path} is an SQLite database but not a subpop-bench result "
                             f"store (it has the table(s) {', '.join(sorted(tables))} and no meta table)")
        for statement in _SCHEMA:
            self.db.execute(statement)
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif not row[0].isdigit():
            raise StoreError(f"{self.path} has an unreadable store schema version {row[0]!r}")
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema {row[0]}, written by a newer "
                             f"subpop-bench; this version reads schema {SCHEMA_VERSION}: upgrade "
                             f"subpop-bench, or pass --store with another file")
        elif int(row[0]) < SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema {row[0]}, written by an older "
                             f"subpop-bench; this version reads schema {SCHEMA_VERSION}")
        columns = tuple(c[1] for c in self.db.execute("PRAGMA table_info(trials)"))
        if columns != COLUMNS:
            missing = [c for c in COLUMNS if c not in columns]
            extra = [c for c in columns if c not in COLUMNS]
            differences = "; ".join(([f"it lacks {', '.join(missing)}"] if missing else [])
                                    + ([f"it has unknown {', '.join(extra)}"] if extra else [])
                                    or ["they are in another order"])
            # Not migrated: an older version's trials were measured by other code, and resuming
            # would mix them with this version's under the same keys.
            raise StoreError(f"{self.path} was written by an earlier development version of "
                             f"subpop-bench: its trials table does not have the columns of store "
                             f"schema {SCHEMA_VERSION} ({differences}). Keep it aside and run "
                             f"again into a new store (--store NEW.sqlite)")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def keys(self, scenario: str | None = None) -> set[str]:
        if scenario is None:
            return {k for (k,) in self.db.execute("SELECT key FROM trials")}
        return {k for (k,) in self.db.execute("SELECT key FROM trials WHERE scenario=?", (scenario,))}

    def add(self, rows: list[TrialRow]) -> int:
        """Insert rows in one transaction; rows whose key is stored already are skipped.
        Returns the number inserted."""
        now = time.time()
        with self.db:
            before = self.db.total_changes
            self.db.executemany(
                "INSERT OR IGNORE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(r.key, r.scenario, r.scenario_hash, r.target, r.target_name, r.alpha, r.trial,
                  r.defense, r.defense_version, r.defense_params, r.track, r.seed, r.status, r.error,
                  json.dumps(r.metrics), r.runtime_s, json.dumps(r.timing), now, r.environment) for r in rows])
            return self.db.total_changes - before

    def rows(self, scenario: str | None = None) -> list[dict]:
        """All trial rows as dicts (``metrics`` and ``timing`` decoded), optionally of one scenario.
        Metrics are deterministic given the trial; wall-clock seconds live in ``timing``."""
        query = "SELECT * FROM trials" + (" WHERE scenario=?" if scenario else "") + " ORDER BY key"
        cursor = self.db.execute(query, (scenario,) if scenario else ())
        names = [c[0] for c in cursor.description]
        out = []
        for values in cursor:
            row = dict(zip(names, values))
            row["metrics"] = json.loads(row["metrics"])
            row["timing"] = json.loads(row["timing"])
            out.append(row)
        return out

    def count(self, status: str | None = None) -> int:
        """The number of stored trials (with ``status``, when given)."""
        if status is None:
            return self.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM trials WHERE status=?", (status,)).fetchone()[0]

    def check(self) -> list[str]:
        """What is wrong with the store, one message per problem (empty: nothing): SQLite's
        integrity check, then no key stored twice and, for every row, JSON that decodes, a key
        that its fields give (so no trial is stored twice under two keys) and a status with a
        matching error and metrics. The schema was checked on opening."""
        problems: list[str] = []
        try:
            problems += [f"SQLite integrity check: {message}"
                         for (message,) in self.db.execute("PRAGMA integrity_check") if message != "ok"]
            if problems:  # the rows of a damaged file are not worth reading
                return problems
            problems += [f"key {key!r} is stored {n} times" for key, n in self.db.execute(
                "SELECT key, COUNT(*) FROM trials GROUP BY key HAVING COUNT(*) > 1")]
            cursor = self.db.execute("SELECT * FROM trials ORDER BY key")
            names = [c[0] for c in cursor.description]
            for values in cursor:
                row = dict(zip(names, values))
                problems += [f"trial {row['key']!r}: {p}" for p in _row_problems(row)]
        except sqlite3.DatabaseError as err:
            problems.append(f"SQLite cannot read the store: {err}")
        return problems


def _row_problems(row: dict) -> list[str]:
    from bench.runner import trial_key

    problems = []
    for column in _JSON_COLUMNS:
        try:
            row[column] = json.loads(row[column])
        except (TypeError, ValueError) as err:
            problems.append(f"{column} is not JSON ({err})")
    if problems:
        return problems
    ok = row["status"] == "ok"
    if row["status"] not in ("ok", "failed"):
        problems.append(f"unknown status {row['status']!r}")
    elif ok != (row["error"] is None) or ok != bool(row["metrics"]):
        problems.append(f"status {row['status']} with {'an' if row['error'] else 'no'} error and "
                        f"{'' if row['metrics'] else 'no '}metrics (an ok trial has metrics and no "
                        f"error, a failed one an error and no metrics)")
    key = trial_key(_Scenario(row["scenario"], row["scenario_hash"]), row["target"], row["alpha"],
                    row["trial"], _Defense(row["defense"], row["defense_params"]), row["track"])
    if row["key"] != key:
        problems.append(f"the key does not match the row's fields, which give {key!r}")
    return problems


@dataclass(frozen=True)
class _Scenario:
    """What :func:`bench.runner.trial_key` needs of a scenario spec."""

    id: str
    hash: str


@dataclass(frozen=True)
class _Defense:
    """What :func:`bench.runner.trial_key` needs of a defense: its name and hyper-parameters."""

    name: str
    params: dict

    def hyperparameters(self) -> dict:
        return self.params
