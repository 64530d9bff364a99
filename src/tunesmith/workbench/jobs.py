"""Jobs: check, train, compare and export as separate processes, one at a time, queued otherwise.

    runner = Runner(projects_dir); runner.start()     # reconciles, then a monitor thread
    jid = submit(con, project, "train", {...}, argv=[...]); runner.wake()

A job's row holds its pid and the process's start time (from /proc), so after a server restart
a pid that is alive *and* started when ours did is still our job (it keeps running: jobs live in
their own session and outlive the server); anything else is a process that is gone. How it ended
comes from JOB_DIR/rc, which the worker writes last: 0 done, 143 stopped (SIGTERM; training saved
a checkpoint), other failed, no rc interrupted. A stopped or interrupted training job resumes from
its last complete checkpoint (`tunesmith train --resume`, which is exact).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tunesmith import rundir
from tunesmith.workbench import db
from tunesmith.workbench.projects import project_dir

KINDS = ("check", "train", "compare", "export")
ACTIVE = ("queued", "running")
ENDED = {0: "done", 143: "stopped"}


def job_dir(projects_dir: Path, job: dict) -> Path:
    return project_dir(projects_dir, job["project"]) / "jobs" / str(job["id"])


def submit(
    projects_dir: Path, project: str, kind: str, make_spec, parent: int | None = None, params: dict | None = None
) -> int:
    """Queue a job. make_spec(job id, job dir) -> (spec, run_dir): what the worker runs ({"argv": [...]}
    or {"check": {...}}) and the run directory the job writes, if any. Returns the job's id."""
    con = db.connect(projects_dir)
    cur = con.execute(
        "INSERT INTO jobs (project, kind, status, params, parent, created) VALUES (?,?,?,?,?,?)",
        (project, kind, "preparing", json.dumps(params or {}), parent, time.time()),
    )
    jid = cur.lastrowid
    d = job_dir(projects_dir, {"id": jid, "project": project})
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        spec, run_dir = make_spec(jid, d)
    except BaseException:
        con.execute("DELETE FROM jobs WHERE id=?", (jid,))
        import shutil

        shutil.rmtree(d, ignore_errors=True)
        raise
    (d / "job.json").write_text(json.dumps(spec, indent=1))
    (d / "job.json").chmod(0o600)
    con.execute("UPDATE jobs SET status='queued', run_dir=? WHERE id=?", (str(run_dir) if run_dir else None, jid))
    return jid


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    if fields and fields[0] == "Z":  # a zombie has finished
        return None
    return int(fields[19])


def alive(job: dict) -> bool:
    if not job.get("pid"):
        return False
    if Path("/proc").is_dir():
        return job["pid_start"] is not None and process_start(job["pid"]) == job["pid_start"]
    try:  # no /proc (macOS): a live pid is the best evidence there is
        os.kill(job["pid"], 0)
        return True
    except OSError:
        return False


