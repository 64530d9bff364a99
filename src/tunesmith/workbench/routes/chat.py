"""Chat with a run's base and fine-tuned model side by side, and exporting a run."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tunesmith import UserError, web
from tunesmith.workbench import db, jobs
from tunesmith.workbench.security import read_form, read_json, who
from tunesmith.workbench.site import Site
from tunesmith.workbench.views import markdown

# The longest reply the chat page asks for: generation here runs on the server's CPU, one at a time.
MAX_CHAT_TOKENS = 2048


def router(site: Site) -> APIRouter:
    r = APIRouter()

    @r.get("/p/{pid}/chat/{jid}", response_class=HTMLResponse)
    def chat_page(request: Request, pid: str, jid: int):
        p, j = site.project(pid), site.run_of(pid, jid)
        return site.page(request, "chat.html", p=p, job=j)

    @r.post("/api/p/{pid}/chat/{jid}")
    async def chat_reply(request: Request, pid: str, jid: int):
        j = site.run_of(pid, jid, finished_for="chat needs")
        body = await read_json(request)
        tuned = web.messages(body.get("messages"))
        base = web.messages(body.get("base_messages") or body.get("messages"), "base_messages")
        max_tokens, temperature, _ = web.sampling(body, max_tokens_hi=MAX_CHAT_TOKENS)  # 400 when out of range
        messages = {"base": base, "tuned": tuned}
        replies = await asyncio.to_thread(site.chat.reply, j, messages, max_tokens or 256, temperature)
        return {side: {"text": text, "html": markdown(text)} for side, text in replies.items()}

    @r.post("/p/{pid}/export/{jid}")
    async def start_export(request: Request, pid: str, jid: int):
        from tunesmith.export import FORMATS

        run = site.run_of(pid, jid)
        fmt = (await read_form(request)).get("format", "")
        if fmt not in FORMATS:
            raise UserError(f"unknown export format '{fmt}'; one of {', '.join(FORMATS)}.")
        if run["status"] != "done":
            raise UserError(f"run {jid} is {run['status']}; export needs a finished run.")
        eid = jobs.submit(
            site.root,
            pid,
            "export",
            lambda eid, d: ({"argv": ["export", run["run_dir"], "--format", fmt]}, None),
            parent=jid,
            params={"format": fmt},
        )
        db.audit(site.con(), who(request), "export", f"project {pid}", f"job {eid}: run {jid} as {fmt}")
        site.runner.wake()
        return RedirectResponse(f"/p/{pid}#jobs", status_code=303)

    return r
