"""Blind review: a reviewer's next pair (replies rendered as markdown, as the chat page does),
ratings, the results so far and their exports."""

import asyncio
import time
import urllib.parse

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tunesmith import UserError
from tunesmith.workbench import db, review
from tunesmith.workbench.security import Refused, rater, read_form, read_json, who
from tunesmith.workbench.site import Site
from tunesmith.workbench.views import markdown


def router(site: Site) -> APIRouter:
    r = APIRouter()

    def rejoin(jid, cdir, results, samples):
        with site.report_lock:
            review.join_report(cdir, review.summarise(site.con(), jid, samples, results))

    @r.get("/p/{pid}/review/{jid}", response_class=HTMLResponse)
    def review_page(request: Request, pid: str, jid: int, reviewer: str = "", skip: int = 0):
        p = site.project(pid)
        j, cdir, results, samples = site.verdict_files(pid, jid)
        con = site.con()
        review.ensure_pairs(con, jid, samples, results)
        reviewer, _ = rater(request, reviewer)
        if not reviewer:
            return site.page(request, "review_start.html", p=p, job=j, reviewers=db.reviewers(con, jid))
        return screen(site, request, p, j, reviewer, samples, skip, mode="eval")

    @r.post("/p/{pid}/review/{jid}")
    async def review_rate(request: Request, pid: str, jid: int):
        _, cdir, results, samples = await asyncio.to_thread(site.verdict_files, pid, jid)
        reviewer, row = await store_rating(site, request, jid)
        await asyncio.to_thread(rejoin, jid, cdir, results, samples)
        return answer_rating(request, row, f"/p/{pid}/review/{jid}", reviewer)

    @r.get("/p/{pid}/review/{jid}/results", response_class=HTMLResponse)
    def review_results(request: Request, pid: str, jid: int):
        p = site.project(pid)
        j, cdir, results, samples = site.verdict_files(pid, jid)
        review.ensure_pairs(site.con(), jid, samples, results)
        s = review.summarise(site.con(), jid, samples, results)
        return site.page(request, "review_results.html", p=p, job=j, s=s, results=results)

    @r.get("/api/p/{pid}/review/{jid}/results")
    def review_results_json(pid: str, jid: int):
        j, cdir, results, samples = site.verdict_files(pid, jid)
        return review.json_safe(review.summarise(site.con(), jid, samples, results))

    @r.get("/p/{pid}/review/{jid}/ratings.csv")
    def ratings_csv(pid: str, jid: int):
        _, _, _, samples = site.verdict_files(pid, jid)
        return Response(
            review.to_csv(site.con(), jid, samples),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{pid}-run{jid}-ratings.csv"'},
        )

    @r.get("/p/{pid}/review/{jid}/preferences.jsonl")
    def preferences(pid: str, jid: int):
        """Evaluation pairs: held-out prompts, for judging and for other tools, never for training
        here (`tunesmith prefer` trains on a collection's pairs); the file name says so."""
        _, _, _, samples = site.verdict_files(pid, jid)
        return Response(
            review.to_dpo(site.con(), jid, samples, kind="eval"),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{pid}-run{jid}-eval-only-dpo.jsonl"'},
        )

    return r


def screen(site: Site, request, p: dict, j: dict, reviewer: str, samples: list[dict], skip: int, mode: str):
    """The blind screen, the same for evaluation pairs (mode "eval") and a collection's ("train")."""
    pair, done, total = review.next_pair(site.con(), j["id"], reviewer, skip=skip or None)
    shown = None
    if pair:
        a, b = review.sides(reviewer, pair)
        s = next(s for s in samples if s["index"] == pair["example"])
        text_a, text_b = s["outputs"][a]["text"], s["outputs"][b]["text"]
        shown = {
            "pair": pair["id"],
            "prompt": s["prompt"],
            "task": (s.get("meta") or {}).get("task", ""),
            "a": text_a,
            "b": text_b,
            "a_html": markdown(text_a),
            "b_html": markdown(text_b),
        }
    return site.page(
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
        mode=mode,
    )


async def store_rating(site: Site, request, run_job: int) -> tuple[str, dict]:
    """A rating from the form or JSON, stored under the rater's name (a reviewer's invitation's);
    one audit line per rating."""
    if "application/json" in request.headers.get("content-type", ""):
        form = await read_json(request)
        tags = form.get("tags") or []
        if not isinstance(tags, list):
            raise UserError("tags must be a list of tag names.")
    else:
        form = await read_form(request)
        tags = (await read_form(request, multi=True)).get("tags", [])
    reviewer, invitation = rater(request, form.get("reviewer", ""))
    if not reviewer:
        raise UserError("a rating needs the reviewer's name.")
    try:
        pair_id = int(form.get("pair", ""))
    except (TypeError, ValueError):
        raise UserError("a rating needs the pair it rates.") from None
    con = site.con()
    if db.pair(con, pair_id, run_job) is None:
        raise Refused(404, f"No pair {pair_id} in run {run_job}.")
    choice = str(form.get("choice", ""))
    row = review.rate(con, pair_id, reviewer, choice, [str(t) for t in tags], str(form.get("comment", "")), invitation)
    rater_name = who(request) if invitation else f"owner as {reviewer}"
    picked = f"{choice}: {row['winner']} preferred" if row["winner"] else choice  # the side shown, and what won
    db.audit(con, rater_name, "rating", f"job {run_job} pair {pair_id}", picked)
    if invitation is not None:
        db.invitation_used(con, invitation, time.time())
    return reviewer, row


def answer_rating(request, row: dict, url: str, reviewer: str):
    if "application/json" in request.headers.get("accept", "") or "application/json" in request.headers.get(
        "content-type", ""
    ):
        return {"stored": row["id"], "choice": row["choice"]}
    return RedirectResponse(f"{url}?reviewer={urllib.parse.quote(reviewer)}", status_code=303)
