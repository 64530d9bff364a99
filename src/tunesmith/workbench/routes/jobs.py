"""Training jobs and every job's controls: start (the advanced form), stop, resume, its JSON, its
log and its live events."""

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, StreamingResponse

from tunesmith import UserError
from tunesmith.web import SSE_HEADERS
from tunesmith.workbench import db, jobs
from tunesmith.workbench.contract import check_job_config, form_keys, form_overrides, form_value, redact
from tunesmith.workbench.projects import config_path, project_dir
from tunesmith.workbench.routes.projects import PRESETS, project_page
from tunesmith.workbench.security import read_form, who
from tunesmith.workbench.site import Site
from tunesmith.workbench.views import config_values, progress


def _back(request, url: str, data: dict):
    if "application/json" in request.headers.get("accept", ""):
        return data
    return RedirectResponse(url, status_code=303)


def router(site: Site) -> APIRouter:
    r = APIRouter()

    def shown_job(j: dict) -> dict:
        """A job as the API shows it: its run directory relative to the project, messages without server paths."""
        folder = project_dir(site.root, j["project"])
        run = j["run_dir"]
        return {
            **j,
            "run_dir": redact(run, site.root, folder) if run else run,
            "message": redact(j["message"], site.root, folder),
        }

    @r.post("/p/{pid}/train")
    async def start_training(request: Request, pid: str):
        from tunesmith.config import load_config, save_config

        site.project(pid)
        form = await read_form(request)
        base = config_path(site.root, pid)
        folder = project_dir(site.root, pid)
        current = {k: form_value(v, site.root, folder) for k, _, v, _ in config_values(load_config(base))}
        preset = form.get("preset", "quick")
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; one of {', '.join(PRESETS)}.")
        try:
            overrides = [f"{k}={v}" for k, v in PRESETS[preset].items()]
            overrides += form_overrides(form, current, form_keys())
            cfg = load_config(base, overrides)  # the CLI's own validation
            cfg.train.output_dir = str(folder / "runs" / "next")
            check_job_config(cfg, folder, site.policy)
        except UserError as exc:
            values = {k[4:]: v for k, v in form.items() if k.startswith("cfg.")}
            message = redact(str(exc), site.root, folder)
            return await asyncio.to_thread(project_page, site, request, pid, message, 400, values)

        def spec(jid, d):
            cfg.train.output_dir = str(folder / "runs" / str(jid))
            save_config(cfg, d / "config.yaml")
            return {"argv": ["train", str(d / "config.yaml")]}, cfg.train.output_dir

        jid = jobs.submit(site.root, pid, "train", spec, params={"preset": preset, "overrides": overrides})
        db.audit(site.con(), who(request), "job started", f"project {pid}", f"job {jid}: train ({preset})")
        site.runner.wake()
        return RedirectResponse(f"/p/{pid}", status_code=303)

    @r.post("/jobs/{jid}/stop")
    async def stop_job(request: Request, jid: int):
        j = site.job(jid)
        site.runner.stop(j)
        db.audit(site.con(), who(request), "job stopped", f"project {j['project']}", f"job {jid}: {j['kind']}")
        return _back(request, f"/p/{j['project']}", {"status": "stopping"})

    @r.post("/jobs/{jid}/resume")
    async def resume_job(request: Request, jid: int):
        j = site.job(jid)
        if j["kind"] != "train" or j["status"] not in ("stopped", "interrupted", "failed"):
            raise UserError(f"job {jid} is {j['status']}; only a stopped, interrupted or failed training job resumes.")
        if not jobs.has_checkpoint(j["run_dir"]):
            raise UserError(
                f"job {jid} saved no complete checkpoint before it ended, so there is nothing to resume "
                f"from. fix: start a new training run (with train.save_every set)."
            )
        site.runner.resume(j)
        db.audit(site.con(), who(request), "job resumed", f"project {j['project']}", f"job {jid}: {j['kind']}")
        return _back(request, f"/p/{j['project']}", {"status": "queued"})

    @r.get("/api/jobs/{jid}")
    def job_json(jid: int):
        j = site.job(jid)
        rows, _ = jobs.read_metrics(j["run_dir"]) if j["run_dir"] else ([], 0)
        return {**shown_job(j), "alive": jobs.alive(j), "metrics": rows, "progress": progress(j, rows)}

    @r.get("/jobs/{jid}/log", response_class=PlainTextResponse)
    def job_log(jid: int):
        j = site.job(jid)
        path = jobs.job_dir(site.root, j) / "log.txt"
        if not path.exists():
            return ""
        with open(path, "rb") as f:  # the last 20,000 characters, without reading a long log whole
            f.seek(max(0, path.stat().st_size - 80_000))
            text = f.read().decode("utf-8", "replace")[-20000:]
        return redact(text, site.root, project_dir(site.root, j["project"]))

    @r.get("/jobs/{jid}/events")
    async def job_events(request: Request, jid: int):
        """Server-sent events: `metric` for every new metrics.jsonl row, `status` when it changes
        (with steps, total and ETA); the stream ends when the job does."""
        site.job(jid)

        async def events():
            offset, last, rows = 0, None, []
            while True:
                j = site.job(jid)
                if j["run_dir"]:
                    new, offset = await asyncio.to_thread(jobs.read_metrics, j["run_dir"], offset)
                    if new and rows and new[0]["step"] <= rows[-1]["step"]:  # a resume rewound the file
                        rows = [r for r in rows if r["step"] < new[0]["step"]]
                    rows += new
                    for row in new:
                        yield f"event: metric\ndata: {json.dumps(row)}\n\n"
                message = redact(j["message"], site.root, project_dir(site.root, j["project"]))
                state = {"status": j["status"], "message": message, **progress(j, rows)}
                if state != last:
                    yield f"event: status\ndata: {json.dumps(state)}\n\n"
                    last = state
                if j["status"] not in jobs.ACTIVE and j["status"] != "preparing":
                    yield "event: end\ndata: {}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.5)

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    return r