class Runner:
    """The queue's one consumer: starts the oldest queued job when nothing runs, notices endings."""

    def __init__(self, projects_dir: Path, poll_s: float = 0.5, env: dict | None = None):
        self.projects_dir = Path(projects_dir)
        self.poll_s = poll_s
        self.env = env
        self.children: dict[int, subprocess.Popen] = {}  # jobs this server started (reaped by poll)
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Take PROJECTS_DIR's runner lock (two servers on one folder would each start jobs), settle
        jobs a crash left half-made, then watch the queue."""
        import fcntl

        from tunesmith import UserError

        self.lock_file = open(self.projects_dir / ".runner.lock", "a+")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{self.projects_dir}: another workbench is already running jobs for this folder. "
                f"fix: stop it, or give this one another PROJECTS_DIR."
            ) from None
        db.connect(self.projects_dir).execute(
            "UPDATE jobs SET status='failed', message='the server stopped while it was queueing this job' "
            "WHERE status='preparing'"
        )
        self.tick()
        self.thread = threading.Thread(target=self._loop, name="tunesmith-jobs", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.event.set()
        if self.thread:
            self.thread.join(timeout=5)
        if getattr(self, "lock_file", None):
            self.lock_file.close()  # releases the lock

    def wake(self) -> None:
        self.event.set()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.event.wait(self.poll_s)
            self.event.clear()
            try:
                self.tick()
            except Exception:  # the monitor must outlive one bad row; the error goes to the log
                import traceback

                traceback.print_exc()

    def tick(self) -> None:
        """Mark ended jobs, then start the next queued one if none runs."""
        with self.lock:
            con = db.connect(self.projects_dir)
            for job in db.all_(con, "SELECT * FROM jobs WHERE status='running'"):
                child = self.children.get(job["id"])
                running = child.poll() is None if child is not None else alive(job)
                if not running:
                    self.children.pop(job["id"], None)
                    self._ended(con, job)
            if db.one(con, "SELECT id FROM jobs WHERE status='running'"):
                return
            nxt = db.one(con, "SELECT * FROM jobs WHERE status='queued' ORDER BY id LIMIT 1")
            if nxt:
                self._launch(con, nxt)

    def _ended(self, con, job: dict) -> None:
        d = job_dir(self.projects_dir, job)
        try:
            rc = int((d / "rc").read_text())
        except (FileNotFoundError, ValueError):
            rc = None
        status = "interrupted" if rc is None else ENDED.get(rc, "failed")
        message = ""
        if status == "failed":
            message = _error_line(d / "log.txt") or f"exit code {rc}"
        elif status == "interrupted":
            message = "the job's process ended without finishing (killed, or the machine restarted)"
        con.execute(
            "UPDATE jobs SET status=?, rc=?, ended=?, message=? WHERE id=?",
            (status, rc, time.time(), message, job["id"]),
        )

    def _launch(self, con, job: dict) -> None:
        d = job_dir(self.projects_dir, job)
        (d / "rc").unlink(missing_ok=True)
        env = dict(self.env if self.env is not None else os.environ)
        src = str(Path(__file__).resolve().parents[2])  # the tunesmith this server runs, even from a checkout
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with os.fdopen(os.open(d / "log.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
            log.write(f"\n--- started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log.flush()
            # Its own session: the job outlives the server and a Ctrl-C meant for the server.
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunesmith.workbench.worker", str(d)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(project_dir(self.projects_dir, job["project"])),
                start_new_session=True,
                umask=0o077,  # what a job writes under PROJECTS_DIR is the owner's alone
            )
        self.children[job["id"]] = proc
        con.execute(
            "UPDATE jobs SET status='running', pid=?, pid_start=?, started=?, ended=NULL, rc=NULL, message='' "
            "WHERE id=?",
            (proc.pid, process_start(proc.pid), time.time(), job["id"]),
        )

    # ---------------------------------------------------------------------------------- actions

    def stop(self, job: dict) -> None:
        """A queued job is cancelled; a running one gets SIGTERM (training saves a checkpoint, then exits)."""
        with self.lock:
            con = db.connect(self.projects_dir)
            if job["status"] == "queued":
                con.execute("UPDATE jobs SET status='stopped', ended=? WHERE id=?", (time.time(), job["id"]))
            elif job["status"] == "running" and alive(job):
                try:
                    os.killpg(job["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.wake()

    def resume(self, job: dict) -> None:
        """Queue a stopped/interrupted/failed training job again, continuing from its checkpoint."""
        spec_path = job_dir(self.projects_dir, job) / "job.json"
        spec = json.loads(spec_path.read_text())
        if "--resume" not in spec["argv"]:
            spec["argv"].append("--resume")
        spec_path.write_text(json.dumps(spec, indent=1))
        with self.lock:
            db.connect(self.projects_dir).execute(
                "UPDATE jobs SET status='queued', pid=NULL, pid_start=NULL, rc=NULL, ended=NULL, message='' WHERE id=?",
                (job["id"],),
            )
        self.wake()


def _error_line(log: Path) -> str:
    """The last `error: …` line of a job's log, or its last non-empty line."""
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except FileNotFoundError:
        return ""
    for line in reversed(lines[-200:]):
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    return lines[-1].strip() if lines else ""


def has_checkpoint(run_dir: str | None) -> bool:
    if not run_dir:
        return False
    from tunesmith.train import latest_checkpoint  # re-exported there; the module layout may change

    return latest_checkpoint(Path(run_dir)) is not None


def read_metrics(run_dir: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete new lines of RUN/metrics.jsonl from byte `offset`: (rows, new offset). A half-written
    last line waits for the next read."""
    path = Path(run_dir) / rundir.METRICS
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    if os.path.getsize(path) < offset:  # a resume truncates the file to its checkpoint's step: start over
        return read_metrics(run_dir, 0)
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows, offset + end
