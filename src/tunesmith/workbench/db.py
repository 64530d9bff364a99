"""The workbench's state: one SQLite file, PROJECTS_DIR/workbench.db, in WAL mode so the job
monitor, page views and several reviewers write at once without "database is locked".

    from tunesmith.workbench import db
    con = db.connect(projects_dir)     # one connection per thread; rows behave like dicts
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
    model TEXT NOT NULL, created REAL NOT NULL, summary TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL REFERENCES projects(id),
    kind TEXT NOT NULL, status TEXT NOT NULL, params TEXT NOT NULL DEFAULT '{}',
    run_dir TEXT, parent INTEGER, pid INTEGER, pid_start INTEGER, rc INTEGER,
    created REAL NOT NULL, started REAL, ended REAL, message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_job INTEGER NOT NULL REFERENCES jobs(id),
    example INTEGER NOT NULL, arm_x TEXT NOT NULL, arm_y TEXT NOT NULL,
    UNIQUE (run_job, example, arm_x, arm_y)
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair INTEGER NOT NULL REFERENCES pairs(id),
    reviewer TEXT NOT NULL, shown_a TEXT NOT NULL, choice TEXT NOT NULL, winner TEXT,
    tags TEXT NOT NULL DEFAULT '', comment TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
    UNIQUE (pair, reviewer)
);
"""

_local = threading.local()


def connect(projects_dir: str | Path) -> sqlite3.Connection:
    """This thread's connection to PROJECTS_DIR/workbench.db (created on first use)."""
    Path(projects_dir).mkdir(parents=True, exist_ok=True)
    path = str(Path(projects_dir).resolve() / "workbench.db")
    cache = getattr(_local, "cons", None)
    if cache is None:
        cache = _local.cons = {}
    con = cache.get(path)
    if con is None:
        con = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit; BEGIN where needed
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commit, never corrupts
        con.execute("PRAGMA foreign_keys=ON")
        con.executescript(SCHEMA)
        cache[path] = con
    return con


def one(con: sqlite3.Connection, sql: str, *args) -> dict | None:
    row = con.execute(sql, args).fetchone()
    return dict(row) if row is not None else None


def all_(con: sqlite3.Connection, sql: str, *args) -> list[dict]:
    return [dict(r) for r in con.execute(sql, args).fetchall()]
