"""The workbench's gatekeeping: sign-in with the API key (Bearer header, or a session the server
keeps), CSRF tokens bound to that session, a backoff on failed sign-ins, and small forms.

    sessions = Sessions(projects_dir, secret_key(projects_dir), api_key)
    app.add_middleware(Auth, api_key=KEY, sessions=sessions)

A session is a row in workbench.db (its token's SHA-256, never the token), so signing out, the
session's expiry and a new key (the workbench restarted with another one) end it on the server:
a copied cookie stops working with it. Every browser gets a session on its first page, signed in
or not; its CSRF token is the session's own, so a token a page elsewhere obtained for *its*
session is worth nothing in another browser's. State changes from another site (Sec-Fetch-Site,
Origin) are refused outright: cookies ignore ports, so a page on another port of this host is
"same-site" to a browser.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
import urllib.parse
from pathlib import Path

from starlette.requests import Request

from tunesmith.web import ApiError
from tunesmith.workbench import db

SESSION_COOKIE = "ts_session"
SESSION_HOURS, ANONYMOUS_HOURS = 12, 2
PUBLIC = ("/login", "/health")
INVITE = "/invite/"  # an invitation link's landing page and its form: open to anyone holding the link
FORM_LIMIT = 1 << 20  # bytes in a form or JSON body (uploads have their own limit)


class Refused(ApiError):
    """A refusal the workbench answers as a page (browsers) or {"error": message} (API clients)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(status, message, headers=headers)


def secret_key(root: Path) -> bytes:
    """A per-workbench secret, kept across restarts (0600, in PROJECTS_DIR)."""
    path = root / ".secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Server-side sessions in workbench.db, tied to the key the workbench runs with."""

    def __init__(self, root: Path, secret: bytes, api_key: str | None):
        self.root = root
        self.key_id = self.key_id_of(secret, api_key)
        db.sessions_purge(db.connect(root), time.time(), self.key_id)  # a new key ends every old session

    @staticmethod
    def key_id_of(secret: bytes, api_key: str | None) -> str:
        """The key's fingerprint: an HMAC under this workbench's secret, never the key."""
        return hmac.new(secret, (api_key or "").encode(), hashlib.sha256).hexdigest()[:32]

    def get(self, token: str) -> dict | None:
        if not token:
            return None
        row = db.session(db.connect(self.root), digest(token))
        if row is None or row["expires"] < time.time() or row["key_id"] != self.key_id:
            return None
        return row

    def new(self, signed_in: bool, invitation: dict | None = None) -> tuple[str, dict]:
        """A new session: anonymous, the owner's (signed in with the key), or a reviewer's (from an
        invitation; it ends with the invitation)."""
        token = secrets.token_urlsafe(32)
        hours = SESSION_HOURS if signed_in else ANONYMOUS_HOURS
        row = {
            "id": digest(token),
            "csrf": secrets.token_urlsafe(32),
            "signed_in": int(signed_in),
            "key_id": self.key_id,
            "created": time.time(),
            "expires": time.time() + hours * 3600,
            "role": "reviewer" if invitation else "owner",
            "invitation": invitation["id"] if invitation else None,
        }
        if invitation:  # it lasts as long as the invitation: revoking it ends the session sooner
            row["expires"] = invitation["expires"]
        con = db.connect(self.root)
        if secrets.randbelow(64) == 0:  # now and then, drop the expired ones
            db.sessions_purge(con, time.time(), self.key_id)
        db.session_insert(con, row)
        return token, row

    def end(self, token: str) -> None:
        if token:
            db.session_delete(db.connect(self.root), digest(token))

    def invitation_of(self, session: dict) -> tuple[dict | None, str]:
        """(the reviewer session's invitation, why it no longer admits anyone, or "")."""
        con = db.connect(self.root)
        inv = db.invitation(con, session["invitation"]) if session["invitation"] is not None else None
        ended = invitation_problem(inv)
        if not ended:
            return inv, ""
        db.session_delete(con, session["id"])  # ended at once: the next request is anonymous
        return inv, ended + " Ask the project's owner for a new link; your ratings so far are kept."


