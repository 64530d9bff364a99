"""The workbench's web app: projects, check, training jobs with a live curve, the verdict, blind
review, chat and export — server-rendered pages over the same stage functions as the CLI.

    tunesmith ui [PROJECTS_DIR] [--host 127.0.0.1] [--port 8700] [--api-key KEY]
    from tunesmith.workbench.app import create_app
    app = create_app("projects", api_key="secret")     # any ASGI server runs it

Security. With an API key every route but /login and /health answers 401 unless the request
carries `Authorization: Bearer KEY` (API clients) or the session cookie the login page sets
(HttpOnly, SameSite=Strict). Every state-changing request from a browser carries a CSRF token
(form field `csrf_token` or header `X-CSRF-Token`) bound to a cookie; Bearer requests need none,
since a browser never adds that header by itself. Uploads stream to PROJECTS_DIR with a size limit;
nothing is written outside PROJECTS_DIR.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import urllib.parse
from pathlib import Path

from tunesmith import UserError
from tunesmith.workbench import db, jobs, review
from tunesmith.workbench.projects import DATASET_SUFFIXES, config_path, create_project, project_dir
from tunesmith.workbench.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_HOURS,
    Auth,
    MountedAt,
    Refused,
    new_session,
    read_form,
    secret_key,
)
from tunesmith.workbench.views import (
    Chat,
    as_form,
    config_values,
    glossary_marker,
    markdown,
    num,
    pct,
    progress,
    verified_line,
)

HERE = Path(__file__).parent

# Training presets: what each sets on top of the project's config. Checkpoints every few steps so
# an interrupted job can resume; held-out loss every so often for the curve.
PRESETS = {
    "quick": {"train.max_steps": "30", "train.save_every": "10", "train.eval_every": "10"},
    "standard": {"train.epochs": "1", "train.max_steps": "0", "train.save_every": "25", "train.eval_every": "25"},
    "thorough": {"train.epochs": "3", "train.max_steps": "0", "train.save_every": "50", "train.eval_every": "50"},
}
# The config keys the advanced form shows (every other key keeps the project's value).
FORM_SECTIONS = ("model", "train", "lora")
FORM_DATA_KEYS = ("data.max_len", "data.too_long", "data.heldout_fraction", "data.seed")
COMPARE_DEFAULTS = {"compare.max_examples": "20", "generate.max_new_tokens": "128", "generate.temperature": "0"}


def create_app(
    projects_dir,
    *,
    api_key: str | None = None,
    max_upload_bytes: int = 200 * 2**20,
    model: str | None = None,
    run_jobs: bool = True,
    job_env: dict | None = None,
):
    """The workbench over PROJECTS_DIR (created if missing). run_jobs=False leaves the queue alone (tests)."""
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
        StreamingResponse,
    )
    from fastapi.staticfiles import StaticFiles
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from tunesmith.data.check import _duration
    from tunesmith.data.validate import CODES
    from tunesmith.models import DEFAULT_MODEL

    root = Path(projects_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UserError(
            f"{root}: a file, not a projects directory. fix: name a directory (it is created if "
            f"missing), e.g. {root.parent / 'projects'}."
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / "projects").mkdir(exist_ok=True)
    (root / ".uploads").mkdir(exist_ok=True)  # uploads land here first: never in the system's temp dir
    secret = secret_key(root)
    default_model = model or DEFAULT_MODEL
    runner = jobs.Runner(root, env=job_env)
    report_lock = threading.Lock()
    chat = Chat()
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["pct"] = pct
    env.filters["num"] = num
    env.globals["duration"] = _duration
    env.globals["usd"] = lambda v: "under $0.0001" if v < 1e-4 else f"about ${v:.4f}" if v < 1 else f"about ${v:,.2f}"
    env.globals["fixes"] = {code: fix for code, (_, fix) in CODES.items()}
    env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if run_jobs:
            runner.start()
        yield
        runner.close()

    app = FastAPI(title="tunesmith workbench", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runner, app.state.root = runner, root

    # ------------------------------------------------------------------ auth, CSRF, pages

    def csrf_token(request: Request) -> str:
        seed = request.cookies.get(CSRF_COOKIE) or request.scope.setdefault("state", {}).get("new_csrf", "")
        return hmac.new(secret, b"csrf:" + seed.encode(), hashlib.sha256).hexdigest()

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        state = request.scope.setdefault("state", {})
        if not request.cookies.get(CSRF_COOKIE) and "new_csrf" not in state:
            state["new_csrf"] = secrets.token_urlsafe(32)
        html = env.get_template(name).render(
            csrf=csrf_token(request),
            signed_in=bool(api_key),
            request=request,
            base=request.scope.get("root_path", ""),
            **ctx,
        )
        resp = HTMLResponse(html, status_code=status)
        if "new_csrf" in state:
            resp.set_cookie(CSRF_COOKIE, state["new_csrf"], httponly=True, samesite="strict", path="/")
        return resp

    async def guard(request: Request):
        """Every state-changing browser request carries the CSRF token of its cookie."""
        if request.method in ("GET", "HEAD", "OPTIONS") or request.scope.get("state", {}).get("auth") == "bearer":
            return
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            sent = (await read_form(request)).get("csrf_token")
        seed = request.cookies.get(CSRF_COOKIE)
        if not seed or not sent or not hmac.compare_digest(sent, csrf_token(request)):
            raise Refused(403, "Missing or stale CSRF token: reload the page and try again.")

    app.router.dependencies.append(Depends(guard))
    app.add_middleware(Auth, api_key=api_key, secret=secret)
    app.add_middleware(MountedAt)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(Refused)
    async def _refused(request, exc: "Refused"):
        if "text/html" in request.headers.get("accept", ""):
            return page(request, "message.html", status=exc.status, title=f"{exc.status}", message=exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(request, exc: UserError):
        if "text/html" in request.headers.get("accept", ""):
            return page(request, "message.html", status=400, title="That did not work", message=str(exc))
        return JSONResponse({"error": str(exc)}, status_code=400)

    # ------------------------------------------------------------------ sign-in

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request):
        return page(request, "login.html", error="")

    @app.post("/login")
    async def login(request: Request):
        form = await read_form(request)
        if not api_key:
            return RedirectResponse("/", status_code=303)
        if not hmac.compare_digest(form.get("key", "").encode(), api_key.encode()):
            return page(request, "login.html", status=401, error="That is not the key this workbench was started with.")
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(
            SESSION_COOKIE,
            new_session(secret, api_key),
            httponly=True,
            samesite="strict",
            path="/",
            max_age=SESSION_HOURS * 3600,
            secure=request.url.scheme == "https",
        )
        return resp

    @app.post("/logout")
    async def logout(request: Request):
        resp = RedirectResponse("/login" if api_key else "/", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ projects

    def con():
        return db.connect(root)

    def get_project(pid: str) -> dict:
        p = db.one(con(), "SELECT * FROM projects WHERE id=?", pid)
        if p is None:
            raise Refused(404, f"No project '{pid}'.")
        p["summary"] = json.loads(p["summary"])
        return p

    def get_job(jid: int, pid: str | None = None) -> dict:
        j = db.one(con(), "SELECT * FROM jobs WHERE id=?", jid)
        if j is None or (pid is not None and j["project"] != pid):
            raise Refused(404, f"No job {jid}.")
        j["params"] = json.loads(j["params"])
        return j

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request):
        projects = db.all_(con(), "SELECT * FROM projects ORDER BY created DESC")
        for p in projects:
            p["jobs"] = db.all_(
                con(), "SELECT id, kind, status FROM jobs WHERE project=? ORDER BY id DESC LIMIT 3", p["id"]
            )
        return page(
            request,
            "index.html",
            projects=projects,
            default_model=default_model,
            suffixes=", ".join((".zip",) + DATASET_SUFFIXES),
            limit_mb=max_upload_bytes // 2**20,
        )

    @app.post("/api/projects")
    async def new_project(request: Request, name: str = "", filename: str = "", model: str = ""):
        """The upload is the raw request body (the page sends the file with fetch), streamed to
        PROJECTS_DIR/.uploads with the size limit enforced as it arrives."""
        if not filename:
            raise UserError("no file name. fix: send ?filename=NAME.zip (or .jsonl, .csv …) with the file as the body.")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload_bytes:
            raise Refused(
                413, f"{filename}: {int(declared):,} bytes; the limit is {max_upload_bytes:,} (ui --max-upload-mb)."
            )
        tmp = root / ".uploads" / secrets.token_hex(8)
        try:
            size = 0
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_upload_bytes:
                        raise Refused(413, f"{filename}: over the upload limit of {max_upload_bytes:,} bytes.")
                    f.write(chunk)
            if size == 0:
                raise UserError(f"{filename}: the upload is empty.")
            row = await asyncio.to_thread(
                create_project, root, name.strip(), tmp, Path(filename).name, model.strip() or default_model
            )
        finally:
            tmp.unlink(missing_ok=True)
        con().execute(
            "INSERT INTO projects (id, name, kind, source, model, created, summary) VALUES "
            "(:id, :name, :kind, :source, :model, :created, :summary)",
            row,
        )
        submit_check(row["id"])
        return {"id": row["id"], "url": f"{request.scope.get('root_path', '')}/p/{row['id']}"}

    def submit_check(pid: str) -> int:
        folder = project_dir(root, pid)
        jid = jobs.submit(
            root,
            pid,
            "check",
            lambda jid, d: (
                {"check": {"config": str(config_path(root, pid)), "out": str(folder / "check.json")}},
                None,
            ),
        )
        runner.wake()
        return jid

    @app.post("/p/{pid}/check")
    async def recheck(request: Request, pid: str):
        get_project(pid)
        submit_check(pid)
        return RedirectResponse(f"/p/{pid}", status_code=303)

    @app.get("/p/{pid}", response_class=HTMLResponse)
    async def project(request: Request, pid: str, error: str = ""):
        return project_page(request, pid, error=error)

    def project_page(request, pid: str, error: str = "", status: int = 200, values: dict | None = None):
        from tunesmith.config import field_docs, load_config

        p = get_project(pid)
        folder = project_dir(root, pid)
        check = json.loads((folder / "check.json").read_text()) if (folder / "check.json").exists() else None
        rows = db.all_(con(), "SELECT * FROM jobs WHERE project=? ORDER BY id DESC", pid)
        for j in rows:
            j["params"] = json.loads(j["params"])
            j["resumable"] = (
                j["kind"] == "train"
                and j["status"] in ("stopped", "interrupted", "failed")
                and jobs.has_checkpoint(j["run_dir"])
            )
            j["finished"] = j["kind"] == "train" and j["status"] == "done"
            j["compared"] = bool(j["run_dir"]) and (Path(j["run_dir"]) / "compare" / "results.json").exists()
            j["verified"] = (
                verified_line(jobs.job_dir(root, j) / "log.txt")
                if j["kind"] == "export" and j["status"] == "done"
                else ""
            )
        checking = any(j["kind"] == "check" and j["status"] in jobs.ACTIVE for j in rows)
        cfg = load_config(config_path(root, pid))
        current = {k: v for k, _, v, _ in config_values(cfg)}
        fields = [
            {"key": k, "type": t, "value": (values or {}).get(k, current[k]), "doc": d}
            for k, t, _, d in field_docs()
            if k.split(".")[0] in FORM_SECTIONS or k in FORM_DATA_KEYS
        ]
        return page(
            request,
            "project.html",
            status=status,
            p=p,
            check=check,
            checking=checking,
            jobs=rows,
            fields=fields,
            presets=PRESETS,
            error=error,
            compare_defaults=COMPARE_DEFAULTS,
            skip_keys={"train.output_dir"},
        )

    # ------------------------------------------------------------------ jobs

    @app.post("/p/{pid}/train")
    async def start_training(request: Request, pid: str):
        from tunesmith.config import load_config, save_config

        get_project(pid)
        form = await read_form(request)
        base = config_path(root, pid)
        cfg0 = load_config(base)
        current = {k: v for k, _, v, _ in config_values(cfg0)}
        preset = form.get("preset", "quick")
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; one of {', '.join(PRESETS)}.")
        overrides = [f"{k}={v}" for k, v in PRESETS[preset].items()]
        for key, value in form.items():
            if key.startswith("cfg.") and key[4:] in current and key[4:] != "train.output_dir":
                if str(value) != as_form(current[key[4:]]):
                    overrides.append(f"{key[4:]}={value}")
        try:
            cfg = load_config(base, overrides)  # the CLI's own validation
        except UserError as exc:
            values = {k[4:]: v for k, v in form.items() if k.startswith("cfg.")}
            return project_page(request, pid, error=str(exc), status=400, values=values)

        def spec(jid, d):
            cfg.train.output_dir = str(project_dir(root, pid) / "runs" / str(jid))
            save_config(cfg, d / "config.yaml")
            return {"argv": ["train", str(d / "config.yaml")]}, cfg.train.output_dir

        jobs.submit(root, pid, "train", spec, params={"preset": preset, "overrides": overrides})
        runner.wake()
        return RedirectResponse(f"/p/{pid}", status_code=303)

    @app.post("/jobs/{jid}/stop")
    async def stop_job(request: Request, jid: int):
        j = get_job(jid)
        runner.stop(j)
        return _back(request, f"/p/{j['project']}", {"status": "stopping"})

    @app.post("/jobs/{jid}/resume")
    async def resume_job(request: Request, jid: int):
        j = get_job(jid)
        if j["kind"] != "train" or j["status"] not in ("stopped", "interrupted", "failed"):
            raise UserError(f"job {jid} is {j['status']}; only a stopped, interrupted or failed training job resumes.")
        if not jobs.has_checkpoint(j["run_dir"]):
            raise UserError(
                f"job {jid} saved no complete checkpoint before it ended, so there is nothing to resume "
                f"from. fix: start a new training run (with train.save_every set)."
            )
        runner.resume(j)
        return _back(request, f"/p/{j['project']}", {"status": "queued"})

    @app.get("/api/jobs/{jid}")
    async def job_json(jid: int):
        j = get_job(jid)
        rows, _ = jobs.read_metrics(j["run_dir"]) if j["run_dir"] else ([], 0)
        return {**j, "alive": jobs.alive(j), "metrics": rows, "progress": progress(j, rows)}

    @app.get("/jobs/{jid}/log", response_class=PlainTextResponse)
    async def job_log(jid: int):
        path = jobs.job_dir(root, get_job(jid)) / "log.txt"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-20000:]

    @app.get("/jobs/{jid}/events")
    async def job_events(request: Request, jid: int):
        """Server-sent events: `metric` for every new metrics.jsonl row, `status` when it changes
        (with steps, total and ETA); the stream ends when the job does."""
        get_job(jid)

        async def events():
            offset, last, rows = 0, None, []
            while True:
                j = get_job(jid)
                if j["run_dir"]:
                    new, offset = jobs.read_metrics(j["run_dir"], offset)
                    if new and rows and new[0]["step"] <= rows[-1]["step"]:  # a resume rewound the file
                        rows = [r for r in rows if r["step"] < new[0]["step"]]
                    rows += new
                    for r in new:
                        yield f"event: metric\ndata: {json.dumps(r)}\n\n"
                state = {"status": j["status"], "message": j["message"], **progress(j, rows)}
                if state != last:
                    yield f"event: status\ndata: {json.dumps(state)}\n\n"
                    last = state
                if j["status"] not in jobs.ACTIVE and j["status"] != "preparing":
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    # ------------------------------------------------------------------ compare and the verdict

    def run_of(pid: str, jid: int) -> dict:
        j = get_job(jid, pid)
        if j["kind"] != "train" or not j["run_dir"]:
            raise Refused(404, f"Job {jid} is not a training run.")
        return j

    def verdict_files(pid: str, jid: int):
        j = run_of(pid, jid)
        cdir = Path(j["run_dir"]) / "compare"
        if not (cdir / "results.json").exists():
            raise Refused(404, f"Run {jid} has no verdict yet: start Compare on the project page.")
        results = json.loads((cdir / "results.json").read_text())
        samples = [json.loads(x) for x in (cdir / "samples.jsonl").read_text().splitlines() if x.strip()]
        return j, cdir, results, samples

    @app.post("/p/{pid}/compare/{jid}")
    async def start_compare(request: Request, pid: str, jid: int):
        from tunesmith.config import load_config

        run = run_of(pid, jid)
        if run["status"] != "done":
            raise UserError(f"run {jid} is {run['status']}; compare needs a finished training run.")
        form = await read_form(request)
        cfg_file = str(jobs.job_dir(root, run) / "config.yaml")
        overrides = [f"compare.output_dir={Path(run['run_dir']) / 'compare'}"]
        overrides += [f"{k}={form.get(k, v)}" for k, v in COMPARE_DEFAULTS.items()]
        load_config(cfg_file, overrides)  # refuse a bad value now, not in the job
        jobs.submit(
            root,
            pid,
            "compare",
            lambda cid, d: ({"argv": ["compare", cfg_file, *overrides, "--run", run["run_dir"]]}, None),
            parent=jid,
        )
        runner.wake()
        return RedirectResponse(f"/p/{pid}", status_code=303)

    @app.get("/p/{pid}/verdict/{jid}", response_class=HTMLResponse)
    async def verdict(request: Request, pid: str, jid: int, task: str = ""):
        p = get_project(pid)
        j, cdir, results, samples = verdict_files(pid, jid)
        tasks = sorted({(s.get("meta") or {}).get("task", "") for s in samples})
        shown = [s for s in samples if not task or (s.get("meta") or {}).get("task", "") == task]
        marker = glossary_marker(j)
        arms = [n for n, a in results["arms"].items() if a.get("status") == "ok"]
        return page(
            request,
            "verdict.html",
            p=p,
            job=j,
            results=results,
            samples=shown,
            tasks=tasks,
            task=task,
            arms=arms,
            mark=marker,
            primary=results.get("primary_metric", "chrf"),
        )

    @app.get("/p/{pid}/report/{jid}")
    async def report_file(pid: str, jid: int):
        _, cdir, _, _ = verdict_files(pid, jid)
        return FileResponse(
            cdir / "report.html",
            media_type="text/html",
            headers={
                "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
            },
        )

    # ------------------------------------------------------------------ blind review

    @app.get("/p/{pid}/review/{jid}", response_class=HTMLResponse)
    async def review_page(request: Request, pid: str, jid: int, reviewer: str = "", skip: int = 0):
        p = get_project(pid)
        j, cdir, results, samples = verdict_files(pid, jid)
        review.ensure_pairs(con(), jid, samples, results)
        reviewer = reviewer.strip()[:80]
        if not reviewer:
            names = [
                r["reviewer"]
                for r in db.all_(
                    con(),
                    "SELECT DISTINCT r.reviewer FROM ratings r JOIN pairs p "
                    "ON p.id=r.pair WHERE p.run_job=? ORDER BY 1",
                    jid,
                )
            ]
            return page(request, "review_start.html", p=p, job=j, reviewers=names)
        pair, done, total = review.next_pair(con(), jid, reviewer, skip=skip or None)
        shown = None
        if pair:
            a, b = review.sides(reviewer, pair)
            s = next(s for s in samples if s["index"] == pair["example"])
            shown = {
                "pair": pair["id"],
                "prompt": s["prompt"],
                "task": (s.get("meta") or {}).get("task", ""),
                "a": s["outputs"][a]["text"],
                "b": s["outputs"][b]["text"],
            }
        return page(
            request,
            "review.html",
            p=p,
            job=j,
            reviewer=reviewer,
            shown=shown,
            done=done,
            total=total,
            tags=review.TAGS,
            choices=review.CHOICES,
        )

    @app.post("/p/{pid}/review/{jid}")
    async def review_rate(request: Request, pid: str, jid: int):
        _, cdir, results, samples = verdict_files(pid, jid)
        if "application/json" in request.headers.get("content-type", ""):
            form = await request.json()
            tags = form.get("tags") or []
        else:
            form = await read_form(request)
            tags = (await read_form(request, multi=True)).get("tags", [])
        reviewer = str(form.get("reviewer", "")).strip()[:80]
        if not reviewer:
            raise UserError("a rating needs the reviewer's name.")
        try:
            pair_id = int(form.get("pair", ""))
        except ValueError:
            raise UserError("a rating needs the pair it rates.") from None
        pair = db.one(con(), "SELECT * FROM pairs WHERE id=? AND run_job=?", pair_id, jid)
        if pair is None:
            raise Refused(404, f"No pair {pair_id} in run {jid}.")
        row = review.rate(
            con(), pair_id, reviewer, str(form.get("choice", "")), list(tags), str(form.get("comment", ""))
        )
        await asyncio.to_thread(rejoin, jid, cdir, results, samples)
        if "application/json" in request.headers.get("accept", "") or "application/json" in request.headers.get(
            "content-type", ""
        ):
            return {"stored": row["id"], "choice": row["choice"]}
        return RedirectResponse(f"/p/{pid}/review/{jid}?reviewer={urllib.parse.quote(reviewer)}", status_code=303)

    def rejoin(jid, cdir, results, samples):
        with report_lock:
            review.join_report(cdir, review.summarise(con(), jid, samples, results))

    @app.get("/p/{pid}/review/{jid}/results", response_class=HTMLResponse)
    async def review_results(request: Request, pid: str, jid: int):
        p = get_project(pid)
        j, cdir, results, samples = verdict_files(pid, jid)
        review.ensure_pairs(con(), jid, samples, results)
        s = review.summarise(con(), jid, samples, results)
        return page(request, "review_results.html", p=p, job=j, s=s, results=results)

    @app.get("/api/p/{pid}/review/{jid}/results")
    async def review_results_json(pid: str, jid: int):
        j, cdir, results, samples = verdict_files(pid, jid)
        return review._json_safe(review.summarise(con(), jid, samples, results))

    @app.get("/p/{pid}/review/{jid}/ratings.csv")
    async def ratings_csv(pid: str, jid: int):
        _, _, _, samples = verdict_files(pid, jid)
        return Response(
            review.to_csv(con(), jid, samples),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{pid}-run{jid}-ratings.csv"'},
        )

    @app.get("/p/{pid}/review/{jid}/preferences.jsonl")
    async def preferences(pid: str, jid: int):
        _, _, _, samples = verdict_files(pid, jid)
        return Response(
            review.to_dpo(con(), jid, samples),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{pid}-run{jid}-dpo.jsonl"'},
        )

    # ------------------------------------------------------------------ chat and export

    @app.get("/p/{pid}/chat/{jid}", response_class=HTMLResponse)
    async def chat_page(request: Request, pid: str, jid: int):
        p, j = get_project(pid), run_of(pid, jid)
        return page(request, "chat.html", p=p, job=j)

    @app.post("/api/p/{pid}/chat/{jid}")
    async def chat_reply(request: Request, pid: str, jid: int):
        from tunesmith.messages import BadMessages, check_messages

        j = run_of(pid, jid)
        if j["status"] != "done":
            raise UserError(f"run {jid} is {j['status']}; chat needs a finished run.")
        try:
            body = await request.json()
            tuned = check_messages(body.get("messages"))
            base = check_messages(body.get("base_messages") or body.get("messages"))
        except BadMessages as exc:
            raise UserError(exc.message) from None
        except ValueError:
            raise UserError("the request body is not JSON.") from None
        try:
            max_tokens = max(1, min(int(body.get("max_tokens", 256)), 2048))
            temperature = max(0.0, min(float(body.get("temperature", 0.0)), 2.0))
        except (TypeError, ValueError):
            raise UserError("max_tokens must be a whole number and temperature a number.") from None
        replies = await asyncio.to_thread(chat.reply, j, {"base": base, "tuned": tuned}, max_tokens, temperature)
        return {side: {"text": text, "html": markdown(text)} for side, text in replies.items()}

    @app.post("/p/{pid}/export/{jid}")
    async def start_export(request: Request, pid: str, jid: int):
        from tunesmith.export import FORMATS

        run = run_of(pid, jid)
        fmt = (await read_form(request)).get("format", "")
        if fmt not in FORMATS:
            raise UserError(f"unknown export format '{fmt}'; one of {', '.join(FORMATS)}.")
        if run["status"] != "done":
            raise UserError(f"run {jid} is {run['status']}; export needs a finished run.")
        jobs.submit(
            root,
            pid,
            "export",
            lambda eid, d: ({"argv": ["export", run["run_dir"], "--format", fmt]}, None),
            parent=jid,
            params={"format": fmt},
        )
        runner.wake()
        return RedirectResponse(f"/p/{pid}#jobs", status_code=303)

    return app


# ------------------------------------------------------------------------------------ helpers


def _back(request, url: str, data: dict):
    from fastapi.responses import RedirectResponse

    if "application/json" in request.headers.get("accept", ""):
        return data
    return RedirectResponse(url, status_code=303)


# -------------------------------------------------------------------------------------- CLI


def cli_ui(args) -> int:
    """tunesmith ui [PROJECTS_DIR] [--host H] [--port P] [--api-key KEY]"""
    import uvicorn

    api_key = args.api_key or os.environ.get("TUNESMITH_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(
            f"warning: the workbench on {args.host} without --api-key: anyone who can reach this port can "
            f"upload, train and read every project.",
            flush=True,
        )
    app = create_app(args.projects_dir, api_key=api_key, max_upload_bytes=args.max_upload_mb * 2**20, model=args.model)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"tunesmith workbench: projects in {Path(args.projects_dir).resolve()}\n"
        f"  open    http://{host}:{args.port}/{'  (sign in with the API key)' if api_key else ''}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=3)
    return 0
