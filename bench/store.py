"""The result store: one SQLite row per trial (DESIGN.md).

Rows are written in transactions, a chunk at a time, in WAL mode, so a run killed at any moment
leaves only whole rows; ``INSERT OR IGNORE`` on the trial key makes re-runs skip, never duplicate.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
DEFAULT_STORE = Path("subpop-bench-results") / "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
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
);
CREATE INDEX IF NOT EXISTS trials_by_run ON trials (scenario, defense, track);
"""


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
    """An SQLite file of trial rows. Open with ``Store(path)``; close with ``close()`` or ``with``."""

    def __init__(self, path: str | Path = DEFAULT_STORE):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            with self.db:
                self.db.executescript(_SCHEMA)
                row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreError(f"{self.path} has store schema {row[0]}; this version of "
                                     f"subpop-bench reads schema {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path} is not a subpop-bench result store: {err}") from err

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

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
