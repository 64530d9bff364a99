"""The workbench's gatekeeping: sign-in with the API key (Bearer header or a signed session cookie),
the per-workbench secret behind sessions and CSRF tokens, and reading small url-encoded forms.

    app.add_middleware(Auth, api_key=KEY, secret=secret_key(projects_dir))
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import urllib.parse
from pathlib import Path

SESSION_COOKIE, CSRF_COOKIE = "ts_session", "ts_csrf"
SESSION_HOURS = 12
PUBLIC = ("/login", "/health")


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Auth:
    """ASGI middleware: with a key, nothing but /login and /health without the key or a session."""

    def __init__(self, app, api_key: str | None, secret: bytes):
        self.app, self.api_key, self.secret = app, api_key, secret

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.api_key:
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse

        request = Request(scope)
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        state = scope.setdefault("state", {})
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.api_key.encode()):
            state["auth"] = "bearer"
        elif session_ok(self.secret, self.api_key, request.cookies.get(SESSION_COOKIE, "")):
            state["auth"] = "session"
        elif route_path(scope) not in PUBLIC:
            if "text/html" in request.headers.get("accept", ""):
                resp = HTMLResponse(
                    "<!doctype html><meta charset=utf-8><title>Sign in</title><p>This workbench needs "
                    f'its key. <a href="{scope.get("root_path", "")}/login">Sign in</a>.</p>',
                    status_code=401,
                )
            else:
                resp = JSONResponse(
                    {"error": "Sign in at /login, or send `Authorization: Bearer KEY`."}, status_code=401
                )
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


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


def secret_key(root: Path) -> bytes:
    """A per-workbench secret for session and CSRF tokens, kept across restarts (0600, in PROJECTS_DIR)."""
    path = root / ".secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def new_session(secret: bytes, api_key: str) -> str:
    body = f"{int(time.time()) + SESSION_HOURS * 3600}.{secrets.token_urlsafe(12)}"
    return body + "." + hmac.new(secret + api_key.encode(), body.encode(), hashlib.sha256).hexdigest()


def session_ok(secret: bytes, api_key: str, value: str) -> bool:
    body, _, sig = value.rpartition(".")
    if not body or not sig:
        return False
    want = hmac.new(secret + api_key.encode(), body.encode(), hashlib.sha256).hexdigest()
    expiry = body.partition(".")[0]
    return hmac.compare_digest(sig, want) and expiry.isdigit() and int(expiry) > time.time()


async def read_form(request, multi: bool = False, limit: int = 1 << 20):
    """A url-encoded form body (read once, cached on the request's scope); multi keeps repeated keys."""
    state = request.scope.setdefault("state", {})
    if "form" not in state:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refused(413, f"Form body over {limit} bytes.")
        state["form"] = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    parsed = state["form"]
    return parsed if multi else {k: v[-1] for k, v in parsed.items()}
