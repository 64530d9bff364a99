"""Reviewer access and the audit log: the owner's invitations (create, revoke), an invitation
link's landing page and the reviewer's session it starts, the reviewer's home page, the audit log.

A link carries a random token; workbench.db keeps only its SHA-256, so the link is shown once, when
it is made. Opening it and pressing Start begins a server-side session with role reviewer, the
invitation's name and project (security.access_guard keeps the reviewer to that project's review
pages); revoking the invitation or its expiry ends that session at the next request.
"""

import asyncio
import math
import secrets
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tunesmith import UserError, rundir
from tunesmith.workbench import db, review
from tunesmith.workbench.security import SESSION_COOKIE, Refused, digest, invitation_problem, read_form, who
from tunesmith.workbench.site import Site, cookie_flags

DEFAULT_DAYS, MAX_DAYS = 14, 365


def router(site: Site) -> APIRouter:
    r = APIRouter()

    @r.post("/p/{pid}/invitations")
    async def invite(request: Request, pid: str):
        p = site.project(pid)
        form = await read_form(request)
        name = " ".join(str(form.get("name", "")).split())[:80]
        if not name:
            raise UserError("an invitation needs the reviewer's name. fix: type it in the Reviewers form.")
        try:
            days = float(form.get("days") or DEFAULT_DAYS)
        except ValueError:
            days = -1.0
        if not 0 < days <= MAX_DAYS:
            raise UserError(f"days: '{form.get('days')}' is not a number of days from 1 to {MAX_DAYS}. fix: e.g. 14.")
        token, now = secrets.token_urlsafe(32), time.time()
        con = site.con()
        iid = db.invitation_insert(con, pid, name, digest(token), now, now + days * 86400)
        db.audit(con, who(request), "invitation created", f"project {pid}", f"#{iid} for {name}, {days:g} days")
        link = f"{str(request.base_url).rstrip('/')}/invite/{token}"
        inv = db.invitation(con, iid)
        if "application/json" in request.headers.get("accept", ""):
            return {"id": iid, "name": name, "link": link, "expires": inv["expires"]}
        return site.page(request, "invitation.html", p=p, inv=inv, link=link)

    @r.post("/p/{pid}/invitations/{iid}/revoke")
    async def revoke(request: Request, pid: str, iid: int):
        site.project(pid)
        con = site.con()
        inv = db.invitation(con, iid)
        if inv is None or inv["project"] != pid:
            raise Refused(404, f"No invitation {iid} in project '{pid}'.")
        if not inv["revoked"]:
            db.invitation_revoke(con, iid, time.time())  # its sessions admit nothing from now on
            db.audit(con, who(request), "invitation revoked", f"project {pid}", f"#{iid} for {inv['name']}")
        if "application/json" in request.headers.get("accept", ""):
            return {"revoked": iid}
        return RedirectResponse(f"/p/{pid}#reviewers", status_code=303)

    def valid(token: str) -> tuple[dict | None, str]:
        inv = db.invitation_by_token(site.con(), digest(token))
        return inv, invitation_problem(inv)

    @r.get("/invite/{token}", response_class=HTMLResponse)
    def invitation_page(request: Request, token: str):
        inv, problem = valid(token)
        owner_here = request.scope.get("state", {}).get("auth") == "session"  # the owner's own browser
        return site.page(
            request,
            "invite.html",
            status=403 if problem else 200,
            inv=inv,
            p=site.project(inv["project"]) if inv else None,
            token=token,
            problem=problem,
            owner_here=owner_here,
        )

    @r.post("/invite/{token}")
    async def start_reviewing(request: Request, token: str):
        inv, problem = valid(token)
        if problem:
            raise Refused(403, problem + " Ask the project's owner for a new link.")
        site.sessions.end(request.cookies.get(SESSION_COOKIE, ""))  # a fresh session, never the one it came with
        cookie, _ = site.sessions.new(signed_in=True, invitation=inv)
        con = site.con()
        db.invitation_used(con, inv["id"], time.time())
        db.audit(con, f"reviewer {inv['name']}", "invitation used", f"project {inv['project']}", f"#{inv['id']}")
        resp = RedirectResponse(f"/p/{inv['project']}/reviews", status_code=303)
        hours = max(1, math.ceil((inv["expires"] - time.time()) / 3600))
        resp.set_cookie(SESSION_COOKIE, cookie, **cookie_flags(request, hours=hours))
        return resp

    def reviews_of(pid: str, name: str | None) -> dict:
        """The runs with a verdict to review and the finished collections, with this reviewer's progress."""
        con = site.con()
        evaluations, collections = [], []
        for j in db.jobs_of(con, pid):
            if j["kind"] == "train" and j["status"] == "done" and j["run_dir"]:
                if not (Path(j["run_dir"]) / rundir.COMPARE / rundir.RESULTS).exists():
                    continue
                _, _, results, samples = site.verdict_files(pid, j["id"])
                pairs = review.ensure_pairs(con, j["id"], samples, results)
                evaluations.append({"job": j, "pairs": len(pairs), "done": rated(con, j["id"], name)})
            elif j["kind"] == "collect" and j["status"] == "done":
                try:
                    _, samples, pairs = site.collection_files(pid, j["id"])
                except UserError as exc:  # refused (a held-out prompt): shown as such, the others still listed
                    collections.append({"job": j, "refused": str(exc)})
                    continue
                collections.append({"job": j, "pairs": len(pairs), "done": rated(con, j["id"], name)})
        return {"evaluations": evaluations, "collections": collections}

    def rated(con, run_job: int, name: str | None) -> int | None:
        if name is None:
            return None
        sql = "SELECT COUNT(*) AS n FROM ratings r JOIN pairs p ON p.id=r.pair WHERE p.run_job=? AND r.reviewer=?"
        return db.one(con, sql, run_job, name)["n"]

    @r.get("/p/{pid}/reviews", response_class=HTMLResponse)
    async def reviews(request: Request, pid: str):
        p = site.project(pid)
        state = request.scope.get("state", {})
        name = state["reviewer"]["name"] if state.get("auth") == "reviewer" else None
        found = await asyncio.to_thread(reviews_of, pid, name)
        return site.page(request, "reviews.html", p=p, reviewer=name, **found)

    @r.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, before: int | None = None):
        rows = db.audit_rows(site.con(), limit=500, before=before)
        return site.page(request, "audit.html", rows=rows, older=rows[-1]["id"] if len(rows) == 500 else None)

    return r
