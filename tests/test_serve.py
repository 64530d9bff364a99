"""The OpenAI-compatible server, through the official `openai` client, against real uvicorn on loopback.

A tiny random model answers, its weights scaled x4 so that greedy replies vary token to token (at
init scale it repeats one token, and text comparisons would prove little). A second copy sleeps in
every forward pass, so that a request holds its slot long enough to test 429 and client disconnects.
"""

import base64
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest

from tunesmith.generation.api import encode_prompts, generate
from tunesmith.serve import create_app

NAME = "tiny"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a cook night?"}]
KEY = "s3cret-key"
SLOW_FORWARD_S = 0.02  # per generated token on the slow model: 1000 tokens would take 20 s


@contextmanager
def running(app):
    """uvicorn in a thread on a socket the OS picked (no port race); yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def lively_copy(model_dir):
    """A fresh copy of the model with its weights scaled x4, so that greedy replies vary token to token."""
    import torch

    from tunesmith.models import load

    model, tok = load(str(model_dir), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model, tok


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return lively_copy(tiny_model_dir)


@pytest.fixture(scope="module")
def server(tiny):
    with running(create_app(tiny, model_name=NAME, max_body_bytes=20_000, max_concurrency=2)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed(tiny):
    with running(create_app(tiny, model_name=NAME, api_key=KEY)) as url:
        yield url


def _slow_server(model_dir, max_queue: int):
    """One row whose every forward pass takes SLOW_FORWARD_S: requests overlap long enough to queue."""
    model, tok = lively_copy(model_dir)
    model.register_forward_pre_hook(lambda *_: time.sleep(SLOW_FORWARD_S))
    return running(create_app((model, tok), model_name=NAME, max_concurrency=1, max_queue=max_queue))


@pytest.fixture(scope="module")
def slow(tiny_model_dir):
    with _slow_server(tiny_model_dir, max_queue=0) as url:
        yield url


def client(url, key="unused", **kw):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60, **kw)


def busy(url) -> int:
    return httpx.get(f"{url}/health").json()["busy"]


def wait_idle(url, within_s: float) -> float:
    t0 = time.time()
    while busy(url):
        assert time.time() - t0 < within_s, f"slot still busy after {within_s} s"
        time.sleep(0.05)
    return time.time() - t0


# ----------------------------------------------------------------------------- completions


def test_plain_completion_matches_library_generation(server, tiny):
    model, tok = tiny
    r = client(server).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12)
    want = generate(model, tok, [MESSAGES], max_new_tokens=12)[0]
    assert r.object == "chat.completion" and r.model == NAME
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip() == want.text and len(want.text.split()) >= 5
    assert r.choices[0].finish_reason == want.finish_reason == "length"
    assert r.usage.prompt_tokens == len(encode_prompts(tok, [MESSAGES])[0])
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_streaming_sends_openai_chunks_and_usage(server):
    c = client(server)
    plain = c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12)
    chunks = list(
        c.chat.completions.create(
            model=NAME, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 4  # streamed piece by piece, not in one go
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"

    # The wire format itself: SSE events, the last one [DONE].
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3, "stream": True}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_the_reply(server):
    c = client(server)
    full = c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    cut = c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, stop=stop, stream=True)
        if ch.choices
    )
    assert streamed == full[: full.index(stop)]


def test_models_health_and_ui(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [NAME]
    assert client(server).models.retrieve(NAME).id == NAME
    health = httpx.get(f"{server}/health").json()
    assert health == {
        "status": "ok",
        "model": NAME,
        "busy": 0,
        "running": 0,
        "queued": 0,
        "max_concurrency": 2,
        "max_queue": 32,
    }
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text


# ------------------------------------------------------------------------------------ auth


def test_api_key_guards_every_route_but_health(keyed):
    for key in ("wrong-key", KEY + "x", ""):
        with pytest.raises(openai.AuthenticationError) as err:
            client(keyed, key=key or "unused").chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(keyed, key="nope").models.list()
    assert httpx.get(f"{keyed}/v1/models").status_code == 401
    assert httpx.get(f"{keyed}/health").status_code == 200

    ok = client(keyed, key=KEY).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    assert ok.usage.completion_tokens == 2

    # The web UI: a browser gets a Basic challenge and then sends the key as the password.
    page = httpx.get(f"{keyed}/")
    assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
    basic = "Basic " + base64.b64encode(f"me:{KEY}".encode()).decode()
    assert httpx.get(f"{keyed}/", headers={"Authorization": basic}).status_code == 200
    wrong = "Basic " + base64.b64encode(b"me:guess").decode()
    assert httpx.get(f"{keyed}/", headers={"Authorization": wrong}).status_code == 401


def test_a_rebinding_host_is_refused_and_the_page_runs_no_inline_script(server):
    """The API answers only to loopback names (--allowed-host adds others): a page on a DNS name that
    resolves to 127.0.0.1 cannot use a server that has no key. Its web UI's script is a file."""
    r = httpx.get(f"{server}/v1/models", headers={"Host": "rebind.attacker.example"})
    assert r.status_code == 400 and "--allowed-host rebind.attacker.example" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/chat/completions", json={"messages": MESSAGES}, headers={"Host": "evil.example:80"})
    assert r.status_code == 400
    page = httpx.get(f"{server}/")
    assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
    assert '<script src="/ui/chat.js"></script>' in page.text and "<script>" not in page.text
    script = httpx.get(f"{server}/ui/chat.js")
    assert script.status_code == 200 and "/v1/chat/completions" in script.text
    assert httpx.get(f"{server}/health").headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------------- limits


