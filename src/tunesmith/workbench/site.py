"""What every page of the workbench shares: where the projects live, the templates, the job queue,
the owner's policy, the session behind each page, and looking up a project, job or verdict.

    site = Site(root, ...); site.page(request, "index.html", projects=...)
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

from tunesmith import UserError, rundir
from tunesmith.workbench import db, jobs
from tunesmith.workbench.contract import Policy
from tunesmith.workbench.security import SESSION_COOKIE, Refused, Sessions, SignInLimit

HERE = Path(__file__).parent
# Past this size a check report is summarised, never loaded: one project must not stall the server.
MAX_CHECK_BYTES = 2 << 20


@dataclasses.dataclass
class Site:
    root: Path
    api_key: str | None
    policy: Policy
    sessions: Sessions
    runner: jobs.Runner
    max_upload_bytes: int
    max_records: int
    signin: SignInLimit = dataclasses.field(default_factory=SignInLimit)
    report_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    env: object = None
    chat: object = None

    def __post_init__(self):
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        from tunesmith.data.check import duration
        from tunesmith.data.validate import CODES
        from tunesmith.workbench.views import Chat, num, pct

        self.chat = Chat()
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
        env.filters["pct"] = pct
        env.filters["num"] = num
        env.globals["duration"] = duration
        env.globals["usd"] = lambda v: (
            "under $0.0001" if v < 1e-4 else f"about ${v:.4f}" if v < 1 else f"about ${v:,.2f}"
        )
        env.globals["fixes"] = {code: fix for code, (_, fix) in CODES.items()}
        env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""
        env.filters["when_s"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""
        self.env = env

    @property
    def default_model(self) -> str:
        return self.policy.default_model

    def con(self):
        return db.connect(self.root)

    # ------------------------------------------------------------------ pages

    def page(self, request, name: str, status: int = 200, **ctx):
        """A template rendered with the CSRF token of the request's session (a new anonymous one,
        with its cookie, for a browser that has none yet)."""
        from fastapi.responses import HTMLResponse

        state = request.scope.setdefault("state", {})
        session, token = state.get("session"), None
        if session is None:
            token, session = self.sessions.new(signed_in=False)
            state["session"] = session
        viewer = state.get("reviewer") if state.get("auth") == "reviewer" else None  # a reviewer's invitation
        html = self.env.get_template(name).render(
            csrf=session["csrf"],
            signed_in=(bool(self.api_key) and state.get("auth") != "ended") or viewer is not None,
            viewer=viewer,
            owner=state.get("auth") in ("open", "bearer", "session"),
            request=request,
            base=request.scope.get("root_path", ""),
            **ctx,
        )
        resp = HTMLResponse(html, status_code=status)
        if token:
            resp.set_cookie(SESSION_COOKIE, token, **cookie_flags(request, hours=None))
        return resp

    # ------------------------------------------------------------------ lookups

    def project(self, pid: str) -> dict:
        p = db.project(self.con(), pid)
        if p is None:
            raise Refused(404, f"No project '{pid}'.")
        return p

    def job(self, jid: int, pid: str | None = None) -> dict:
        j = db.job(self.con(), jid)
        if j is None or (pid is not None and j["project"] != pid):
            raise Refused(404, f"No job {jid}.")
        return j

    def run_of(self, pid: str, jid: int, finished_for: str = "") -> dict:
        """The training job `jid` of project `pid`; with `finished_for` (what the caller does with it,
        e.g. "chat needs"), refused unless the run has finished."""
        j = self.job(jid, pid)
        if j["kind"] != "train" or not j["run_dir"]:
            raise Refused(404, f"Job {jid} is not a training run.")
        if finished_for and j["status"] != "done":
            raise UserError(f"run {jid} is {j['status']}; {finished_for} a finished run.")
        return j

    def collection(self, pid: str, cid: int) -> dict:
        j = self.job(cid, pid)
        if j["kind"] != "collect":
            raise Refused(404, f"Job {cid} is not a collection of preference pairs.")
        return j

    def collection_files(self, pid: str, cid: int) -> tuple[dict, list[dict], list[dict]]:
        """(the collection's job, its samples, its training pairs): pairs stored on first use through
        collect.store_train_pairs, which refuses a held-out prompt."""
        from tunesmith.workbench import collect

        j = self.collection(pid, cid)
        if j["status"] != "done":
            raise Refused(409, f"Collection {cid} is {j['status']}; its pairs are there once the job is done.")
        samples = collect.read_samples(jobs.job_dir(self.root, j))
        con = self.con()
        pairs = db.all_(con, "SELECT * FROM pairs WHERE run_job=? AND kind='train' ORDER BY id", cid)
        if not pairs:
            config = jobs.job_dir(self.root, self.job(j["parent"])) / "config.yaml"  # the run's, as it trained
            pairs = collect.store_train_pairs(con, cid, samples, collect.heldout_keys(config))
        return j, samples, pairs

    def verdict_files(self, pid: str, jid: int):
        j = self.run_of(pid, jid)
        cdir = Path(j["run_dir"]) / rundir.COMPARE
        if not (cdir / rundir.RESULTS).exists():
            raise Refused(404, f"Run {jid} has no verdict yet: start Compare on the project page.")
        results = json.loads((cdir / rundir.RESULTS).read_text())
        samples = [json.loads(x) for x in (cdir / rundir.SAMPLES).read_text().splitlines() if x.strip()]
        return j, cdir, results, samples

    def check_report(self, folder: Path) -> dict | None:
        """check.json, or a stand-in saying it is too large to show (never read whole if so)."""
        path = folder / "check.json"
        if not path.exists():
            return None
        size = path.stat().st_size
        if size > MAX_CHECK_BYTES:
            return {"too_large": size}
        return json.loads(path.read_text())


def cookie_flags(request, hours: int | None) -> dict:
    return {
        "httponly": True,
        "samesite": "strict",
        "path": "/",
        "max_age": hours * 3600 if hours else None,
        "secure": request.url.scheme == "https",
    }
