"""The workbench's web app: projects, check, training jobs with a live curve, the verdict, blind
review, chat and export — server-rendered pages over the same stage functions as the CLI.

    tunesmith ui [PROJECTS_DIR] [--host 127.0.0.1] [--port 8700] [--api-key-file FILE] [--allowed-host NAME]
    from tunesmith.workbench.app import create_app
    app = create_app("projects", api_key="secret")     # any ASGI server runs it

Security (docs/reliability.md, "The workbench under attack"). Every request's Host must be one the
server answers to (loopback names, --allowed-host), every body is limited before it is read, every
page carries a CSP without inline script and X-Frame-Options DENY. With an API key every route but
/login and /health needs `Authorization: Bearer KEY` (API clients) or a signed-in session (server-side,
in workbench.db); sign-in backs off after failures. Every state-changing browser request carries its
session's CSRF token and comes from this site. Jobs run only what the forms offer (workbench/contract.py):
inside the project, no model code, no endpoint the owner did not allow. Nothing is written outside
PROJECTS_DIR, and what is written there is the owner's alone (0600 / 0700).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.
import contextlib
import os
from pathlib import Path

from tunesmith import UserError

HERE = Path(__file__).parent
MAX_RECORDS = 200_000  # records in an uploaded dataset (or imported repository): check and pages stay quick


def create_app(
    projects_dir,
    *,
    api_key: str | None = None,
    max_upload_bytes: int = 200 * 2**20,
    max_records: int = MAX_RECORDS,
    model: str | None = None,
    run_jobs: bool = True,
    job_env: dict | None = None,
    hosts: frozenset[str] | None = None,
    allowed_urls: tuple[str, ...] = (),
):
    """The workbench over PROJECTS_DIR (created if missing). run_jobs=False leaves the queue alone (tests).
    hosts: the Host names answered (web.allowed_hosts; default loopback names). allowed_urls: the judge
    and teacher endpoints a project may use."""
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse
    from fastapi.staticfiles import StaticFiles

    from tunesmith import web
    from tunesmith.models import DEFAULT_MODEL
    from tunesmith.workbench import jobs
    from tunesmith.workbench.contract import Policy, redact
    from tunesmith.workbench.routes import access, chat, collect, projects, review, signin, verdict
    from tunesmith.workbench.routes import jobs as job_routes
    from tunesmith.workbench.security import (
        FORM_LIMIT,
        Auth,
        MountedAt,
        Sessions,
        access_guard,
        csrf_guard,
        secret_key,
    )
    from tunesmith.workbench.site import Site

    root = Path(projects_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UserError(
            f"{root}: a file, not a projects directory. fix: name a directory (it is created if "
            f"missing), e.g. {root.parent / 'projects'}."
        )
    for d in (root, root / "projects", root / ".uploads"):  # uploads land here first, never in the system's temp
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    secret = secret_key(root)
    # Jobs never see the server's own key: a job's config cannot hand it to an endpoint.
    env = dict(job_env if job_env is not None else os.environ)
    policy = Policy(
        default_model=model or DEFAULT_MODEL,
        allowed_urls=tuple(allowed_urls),
        secret_envs=(web.KEY_ENV, *(k for k, v in env.items() if api_key and v == api_key)),
    )
    for name in policy.secret_envs:
        env.pop(name, None)
    key_in_use(root, Sessions.key_id_of(secret, api_key)[:12] if api_key else "no key")
    site = Site(
        root=root,
        api_key=api_key,
        policy=policy,
        sessions=Sessions(root, secret, api_key),
        runner=jobs.Runner(root, env=env),
        max_upload_bytes=max_upload_bytes,
        max_records=max_records,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if run_jobs:
            site.runner.start()
        yield
        site.runner.close()

    app = FastAPI(title="tunesmith workbench", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runner, app.state.root, app.state.site = site.runner, root, site
    app.router.dependencies.append(Depends(access_guard))  # a reviewer: their project's review pages only
    app.router.dependencies.append(Depends(csrf_guard))
    app.add_middleware(Auth, api_key=api_key, sessions=site.sessions)
    app.add_middleware(MountedAt)
    app.add_middleware(
        web.Guard,
        hosts=hosts or web.allowed_hosts(),
        body_limit=lambda path: max_upload_bytes if path.endswith("/api/projects") else FORM_LIMIT,
        plain=True,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def answer(request, status: int, message: str, headers: dict | None = None):
        if "text/html" in request.headers.get("accept", ""):
            titles = {400: "That did not work", 403: "Not open to you", 404: "Not found"}
            ended = request.scope.get("state", {}).get("auth") == "ended"  # a reviewer whose invitation ended
            title = "This invitation has ended" if ended else titles.get(status, f"{status}")
            resp = site.page(request, "message.html", status=status, title=title, message=message, ended=ended)
        else:
            resp = JSONResponse({"error": message}, status_code=status)
        resp.headers.update(headers or {})
        return resp

    @app.exception_handler(web.ApiError)
    async def _refused(request, exc: web.ApiError):
        return answer(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(UserError)
    async def _user_error(request, exc: UserError):
        pid = request.path_params.get("pid", "")
        folder = root / "projects" / pid if pid and "/" not in pid and pid not in ("..", ".") else None
        return answer(request, 400, redact(str(exc), root, folder))

    for module in (signin, projects, job_routes, verdict, review, chat, access, collect):
        app.include_router(module.router(site))
    return app


def key_in_use(root: Path, fingerprint: str) -> None:
    """The audit log's "key rotation" line: the workbench started with a key other than last time's
    (its fingerprint, never the key, or "no key"; another key ends every session of the old one)."""
    from tunesmith.workbench import db

    con = db.connect(root)
    last = db.one(con, "SELECT target FROM audit WHERE action IN ('key first used', 'key rotated') ORDER BY id DESC")
    if last is None:
        db.audit(con, "server", "key first used", fingerprint)
    elif last["target"] != fingerprint:
        db.audit(con, "server", "key rotated", fingerprint, "every session of the previous key ended")


# -------------------------------------------------------------------------------------- CLI


def cli_ui(args) -> int:
    """tunesmith ui [PROJECTS_DIR] [--host H] [--port P] [--api-key-file FILE] [--allowed-host NAME] [--allow-url U]"""
    import uvicorn

    from tunesmith import web

    api_key = web.api_key_from(args)
    web.check_exposure(args.host, api_key, "the workbench")
    app = create_app(
        args.projects_dir,
        api_key=api_key,
        max_upload_bytes=args.max_upload_mb * 2**20,
        model=args.model,
        hosts=web.allowed_hosts(args.host, getattr(args, "allowed_host", None) or ()),
        allowed_urls=tuple(getattr(args, "allow_url", None) or ()),
    )
    note = "  (sign in with the API key)" if api_key else ""
    where = f"projects in {Path(args.projects_dir).resolve()}"
    print(
        web.startup_notice("tunesmith workbench", where, [("open", web.url(args.host, args.port) + note)]), flush=True
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=3)
    return 0
