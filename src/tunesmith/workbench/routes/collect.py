"""Collect preferences (the second review mode) and close the loop: start a collection on a finished
run, rate its pairs blind, see what was decided, export the training pairs, and train the
preference run from the SFT run, compared with it on the held-out set (`tunesmith prefer`)."""

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunesmith import UserError
from tunesmith.workbench import collect, db, jobs, review
from tunesmith.workbench.contract import COMPARE_DEFAULTS, check_job_config, redact
from tunesmith.workbench.projects import project_dir
from tunesmith.workbench.routes.review import answer_rating, screen, store_rating
from tunesmith.workbench.security import rater, read_form, who
from tunesmith.workbench.site import Site

# The close-the-loop form: the preference run's settings, then the compare's (as the compare form's).
PREFER_DEFAULTS = {
    "train.objective": "dpo",
    "train.max_steps": "30",
    "train.lr": "5e-5",
    "train.beta": "0.1",
    "compare.arms": "all",
    "compare.side_effects": "true",
    **COMPARE_DEFAULTS,
}


def _number(form: dict, key: str, cast, lo, hi):
    raw = form.get(key) or collect.DEFAULTS[key]
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise UserError(f"{key}: '{raw}' is not a number from {lo} to {hi}. fix: e.g. {collect.DEFAULTS[key]}.")
    return value


def pairs_file(root: Path, pid: str, cid: int) -> Path:
    return project_dir(root, pid) / "data" / f"preferences-collection-{cid}.jsonl"


def router(site: Site) -> APIRouter:
    r = APIRouter()

    @r.post("/p/{pid}/collect/{jid}/start")
    async def start_collection(request: Request, pid: str, jid: int):
        run = site.run_of(pid, jid, finished_for="a collection samples")
        form = await read_form(request)
        params = {
            "prompts": _number(form, "prompts", int, *collect.LIMITS["prompts"]),
            "temperature": _number(form, "temperature", float, *collect.LIMITS["temperature"]),
            "max_new_tokens": _number(form, "max_new_tokens", int, *collect.LIMITS["max_new_tokens"]),
        }
        other = None
        if form.get("against"):  # the second reply from another finished run of this project
            try:
                other = site.run_of(pid, int(form["against"]))
            except ValueError:
                raise UserError(f"against: '{form['against']}' is not a run number.") from None
            if other["status"] != "done" or other["id"] == jid:
                raise UserError(f"against: run {other['id']} is not another finished run of this project.")
            params["against"] = other["id"]
        config = jobs.job_dir(site.root, run) / "config.yaml"
        folder = project_dir(site.root, pid)
        try:
            await asyncio.to_thread(collect.check_can_collect, config)
        except UserError as exc:
            raise UserError(f"run {jid}: " + redact(str(exc), site.root, folder)) from None

        def spec(cid, d):
            job = {"run_dir": run["run_dir"], "config": str(config), "out": str(d / collect.SAMPLES)}
            job.update(prompts=params["prompts"], temperature=params["temperature"])
            job.update(max_new_tokens=params["max_new_tokens"], other_run_dir=other["run_dir"] if other else None)
            return {"collect": job}, None

        cid = jobs.submit(site.root, pid, "collect", spec, parent=jid, params=params)
        db.audit(site.con(), who(request), "collection created", f"project {pid}", f"job {cid} on run {jid}")
        site.runner.wake()
        return RedirectResponse(f"/p/{pid}#job-{cid}", status_code=303)

    @r.get("/p/{pid}/collect/{cid}", response_class=HTMLResponse)
    async def collect_page(request: Request, pid: str, cid: int, reviewer: str = "", skip: int = 0):
        p = site.project(pid)
        j, samples, _ = await asyncio.to_thread(site.collection_files, pid, cid)
        reviewer, _ = rater(request, reviewer)
        if not reviewer:
            reviewers = db.reviewers(site.con(), cid)
            return site.page(request, "review_start.html", p=p, job=j, mode="train", reviewers=reviewers)
        return await asyncio.to_thread(screen, site, request, p, j, reviewer, samples, skip, "train")

    @r.post("/p/{pid}/collect/{cid}")
    async def collect_rate(request: Request, pid: str, cid: int):
        await asyncio.to_thread(site.collection_files, pid, cid)
        reviewer, row = await store_rating(site, request, cid)
        return answer_rating(request, row, f"/p/{pid}/collect/{cid}", reviewer)

    @r.get("/p/{pid}/collect/{cid}/results", response_class=HTMLResponse)
    async def collect_results(request: Request, pid: str, cid: int):
        p = site.project(pid)
        j, _, _ = await asyncio.to_thread(site.collection_files, pid, cid)
        s = collect.summary(site.con(), cid)
        runs = [x for x in db.jobs_of(site.con(), pid) if (x["params"] or {}).get("collection") == cid]
        return site.page(request, "collect_results.html", p=p, job=j, s=s, defaults=PREFER_DEFAULTS, runs=runs)

    @r.get("/p/{pid}/collect/{cid}/pairs.jsonl")
    async def collect_pairs(pid: str, cid: int):
        _, samples, _ = await asyncio.to_thread(site.collection_files, pid, cid)
        return Response(
            review.to_dpo(site.con(), cid, samples, kind="train"),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{pid}-collection{cid}-train-pairs.jsonl"'},
        )

    @r.post("/p/{pid}/collect/{cid}/prefer")
    async def close_the_loop(request: Request, pid: str, cid: int):
        """Train the preference run from the collection's SFT run on its decided pairs, then compare
        the two on the held-out set: one job running `tunesmith prefer`."""
        from tunesmith.prefer import prepare

        j, samples, _ = await asyncio.to_thread(site.collection_files, pid, cid)
        sft = site.run_of(pid, j["parent"])
        form = await read_form(request)
        extra = [k for k in form if k not in (*PREFER_DEFAULTS, "csrf_token")]
        if extra:
            raise UserError(f"{extra[0]}: not a setting this form offers ({', '.join(PREFER_DEFAULTS)}).")
        overrides = [f"{k}={form.get(k) or v}" for k, v in PREFER_DEFAULTS.items()]
        text = review.to_dpo(site.con(), cid, samples, kind="train")
        if not text:
            raise UserError(
                f"collection {cid} has no decided pair yet: a pair trains once more of its ratings pick one "
                f"reply than the other (ties and 'both bad' decide nothing). fix: rate more pairs first."
            )
        pairs = pairs_file(site.root, pid, cid)
        pairs.write_text(text, encoding="utf-8")
        pairs.chmod(0o600)
        folder = project_dir(site.root, pid)

        def spec(jid, d):
            out = folder / "runs" / str(jid)
            try:  # the CLI's own checks, before the job: a bad value must not cost a run
                train_cfg, compare_cfg = prepare(sft["run_dir"], pairs, overrides, out)
                for cfg in (train_cfg, compare_cfg):
                    check_job_config(cfg, folder, site.policy)
            except UserError as exc:
                raise UserError(redact(str(exc), site.root, folder)) from None
            return {"argv": ["prefer", sft["run_dir"], str(pairs), *overrides, "--out", str(out)]}, out

        params = {"preset": "prefer", "collection": cid, "from": sft["id"], "overrides": overrides}
        jid = await asyncio.to_thread(jobs.submit, site.root, pid, "train", spec, sft["id"], params)
        db.audit(site.con(), who(request), "job started", f"project {pid}", f"job {jid}: prefer from run {sft['id']}")
        site.runner.wake()
        return RedirectResponse(f"/p/{pid}#job-{jid}", status_code=303)

    return r