def test_body_over_the_limit_is_413(server):
    big = [{"role": "user", "content": "x" * 30_000}]
    with pytest.raises(openai.APIStatusError) as err:
        client(server).chat.completions.create(model=NAME, messages=big, max_tokens=2)
    assert err.value.status_code == 413 and err.value.body["code"] == "request_too_large"
    assert "20000" in err.value.body["message"]

    # A chunked body declares no length: it is cut off while being read.
    def chunks():
        for _ in range(30):
            yield b" " * 1000

    r = httpx.post(f"{server}/v1/chat/completions", content=chunks())
    assert r.status_code == 413 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_prompt_plus_max_tokens_over_context_is_400_naming_both(server, tiny):
    model, tok = tiny
    prompt = len(encode_prompts(tok, [MESSAGES])[0])
    context = model.config.max_position_embeddings
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=context)
    msg = err.value.body["message"]
    assert err.value.body["code"] == "context_length_exceeded"
    assert f"{prompt} in the messages" in msg and f"{context} in max_tokens" in msg
    assert f"maximum context length is {context} tokens" in msg and str(prompt + context) in msg
    # Exactly at the limit is fine (the limit is not off by one).
    fits = client(server).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=1)
    assert fits.usage.completion_tokens == 1


BAD = [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": "ten"}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages[0].content",
    ),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.parametrize("change,param", BAD, ids=[p + "=" + json.dumps(c)[:30] for c, p in BAD])