def invitation_problem(inv: dict | None) -> str:
    """Why an invitation admits no one (revoked, expired, unknown), or "" while it is good."""
    if inv is None:
        return "This invitation link is not one this workbench made (or it was mistyped)."
    if inv["revoked"]:
        return f"The invitation for {inv['name']} was revoked by the project's owner."
    if inv["expires"] < time.time():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(inv["expires"]))
        return f"The invitation for {inv['name']} expired on {when}."
    return ""


class SignInLimit:
    """Failed sign-ins per client address: FREE tries, then a lockout that doubles with each further
    failure (1 s, 2 s, 4 s … up to MAX_S). A lockout is answered 429 without looking at the key."""

    FREE, MAX_S = 5, 900

    def __init__(self, clock=time.monotonic):
        self.clock, self.lock = clock, threading.Lock()
        self.failures: dict[str, tuple[int, float]] = {}  # address -> (failures, locked until)

    def check(self, address: str) -> None:
        with self.lock:
            _, until = self.failures.get(address, (0, 0.0))
        wait = until - self.clock()
        if wait > 0:
            raise Refused(
                429,
                f"Too many wrong keys from this address: try again in {wait:.0f} s.",
                headers={"Retry-After": str(max(1, round(wait)))},
            )

    def failed(self, address: str) -> None:
        with self.lock:
            n = self.failures.get(address, (0, 0.0))[0] + 1
            wait = 0.0 if n < self.FREE else min(2.0 ** (n - self.FREE), self.MAX_S)
            self.failures[address] = (n, self.clock() + wait)
            if len(self.failures) > 10_000:  # a flood of addresses: keep the locked ones
                now = self.clock()
                self.failures = {a: v for a, v in self.failures.items() if v[1] > now}

    def succeeded(self, address: str) -> None:
        with self.lock:
            self.failures.pop(address, None)


class Auth:
    """ASGI middleware: finds the request's session (state["session"]); with a key, nothing but
    /login and /health without the key or a signed-in session. A page asked for by a browser
    without one is sent to the sign-in form; anything else is a 401."""

    def __init__(self, app, api_key: str | None, sessions: Sessions):
        self.app, self.api_key, self.sessions = app, api_key, sessions

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse, RedirectResponse

        from tunesmith.web import key_matches

        request = Request(scope)
        state = scope.setdefault("state", {})
        state["session"] = session = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if self.api_key and key_matches(request, self.api_key):
            state["auth"] = "bearer"
        elif session and session["role"] == "reviewer":
            invitation, ended = self.sessions.invitation_of(session)
            state["auth"] = "ended" if ended else "reviewer"  # access_guard answers an ended one with its page
            state["reviewer"], state["ended"] = invitation, ended
        elif not self.api_key:
            state["auth"] = "open"
        elif state["session"] and state["session"]["signed_in"]:
            state["auth"] = "session"
        elif route_path(scope) not in PUBLIC and not route_path(scope).startswith(INVITE):
            if scope["method"] == "GET" and "text/html" in request.headers.get("accept", ""):
                resp = RedirectResponse(f"{scope.get('root_path', '')}/login", status_code=303)
            else:
                resp = JSONResponse(
                    {"error": "Sign in at /login, or send `Authorization: Bearer KEY`."}, status_code=401
                )
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


