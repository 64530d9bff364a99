"""The workbench's state and every query the pages make: one SQLite file, PROJECTS_DIR/workbench.db,
in WAL mode so the job monitor, page views and several reviewers write at once without "database is
locked". The file and its WAL are the owner's alone (0600).

    from tunesmith.workbench import db
    con = db.connect(projects_dir)     # one connection per thread; rows behave like dicts
    db.project(con, "pantry-1a2b3c")   # the queries the routes run live here, by what they return
"""

from __future__ import annotations

import json
import os
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
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, csrf TEXT NOT NULL, signed_in INTEGER NOT NULL, key_id TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL
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
        if not os.path.exists(path):  # created 0600 here; SQLite gives its -wal and -shm the same mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
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


# ------------------------------------------------------------------------------ projects and jobs


def projects(con) -> list[dict]:
    """Every project, newest first, each with its last three jobs."""
    rows = all_(con, "SELECT * FROM projects ORDER BY created DESC")
    for p in rows:
        p["jobs"] = all_(con, "SELECT id, kind, status FROM jobs WHERE project=? ORDER BY id DESC LIMIT 3", p["id"])
    return rows


def project(con, pid: str) -> dict | None:
    p = one(con, "SELECT * FROM projects WHERE id=?", pid)
    if p is not None:
        p["summary"] = json.loads(p["summary"])
    return p


def project_insert(con, row: dict) -> None:
    con.execute(
        "INSERT INTO projects (id, name, kind, source, model, created, summary) VALUES "
        "(:id, :name, :kind, :source, :model, :created, :summary)",
        row,
    )


def job(con, jid: int) -> dict | None:
    j = one(con, "SELECT * FROM jobs WHERE id=?", jid)
    if j is not None:
        j["params"] = json.loads(j["params"])
    return j


def jobs_of(con, pid: str) -> list[dict]:
    rows = all_(con, "SELECT * FROM jobs WHERE project=? ORDER BY id DESC", pid)
    for j in rows:
        j["params"] = json.loads(j["params"])
    return rows


# ------------------------------------------------------------------------------ review


def reviewers(con, run_job: int) -> list[str]:
    sql = "SELECT DISTINCT r.reviewer FROM ratings r JOIN pairs p ON p.id=r.pair WHERE p.run_job=? ORDER BY 1"
    return [r["reviewer"] for r in all_(con, sql, run_job)]


def pair(con, pair_id: int, run_job: int) -> dict | None:
    return one(con, "SELECT * FROM pairs WHERE id=? AND run_job=?", pair_id, run_job)


# ------------------------------------------------------------------------------ sessions


def session(con, sid: str) -> dict | None:
    return one(con, "SELECT * FROM sessions WHERE id=?", sid)


def session_insert(con, row: dict) -> None:
    con.execute(
        "INSERT INTO sessions (id, csrf, signed_in, key_id, created, expires) "
        "VALUES (:id, :csrf, :signed_in, :key_id, :created, :expires)",
        row,
    )


def session_delete(con, sid: str) -> None:
    con.execute("DELETE FROM sessions WHERE id=?", (sid,))


def sessions_purge(con, now: float, key_id: str) -> None:
    """Drop expired sessions and those of another key."""
    con.execute("DELETE FROM sessions WHERE expires < ? OR key_id != ?", (now, key_id))
