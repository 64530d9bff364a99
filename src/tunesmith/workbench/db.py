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
CREATE TABLE IF NOT EXISTS invitations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL, token TEXT NOT NULL UNIQUE, created REAL NOT NULL, expires REAL NOT NULL,
    revoked REAL, last_used REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

# Columns added after a table's first release: a workbench.db from before gains them on first connect.
# pairs.kind: "eval" (held-out outputs of compare's arms; never train) or "train" (a collection's
# sampled replies to training-split prompts). sessions.role: "owner" or "reviewer", with the
# invitation it came from. ratings.invitation: the invitation a reviewer rated through.
ADDED_COLUMNS = [
    ("pairs", "kind", "TEXT NOT NULL DEFAULT 'eval'"),
    ("sessions", "role", "TEXT NOT NULL DEFAULT 'owner'"),
    ("sessions", "invitation", "INTEGER"),
    ("ratings", "invitation", "INTEGER"),
]

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
        for table, column, decl in ADDED_COLUMNS:
            if column not in {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
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
    row = {"role": "owner", "invitation": None, **row}
    con.execute(
        "INSERT INTO sessions (id, csrf, signed_in, key_id, created, expires, role, invitation) "
        "VALUES (:id, :csrf, :signed_in, :key_id, :created, :expires, :role, :invitation)",
        row,
    )


def session_delete(con, sid: str) -> None:
    con.execute("DELETE FROM sessions WHERE id=?", (sid,))


def sessions_purge(con, now: float, key_id: str) -> None:
    """Drop expired sessions and those of another key."""
    con.execute("DELETE FROM sessions WHERE expires < ? OR key_id != ?", (now, key_id))


# ------------------------------------------------------------------------------ invitations


def invitation_insert(con, project: str, name: str, token_hash: str, created: float, expires: float) -> int:
    return con.execute(
        "INSERT INTO invitations (project, name, token, created, expires) VALUES (?,?,?,?,?)",
        (project, name, token_hash, created, expires),
    ).lastrowid


def invitation(con, iid: int) -> dict | None:
    return one(con, "SELECT * FROM invitations WHERE id=?", iid)


def invitation_by_token(con, token_hash: str) -> dict | None:
    return one(con, "SELECT * FROM invitations WHERE token=?", token_hash)


def invitations_of(con, project: str) -> list[dict]:
    """A project's invitations, newest first, each with how many ratings came through it."""
    return all_(
        con,
        "SELECT i.id, i.project, i.name, i.created, i.expires, i.revoked, i.last_used, "
        "(SELECT COUNT(*) FROM ratings r WHERE r.invitation=i.id) AS ratings "
        "FROM invitations i WHERE i.project=? ORDER BY i.id DESC",
        project,
    )


def invitation_used(con, iid: int, at: float) -> None:
    con.execute("UPDATE invitations SET last_used=? WHERE id=?", (at, iid))


def invitation_revoke(con, iid: int, at: float) -> None:
    """Revoked now: the invitation's sessions admit nothing from their next request on, which is
    answered with the page saying so (security.Sessions.invitation_of), then they are deleted."""
    con.execute("UPDATE invitations SET revoked=? WHERE id=? AND revoked IS NULL", (at, iid))


# ------------------------------------------------------------------------------ the audit log

# The only statement that writes the audit table; its triggers refuse UPDATE and DELETE.


def audit(con, who: str, action: str, target: str = "", detail: str = "", at: float | None = None) -> None:
    import time

    con.execute(
        "INSERT INTO audit (at, who, action, target, detail) VALUES (?,?,?,?,?)",
        (time.time() if at is None else at, who, action, str(target), detail[:500]),
    )


def audit_rows(con, limit: int = 500, before: int | None = None) -> list[dict]:
    """The newest `limit` entries (older than id `before`, when given)."""
    if before is None:
        return all_(con, "SELECT * FROM audit ORDER BY id DESC LIMIT ?", limit)
    return all_(con, "SELECT * FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?", before, limit)
