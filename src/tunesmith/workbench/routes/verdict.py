"""Compare a finished run, its verdict page and compare's own report.html."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from tunesmith import UserError, rundir
from tunesmith.workbench import db, jobs
from tunesmith.workbench.contract import check_job_config, compare_overrides, redact
from tunesmith.workbench.projects import project_dir
from tunesmith.workbench.security import read_form, who
from tunesmith.workbench.site import Site
from tunesmith.workbench.views import glossary_marker


def router(site: Site) -> APIRouter:
    r = APIRouter()

    @r.post("/p/{pid}/compare/{jid}")
    async def start_compare(request: Request, pid: str, jid: int):
        from tunesmith.config import load_config

        run = site.run_of(pid, jid, finished_for="compare needs")
        form = await read_form(request)
        folder = project_dir(site.root, pid)
        cfg_file = str(jobs.job_dir(site.root, run) / "config.yaml")
        overrides = [
            f"compare.output_dir={Path(run['run_dir']) / rundir.COMPARE}",
            *compare_overrides(form, site.policy),
        ]
        try:  # refuse a bad value now, not in the job
            check_job_config(load_config(cfg_file, overrides), folder, site.policy)
        except UserError as exc:
            raise UserError(redact(str(exc), site.root, folder)) from None
        cid = jobs.submit(
            site.root,
            pid,
            "compare",
            lambda cid, d: ({"argv": ["compare", cfg_file, *overrides, "--run", run["run_dir"]]}, None),
            parent=jid,
        )
        db.audit(site.con(), who(request), "job started", f"project {pid}", f"job {cid}: compare of run {jid}")
        site.runner.wake()
        return RedirectResponse(f"/p/{pid}", status_code=303)

    @r.get("/p/{pid}/verdict/{jid}", response_class=HTMLResponse)
    def verdict(request: Request, pid: str, jid: int, task: str = ""):
        p = site.project(pid)
        j, cdir, results, samples = site.verdict_files(pid, jid)
        tasks = sorted({(s.get("meta") or {}).get("task", "") for s in samples})
        shown = [s for s in samples if not task or (s.get("meta") or {}).get("task", "") == task]
        arms = [n for n, a in results["arms"].items() if a.get("status") == "ok"]
        return site.page(
            request,
            "verdict.html",
            p=p,
            job=j,
            results=results,
            samples=shown,
            tasks=tasks,
            task=task,
            arms=arms,
            mark=glossary_marker(j),
            primary=results.get("primary_metric", "chrf"),
        )

    @r.get("/p/{pid}/report/{jid}")
    def report_file(pid: str, jid: int):
        _, cdir, _, _ = site.verdict_files(pid, jid)
        return FileResponse(
            cdir / rundir.REPORT_HTML,
            media_type="text/html",
            headers={
                "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
            },
        )

    return r