def test_bad_parameters_are_400_in_openai_shape(server, change, param):
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 2, **change}
    r = httpx.post(f"{server}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_bad_bodies_and_routes_never_500(server):
    def post(content):
        return httpx.post(
            f"{server}/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )

    assert post(b"{not json").status_code == 400
    assert post(b"[1, 2]").status_code == 400
    assert post(b"\xff\xfe").status_code == 400
    assert post(b"").status_code == 400
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.get(f"{server}/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(openai.BadRequestError):  # through the client too
        client(server).chat.completions.create(model=NAME, messages=MESSAGES, temperature=-1)
    assert busy(server) == 0  # refused requests never took a slot


# ------------------------------------------------------------------- concurrency, disconnects


def test_concurrency_over_the_limit_is_429_with_retry_after(slow):
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 1000, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{slow}/v1/chat/completions", json=body) as holder:
        lines = holder.iter_lines()  # kept referenced: a dropped iterator closes the stream
        next(lines)  # generating: the only slot is taken
        assert busy(slow) == 1
        with pytest.raises(openai.RateLimitError) as err:
            client(slow).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
        assert err.value.status_code == 429 and err.value.response.headers["retry-after"] == "1"
        assert err.value.body["type"] == "rate_limit_error"
    # Leaving the `with` closed the stream: the slot comes back long before 1000 tokens (20 s) are done.
    assert wait_idle(slow, within_s=3) < 3
    ok = client(slow).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    assert ok.usage.completion_tokens == 2


def test_disconnect_mid_stream_frees_the_slot(slow):
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 1000, "stream": True}
    stream = client(slow).chat.completions.create(**body)
    first = [next(stream) for _ in range(3)]
    assert first[0].choices[0].delta.role == "assistant" and busy(slow) == 1
    t0 = time.time()
    stream.close()  # the client hangs up mid-reply
    waited = wait_idle(slow, within_s=3)
    assert time.time() - t0 < 3 and waited < 1000 * SLOW_FORWARD_S / 5


def test_disconnect_while_waiting_for_a_plain_reply_frees_the_slot(slow):
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 1000}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 0.5 s and closes the connection
        httpx.post(f"{slow}/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    assert wait_idle(slow, within_s=3) < 3


# ------------------------------------------------------------------------------------ CLI


def test_cli_serves_a_run_on_loopback_with_the_key_from_the_environment(tmp_path, tiny_model_dir, tokenizer):
    """`tunesmith serve RUN` in its own process: the run's adapter on its base, key from TUNESMITH_API_KEY."""
    import os
    import signal
    import subprocess
    import sys

    from tunesmith.models import load
    from tunesmith.testing import make_tiny_lora_run

    run = make_tiny_lora_run(tmp_path / "pantry", tiny_model_dir, tokenizer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "serve", str(run), "--port", str(port)],
        env={**os.environ, "TUNESMITH_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None and time.time() < deadline, "server did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        r = client(url, key=KEY).chat.completions.create(model="pantry", messages=MESSAGES, max_tokens=6)
        assert r.model == "pantry"  # named after the run directory
        model, tok = load(str(run), device="cpu", merge_adapter=True)  # the adapter, merged onto its base
        assert r.choices[0].message.content.strip() == generate(model, tok, [MESSAGES], max_new_tokens=6)[0].text
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert f"API     http://127.0.0.1:{port}/v1" in out and "API key required" in out


# ------------------------------------------------------------------------- the shared batch


def test_concurrent_requests_share_the_batch_and_match_library_generation(server, tiny):
    model, tok = tiny
    questions = [[{"role": "user", "content": q}] for q in ("hi", "What is a cook night?", "Name three staples.")]
    results = [None] * 3

    def ask(i):
        results[i] = client(server).chat.completions.create(model=NAME, messages=questions[i], max_tokens=10)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]  # 3 requests, 2 rows: one waits
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    want = generate(model, tok, questions, max_new_tokens=10)
    assert [r.choices[0].message.content.strip() for r in results] == [w.text for w in want]
    assert busy(server) == 0


@pytest.fixture(scope="module")
def slow_queue(tiny_model_dir):
    with _slow_server(tiny_model_dir, max_queue=1) as url:
        yield url


def test_a_full_batch_queues_up_to_max_queue_then_429(slow_queue):
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 1000, "stream": True}
    waiting = {}

    def queued_request():
        waiting["reply"] = client(slow_queue).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3)

    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{slow_queue}/v1/chat/completions", json=body) as holder,
    ):
        lines = holder.iter_lines()
        next(lines)  # the one row is generating
        t = threading.Thread(target=queued_request)
        t.start()
        deadline = time.time() + 10
        while httpx.get(f"{slow_queue}/health").json()["queued"] != 1:
            assert time.time() < deadline, "the second request never queued"
            time.sleep(0.05)
        health = httpx.get(f"{slow_queue}/health").json()
        assert health["running"] == 1 and health["queued"] == 1 and health["max_queue"] == 1
        with pytest.raises(openai.RateLimitError) as err:  # batch full, queue full
            client(slow_queue).chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
        assert err.value.status_code == 429
    t.join(30)  # the first stream closed: its row went to the waiting request
    assert waiting["reply"].usage.completion_tokens == 3
    assert wait_idle(slow_queue, within_s=3) < 3


def test_serve_takes_its_settings_from_the_config_then_the_flags(tmp_path, monkeypatch):
    import uvicorn

    import tunesmith.serve as serve_module
    from tunesmith.cli import build_parser

    (tmp_path / "c.yaml").write_text("serve:\n  port: 8123\n  max_queue: 5\n  max_concurrency: 3\n")
    seen = {}
    monkeypatch.setattr(serve_module, "create_app", lambda model, **kw: seen.update(kw, model=model) or object())
    monkeypatch.setattr(
        serve_module, "server_config", lambda app, host, port, **kw: seen.update(run={"host": host, "port": port})
    )
    monkeypatch.setattr(uvicorn, "Server", lambda config: type("NoServer", (), {"run": lambda self: None})())
    args = build_parser().parse_args(["serve", "tiny-dir", "--config", str(tmp_path / "c.yaml"), "--max-queue", "7"])
    assert serve_module.cli_serve(args) == 0
    assert seen["run"]["port"] == 8123 and seen["run"]["host"] == "127.0.0.1"  # from the file; the default
    assert seen["max_concurrency"] == 3 and seen["max_queue"] == 7  # the file; the flag over the file
    assert seen["model"] == "tiny-dir" and seen["engine"] == "auto"
