"""What serve and the workbench share over HTTP: the API key (where it comes from, how it is checked,
when it is too weak to expose), the Host allow-list against DNS rebinding, one body limit answered
413 before the body is read, the security headers every page carries, the start-up notice, the
headers of a server-sent event stream and the checks of chat parameters.

    app.add_middleware(Guard, hosts=allowed_hosts("127.0.0.1", ["bench.lan"]), body_limit=lambda path: 2**20)
    key = api_key_from(args)                 # --api-key-file, then TUNESMITH_API_KEY, then --api-key (warned)
    check_exposure(host, key, "the workbench")  # a weak key on a non-loopback address is refused
    body = await read_body(request, limit, timeout_s)

Every refusal here is an ApiError: a status, a message that says what to do, and OpenAI's error
fields (serve answers in OpenAI's shape, the workbench with {"error": message}).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import math
import os
import sys
from collections import Counter
from pathlib import Path

from tunesmith import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
KEY_ENV = "TUNESMITH_API_KEY"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# No inline script anywhere: a page's scripts are its own static files. Inline style attributes
# stay allowed (the progress bars set their width); images only from the page's own origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # "no-referrer" would make browsers send `Origin: null` on our own forms
}
# A key exposed beyond this machine must be one nobody guesses: long, and not one character repeated.
MIN_KEY_LENGTH, MIN_KEY_BITS = 16, 64


class ApiError(Exception):
    """A refusal with its status; `response()` answers in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self):
        from starlette.responses import JSONResponse

        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# ------------------------------------------------------------------------------ the key


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK


def api_key_from(args) -> str | None:
    """The key from --api-key-file, else the environment, else --api-key (which every local user
    can read in the process list: warned about)."""
    path = getattr(args, "api_key_file", None)
    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(
                f"{path}: cannot read the API key file ({exc.strerror}). fix: name a readable file."
            ) from None
        if not key:
            raise UserError(f"{path}: the API key file is empty. fix: write the key on its first line.")
        return key
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    key = getattr(args, "api_key", None)
    if key:
        print(
            f"warning: --api-key on the command line is visible to every user of this machine (ps). "
            f"fix: put it in a file (--api-key-file FILE, mode 0600) or the {KEY_ENV} environment variable.",
            file=sys.stderr,
            flush=True,
        )
    return key or None


def key_bits(key: str) -> float:
    """An estimate of the key's entropy: its length times the Shannon entropy of its characters."""
    counts = Counter(key)
    return -sum(c * math.log2(c / len(key)) for c in counts.values())


def check_exposure(host: str, api_key: str | None, what: str) -> None:
    """Warn about an open server beyond loopback; refuse to expose one behind a guessable key."""
    if is_loopback(host):
        return
    if not api_key:
        print(
            f"warning: {what} on {host} without an API key: anyone who can reach this port can use it. "
            f"fix: --api-key-file FILE (or set {KEY_ENV}).",
            file=sys.stderr,
            flush=True,
        )
        return
    if len(api_key) < MIN_KEY_LENGTH or key_bits(api_key) < MIN_KEY_BITS:
        raise UserError(
            f"{what} on {host}: the API key is too weak to expose beyond this machine ({len(api_key)} characters, "
            f"about {key_bits(api_key):.0f} bits; at least {MIN_KEY_LENGTH} characters and {MIN_KEY_BITS} bits). "
            f'fix: python -c "import secrets; print(secrets.token_urlsafe(32))" > key.txt; --api-key-file key.txt'
        )