# What a reviewer (a session opened from an invitation) may reach, by route and method: the review
# pages of the invitation's project. Everything else answers 403; tests/test_workbench_reviewers.py
# walks every route of the app, so a route added without a decision here fails it.
REVIEWER_ROUTES = {
    ("GET", "/health"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/invite/{token}"),
    ("GET", "/p/{pid}/reviews"),
    ("GET", "/p/{pid}/review/{jid}"),
    ("POST", "/p/{pid}/review/{jid}"),
    ("GET", "/p/{pid}/collect/{cid}"),
    ("POST", "/p/{pid}/collect/{cid}"),
}
OPEN_WHEN_ENDED = {("GET", "/health"), ("GET", "/login"), ("POST", "/login"), ("GET", "/invite/{token}")}


async def access_guard(request: Request) -> None:
    """A reviewer reaches REVIEWER_ROUTES of their own project only; a reviewer whose invitation was
    revoked or expired gets the page saying so (their session has ended)."""
    state = request.scope.setdefault("state", {})
    auth = state.get("auth")
    if auth not in ("reviewer", "ended"):
        return
    route = request.scope.get("route")
    key = (request.method if request.method != "HEAD" else "GET", getattr(route, "path", ""))
    if auth == "ended":
        if key not in OPEN_WHEN_ENDED:
            raise Refused(403, state["ended"])
        return
    pid = request.path_params.get("pid")
    if key not in REVIEWER_ROUTES or (pid is not None and pid != state["reviewer"]["project"]):
        raise Refused(
            403,
            f"As a reviewer ({state['reviewer']['name']}) you can open the review pages of your project only: "
            f"{request.scope.get('root_path', '')}/p/{state['reviewer']['project']}/reviews",
        )


def who(request: Request) -> str:
    """Who made the request, as the audit log and the ratings name them."""
    state = request.scope.get("state", {})
    return f"reviewer {state['reviewer']['name']}" if state.get("auth") == "reviewer" else "owner"


def rater(request: Request, typed: str) -> tuple[str, int | None]:
    """(the name a rating is stored under, the invitation it came through): a reviewer's is their
    invitation's, whatever the form says; the owner's is the name typed on the review page."""
    state = request.scope.get("state", {})
    if state.get("auth") == "reviewer":
        return state["reviewer"]["name"], state["reviewer"]["id"]
    return " ".join(str(typed).split())[:80], None


async def csrf_guard(request: Request) -> None:
    """A state-changing request from a browser: from this site, with its own session's token."""
    state = request.scope.setdefault("state", {})
    if request.method in ("GET", "HEAD", "OPTIONS") or state.get("auth") == "bearer":
        return
    fetch_site = request.headers.get("sec-fetch-site", "")
    origin = request.headers.get("origin")
    if fetch_site in ("same-site", "cross-site") or (
        origin is not None and urllib.parse.urlsplit(origin).netloc != request.headers.get("host", "")
    ):
        raise Refused(403, "This request came from another site (or another port of this host); refused.")
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        sent = (await read_form(request)).get("csrf_token")
    session = state.get("session")
    if not session or not sent or not hmac.compare_digest(sent, session["csrf"]):
        raise Refused(403, "Missing or stale CSRF token: reload the page and try again.")


class MountedAt:
    """ASGI middleware for a workbench mounted under a prefix (`tunesmith serve --workbench` puts it
    at /workbench): the pages' links carry the prefix (`base` in the templates), and so must the
    redirects the routes answer with, which name paths from the workbench's own root."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        prefix = scope.get("root_path", "")
        if scope["type"] != "http" or not prefix:
            return await self.app(scope, receive, send)

        async def prefixed(message):
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (
                        k,
                        prefix.encode() + v
                        if k.lower() == b"location" and v.startswith(b"/") and not v.startswith(prefix.encode() + b"/")
                        else v,
                    )
                    for k, v in message.get("headers", [])
                ]
            await send(message)

        return await self.app(scope, receive, prefixed)


def route_path(scope) -> str:
    """The request's path below the prefix the workbench is mounted at."""
    path, prefix = scope["path"], scope.get("root_path", "")
    return path[len(prefix) :] or "/" if prefix and path.startswith(prefix) else path


async def read_form(request, multi: bool = False, limit: int = FORM_LIMIT):
    """A url-encoded form body (read once, cached on the request's scope); multi keeps repeated keys."""
    from tunesmith.web import read_body

    state = request.scope.setdefault("state", {})
    if "form" not in state:
        body = await read_body(request, limit)
        state["form"] = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    parsed = state["form"]
    return parsed if multi else {k: v[-1] for k, v in parsed.items()}


async def read_json(request, limit: int = FORM_LIMIT) -> dict:
    """A JSON object body of at most `limit` bytes."""
    import json

    from tunesmith.web import read_body

    try:
        data = json.loads(await read_body(request, limit))
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "The request body is not JSON.") from None
    if not isinstance(data, dict):
        raise Refused(400, "The request body must be a JSON object.")
    return data
