"""An OpenAI-compatible chat endpoint: the client the compare judge and the import teacher share.

    from tunesmith.endpoint import Client, check
    check(cfg.judge, "judge")             # before anything runs: url, model and key are usable
    client = Client(cfg.judge)            # any section with url, model, api_key_env, retries, backoff_s …
    text, error = client.ask([{"role": "user", "content": "Hi"}])

Any server that answers `POST /chat/completions` will do (a hosted model, vLLM, Ollama, `tunesmith serve`).
The key comes from the environment variable the section's `api_key_env` names, never from a file.
A failed request is retried with exponential backoff, or after the server's Retry-After.
"""

from __future__ import annotations

import os
import re
import threading
import time

from tunesmith import UserError


def check(j, section: str) -> None:
    """A configured endpoint (`section`: judge or teacher) must be usable before anything is sent:
    a model named, an http(s) URL, the key's environment variable set. No url: nothing to check."""
    if not j.url:
        return
    if not j.model:
        raise UserError(
            f"{section}.url is set but {section}.model is not. "
            f"fix: {section}.model=<the model name the endpoint serves>."
        )
    if not re.match(r"https?://", j.url):
        raise UserError(
            f"{section}.url={j.url!r} is not an http(s) URL. fix: e.g. {section}.url=http://127.0.0.1:8000/v1"
        )
    if j.api_key_env and not os.environ.get(j.api_key_env):
        raise UserError(
            f"{section}.api_key_env names {j.api_key_env}, which is not set in the environment. "
            f"fix: export {j.api_key_env}=<key>, or leave {section}.api_key_env empty for an endpoint without a key."
        )


class Unusable(Exception):
    """The endpoint refuses every request alike (bad URL, model or key): its caller stops asking."""


class Client:
    """POST /chat/completions with retries; counts requests, retries and tokens."""

    def __init__(self, j):
        import httpx

        key = os.environ.get(j.api_key_env) if j.api_key_env else None
        self.j = j
        self.http = httpx.Client(timeout=j.timeout_s, headers={"Authorization": f"Bearer {key}"} if key else {})
        self.url = j.url.rstrip("/") + "/chat/completions"
        self.requests = self.retries = self.usage_missing = 0
        self.prompt_tokens = self.completion_tokens = 0
        self._lock = threading.Lock()  # pairs are judged concurrently; the counters are shared
        self.refused = ""  # set by the first refusal: the requests still queued are not sent

    def _count(self, **add):
        with self._lock:
            for k, v in add.items():
                setattr(self, k, getattr(self, k) + v)

    def ask(self, msgs: list[dict]) -> tuple[str | None, str | None]:
        """(answer text, None) or (None, what went wrong after the last retry)."""
        import httpx

        error, wait = "", 0.0
        for attempt in range(self.j.retries + 1):
            if self.refused:
                raise Unusable(self.refused)
            if attempt:
                self._count(retries=1)
                time.sleep(max(wait, self.j.backoff_s * 2 ** (attempt - 1)))
            self._count(requests=1)
            try:
                r = self.http.post(
                    self.url,
                    json={"model": self.j.model, "messages": msgs, "temperature": 0, "max_tokens": self.j.max_tokens},
                )
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code == 200:
                try:
                    body = r.json()
                    text = body["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    return None, f"HTTP 200 but not a chat completion: {r.text[:200]!r}"
                usage = body.get("usage") or {}
                if "prompt_tokens" in usage:
                    self._count(
                        prompt_tokens=int(usage["prompt_tokens"]),
                        completion_tokens=int(usage.get("completion_tokens") or 0),
                    )
                else:
                    self._count(usage_missing=1)
                return str(text or ""), None
            error = f"HTTP {r.status_code}: {r.text[:200]}"
            wait = _retry_after(r.headers.get("retry-after"))
            if r.status_code in (401, 403, 404):
                self.refused = error
                raise Unusable(error)
            if r.status_code not in (408, 409, 429) and r.status_code < 500:
                return None, error  # this request is refused (too long?): the next may not be
        return None, error

    def close(self):
        self.http.close()


def _retry_after(value: str | None) -> float:
    """Seconds a 429/503 asks us to wait (capped at a minute); 0 when it says nothing usable."""
    try:
        return min(60.0, max(0.0, float(value))) if value else 0.0
    except ValueError:  # an HTTP date: fall back to our own backoff
        return 0.0