def key_matches(request, api_key: str, basic: bool = False) -> bool:
    """`Authorization: Bearer KEY` (or, with basic, a browser's login box: any user, the key as password)."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    if basic and scheme.lower() == "basic":
        try:
            credential = base64.b64decode(credential).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.encode(), api_key.encode())


def url(host: str, port: int, path: str = "/") -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def startup_notice(what: str, headline: str, lines: list[tuple[str, str]]) -> str:
    """What a server prints when it starts: `what: headline`, then a `label  value` line each."""
    return "\n".join([f"{what}: {headline}", *(f"  {label:<7} {value}" for label, value in lines)])


# ------------------------------------------------------------------------------ hosts, limits, headers


def allowed_hosts(bind_host: str = "127.0.0.1", extra=()) -> frozenset[str]:
    """Loopback names, the address the server binds (unless it is a wildcard) and `--allowed-host`s.
    "*" allows any host (behind a proxy that checks it)."""
    hosts = {*LOOPBACK, *(h.lower().strip("[]") for h in extra)}
    if bind_host and bind_host not in ("0.0.0.0", "::"):
        hosts.add(bind_host.lower().strip("[]"))
    return frozenset(hosts)


def host_of(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class BodyTooLarge(ApiError):
    pass


class Guard:
    """ASGI middleware for every request: the Host must be one this server answers to (a page of a
    rebinding DNS name is refused before any route runs); a body over `body_limit(path)` bytes is
    refused with 413 from its Content-Length, or while it streams in; responses carry SECURITY_HEADERS
    (a response's own Content-Security-Policy wins: report.html's sandbox). body_limit returning None
    leaves the path to an app mounted there. `plain` answers {"error": message} instead of OpenAI's shape."""

    def __init__(self, app, hosts: frozenset[str], body_limit, plain: bool = False):
        self.app, self.hosts, self.body_limit, self.plain = app, hosts, body_limit, plain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_of(headers.get("host", ""))
        if "*" not in self.hosts and host not in self.hosts:
            hint = f" fix: start the server with --allowed-host {host}." if host else ""
            return await self._refuse(scope, receive, send, ApiError(400, f"Host '{host}' is not served here.{hint}"))
        limit = self.body_limit(scope["path"])
        if limit is not None:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                return await self._refuse(scope, receive, send, too_large(limit, int(declared)))
            receive = _counted(receive, limit)

        async def secured(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in have
                ]
            await send(message)

        return await self.app(scope, receive, secured)

    async def _refuse(self, scope, receive, send, exc: ApiError):
        from starlette.responses import JSONResponse

        resp = JSONResponse({"error": exc.message}, status_code=exc.status) if self.plain else exc.response()
        resp.headers.update(SECURITY_HEADERS)
        resp.headers["connection"] = "close"  # the body we did not read is not left on the connection
        await resp(scope, receive, send)


def too_large(limit: int, size: int | None = None) -> BodyTooLarge:
    said = f"is {size} bytes" if size is not None else f"is over {limit} bytes"
    return BodyTooLarge(413, f"Request body {said}; the limit is {limit} bytes.", code="request_too_large")


def _counted(receive, limit: int):
    seen = 0

    async def counted():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return counted


async def read_body(request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The whole body, at most `limit` bytes, arriving within timeout_s (else 408)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit, int(declared))
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large(limit)
    except TimeoutError:
        raise ApiError(
            408,
            f"The request body did not arrive within {timeout_s:g} s.",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    return bytes(body)


# ------------------------------------------------------------------------------ chat parameters


def number(body: dict, key: str, default, kind, lo=None, hi=None, lo_open=False):
    """body[key] as `kind` within bounds, or a 400 naming the parameter; `default` when absent."""
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok:
        raise ApiError(400, f"`{key}` must be {'an integer' if kind is int else 'a number'}, got {value!r}.", param=key)
    value = kind(value)
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        bounds = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ApiError(400, f"`{key}` must be {bounds}, got {value}.", param=key)
    return value


def messages(value, param: str = "messages") -> list[dict]:
    """check_messages, its complaint as a 400."""
    from tunesmith.messages import BadMessages, check_messages

    try:
        return check_messages(value)
    except BadMessages as exc:
        raise ApiError(400, exc.message.replace("`messages`", f"`{param}`"), param=exc.param) from None


def sampling(body: dict, max_tokens_hi: int | None = None) -> tuple[int | None, float, float]:
    """(max_tokens, temperature, top_p) as serve and the workbench's chat both take them."""
    max_tokens = number(body, "max_completion_tokens", None, int, lo=1, hi=max_tokens_hi)
    if max_tokens is None:
        max_tokens = number(body, "max_tokens", None, int, lo=1, hi=max_tokens_hi)
    temperature = number(body, "temperature", 0.0, float, lo=0.0, hi=2.0)
    top_p = number(body, "top_p", 1.0, float, lo=0.0, hi=1.0, lo_open=True)
    return max_tokens, temperature, top_p
