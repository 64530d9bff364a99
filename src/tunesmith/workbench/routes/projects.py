"""The project list, a new project from an upload, a project's page and its data check."""

import asyncio
import os
import secrets
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tunesmith import UserError, rundir
from tunesmith.workbench import collect, db, jobs
from tunesmith.workbench.contract import check_job_config, form_keys, form_value, redact, redact_upload
from tunesmith.workbench.projects import DATASET_SUFFIXES, config_path, create_project, private_tree, project_dir
from tunesmith.workbench.security import Refused, who
from tunesmith.workbench.site import Site
from tunesmith.workbench.views import config_values, verified_line

# Training presets: what each sets on top of the project's config. Checkpoints every few steps so
# an interrupted job can resume; held-out loss every so often for the curve.
PRESETS = {
    "quick": {"train.max_steps": "30", "train.save_every": "10", "train.eval_every": "10"},
    "standard": {"train.epochs": "1", "train.max_steps": "0", "train.save_every": "25", "train.eval_every": "25"},
    "thorough": {"train.epochs": "3", "train.max_steps": "0", "train.save_every": "50", "train.eval_every": "50"},
}


def submit_check(site: Site, pid: str) -> int:
    from tunesmith.config import load_config

    folder = project_dir(site.root, pid)
    check_job_config(load_config(config_path(site.root, pid)), folder, site.policy)
    jid = jobs.submit(
        site.root,
        pid,
        "check",
        lambda jid, d: (
            {"check": {"config": str(config_path(site.root, pid)), "out": str(folder / "check.json")}},
            None,
        ),
    )
    site.runner.wake()
    return jid


def project_page(site: Site, request, pid: str, error: str = "", status: int = 200, values: dict | None = None):
    """The project's page (read in a worker thread: check.json and the jobs' files can be large)."""
    from tunesmith.config import field_docs, load_config
    from tunesmith.workbench.contract import COMPARE_DEFAULTS

    p = site.project(pid)
    folder = project_dir(site.root, pid)
    rows = db.jobs_of(site.con(), pid)
    for j in rows:
        j["message"] = redact(j["message"], site.root, folder)
        j["resumable"] = (
            j["kind"] == "train"
            and j["status"] in ("stopped", "interrupted", "failed")
            and jobs.has_checkpoint(j["run_dir"])
        )
        j["finished"] = j["kind"] == "train" and j["status"] == "done"
        j["compared"] = bool(j["run_dir"]) and (Path(j["run_dir"]) / rundir.COMPARE / rundir.RESULTS).exists()
        j["verified"] = (
            verified_line(jobs.job_dir(site.root, j) / "log.txt")
            if j["kind"] == "export" and j["status"] == "done"
            else ""
        )
    checking = any(j["kind"] == "check" and j["status"] in jobs.ACTIVE for j in rows)
    cfg = load_config(config_path(site.root, pid))
    current = {k: form_value(v, site.root, folder) for k, _, v, _ in config_values(cfg)}
    shown = set(form_keys())
    fields = [
        {"key": k, "type": t, "value": (values or {}).get(k, current[k]), "doc": d}
        for k, t, _, d in field_docs()
        if k in shown
    ]
    return site.page(
        request,
        "project.html",
        status=status,
        p=p,
        check=site.check_report(folder),
        checking=checking,
        jobs=rows,
        fields=fields,
        presets=PRESETS,
        error=error,
        compare_defaults=COMPARE_DEFAULTS,
        judge_urls=site.policy.allowed_urls,
        skip_keys=(),
        invitations=db.invitations_of(site.con(), pid),
        collect_defaults=collect.DEFAULTS,
        now=time.time(),
    )


def router(site: Site) -> APIRouter:
    r = APIRouter()

    @r.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return site.page(
            request,
            "index.html",
            projects=db.projects(site.con()),
            default_model=site.default_model,
            suffixes=", ".join((".zip",) + DATASET_SUFFIXES),
            limit_mb=site.max_upload_bytes // 2**20,
        )

    @r.post("/api/projects")
    async def new_project(request: Request, name: str = "", filename: str = "", model: str = ""):
        """The upload is the raw request body (the page sends the file with fetch), streamed to
        PROJECTS_DIR/.uploads; the Guard has refused it already if it declares more than the limit."""
        if not filename:
            raise UserError("no file name. fix: send ?filename=NAME.zip (or .jsonl, .csv …) with the file as the body.")
        tmp = site.root / ".uploads" / secrets.token_hex(8)
        try:
            size = 0
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > site.max_upload_bytes:
                        raise Refused(413, f"{filename}: over the upload limit of {site.max_upload_bytes:,} bytes.")
                    f.write(chunk)
            if size == 0:
                raise UserError(f"{filename}: the upload is empty.")
            try:
                row = await asyncio.to_thread(
                    create_project,
                    site.root,
                    name.strip(),
                    tmp,
                    Path(filename).name,
                    model.strip() or site.default_model,
                    max_records=site.max_records,
                )
            except UserError as exc:  # the page names the upload's own paths, never the server's
                raise UserError(redact_upload(str(exc), site.root)) from None
        finally:
            tmp.unlink(missing_ok=True)
        try:
            from tunesmith.config import load_config

            check_job_config(
                load_config(config_path(site.root, row["id"])), project_dir(site.root, row["id"]), site.policy
            )
        except UserError:
            import shutil

            shutil.rmtree(project_dir(site.root, row["id"]), ignore_errors=True)
            raise
        private_tree(project_dir(site.root, row["id"]))
        db.project_insert(site.con(), row)
        db.audit(site.con(), who(request), "project created", f"project {row['id']}", Path(filename).name)
        submit_check(site, row["id"])
        return {"id": row["id"], "url": f"{request.scope.get('root_path', '')}/p/{row['id']}"}

    @r.post("/p/{pid}/check")
    async def recheck(request: Request, pid: str):
        site.project(pid)
        submit_check(site, pid)
        return RedirectResponse(f"/p/{pid}", status_code=303)

    @r.get("/p/{pid}", response_class=HTMLResponse)
    def project(request: Request, pid: str):
        return project_page(site, request, pid)

    return r
