"""Load on loopback, bounded in count and time: a storm of 200 connections at once, clients that
trickle their headers or body, and a soak of mixed streaming, plain, bad and disconnecting clients
that watches the server's memory and threads.

The server runs in a forked child (its own GIL, so the clients' work does not slow it down) on a
socket bound to 127.0.0.1; a tiny model whose forward pass sleeps SLOW_FORWARD_S holds its two
generation slots long enough for the rest of a burst to find them busy.

    pytest -q tests/reliability/test_load.py -s                        # storm, slow clients, 8 s soak
    SOAK_SECONDS=600 pytest -q -m soak tests/reliability/test_load.py -s  # the 10-minute soak
"""

import asyncio
import json
import os
import signal
import socket
import statistics
import threading
import time

import httpx
import pytest

NAME = "tiny"
MESSAGES = [{"role": "user", "content": "What is a cook night?"}]
SLOW_FORWARD_S = 0.01
SLOTS = 2
HEADER_TIMEOUT_S = BODY_TIMEOUT_S = 1.0

pytestmark = pytest.mark.subprocess  # forks the server


def _serve_forever(sock, model_dir):
    """The child: load the tiny model, make it slow, serve until SIGTERM."""
    import torch
    import uvicorn

    from tunesmith.models import load
    from tunesmith.serve import create_app, server_config

    model, tok = load(str(model_dir), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # at init scale the model repeats one token; varied replies exercise more code
    model.register_forward_pre_hook(lambda *_: time.sleep(SLOW_FORWARD_S))
    app = create_app(
        (model, tok), model_name=NAME, max_concurrency=SLOTS, default_max_tokens=16, body_timeout_s=BODY_TIMEOUT_S
    )
    uvicorn.Server(server_config(app, header_timeout_s=HEADER_TIMEOUT_S, log_level="critical")).run(sockets=[sock])


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            _serve_forever(sock, tiny_model_dir)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    sock.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        assert time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0), "server did not start"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield {"url": url, "port": port, "pid": pid}
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def busy(url) -> int:
    return httpx.get(f"{url}/health", timeout=5).json()["busy"]


def wait_idle(url, within_s=10):
    t0 = time.time()
    while busy(url):
        assert time.time() - t0 < within_s, "slots still busy"
        time.sleep(0.05)


def _request(body: dict) -> bytes:
    blob = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(blob)).encode() + b"\r\n\r\n" + blob
    )


async def _burst(port, n, body):
    """Open n connections, then send n requests at once; (status, seconds to the status line) each."""
    conns = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port) for _ in range(n)])
    request = _request(body)

    async def one(reader, writer):
        t0 = time.perf_counter()
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        took = time.perf_counter() - t0
        rest = await reader.read()
        writer.close()
        status = int(status_line.split()[1])
        payload = rest.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in rest else b""
        return status, took, payload

    return await asyncio.gather(*[one(r, w) for r, w in conns])


def _p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def test_storm_of_200_connections_is_answered_429_fast_never_5xx(server):
    wait_idle(server["url"])
    results = asyncio.run(_burst(server["port"], 200, {"model": NAME, "messages": MESSAGES, "max_tokens": 8}))
    statuses = [s for s, _, _ in results]
    refused = [t for s, t, _ in results if s == 429]
    figures = {
        "connections": len(results),
        "200": statuses.count(200),
        "429": len(refused),
        "5xx": sum(s >= 500 for s in statuses),
        "p50_429_ms": round(1000 * _p(refused, 0.5), 1),
        "p99_429_ms": round(1000 * _p(refused, 0.99), 1),
        "max_429_ms": round(1000 * max(refused), 1),
    }
    print(f"\nstorm: {json.dumps(figures)}")
    assert figures["5xx"] == 0 and set(statuses) <= {200, 429}
    assert figures["200"] >= SLOTS and figures["429"] >= 150
    for status, _, payload in results:
        if status == 429:
            assert set(json.loads(payload)["error"]) == {"message", "type", "param", "code"}
    # The target is 100 ms; on a shared 2-core machine the bound asserted here is looser
    # (the measured figure goes into docs/reliability.md).
    assert figures["p99_429_ms"] < 1000
    wait_idle(server["url"])


def _trickle(port, head: bytes, body: bytes, gap_s: float, within_s: float) -> tuple[bytes, float]:
    """Send head then body one byte per gap_s; return what the server answered and when it hung up."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(gap_s)
    t0, got = time.time(), b""
    try:
        for byte in head + body:
            s.sendall(bytes([byte]))
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            except socket.timeout:
                pass
            assert time.time() - t0 < within_s, "the server kept a trickling client"
        s.settimeout(within_s)
        while chunk := s.recv(65536):
            got += chunk
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    return got, time.time() - t0


def test_trickling_headers_are_cut_off_and_hold_no_slot(server):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(r=_trickle(server["port"], head, b"", 0.05, 10)))
    thread.start()
    time.sleep(0.3)
    assert busy(server["url"]) == 0
    ok = httpx.post(f"{server['url']}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2}, timeout=10)
    assert ok.status_code == 200  # others are served meanwhile
    thread.join(15)
    got, took = holder["r"]
    print(f"\ntrickled headers: connection closed after {took:.2f} s (timeout {HEADER_TIMEOUT_S} s)")
    assert got == b"" and HEADER_TIMEOUT_S * 0.9 <= took < HEADER_TIMEOUT_S + 2


def test_a_trickling_body_gets_408_and_holds_no_slot(server):
    body = json.dumps({"messages": MESSAGES, "max_tokens": 2}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", server["port"]))
    sock.sendall(head)
    t0 = time.time()
    got = b""
    sock.settimeout(0.05)
    for byte in body:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        assert busy(server["url"]) == 0
        try:
            chunk = sock.recv(65536)
            got += chunk
            if not chunk or b"\r\n\r\n" in got:
                break
        except socket.timeout:
            pass
        assert time.time() - t0 < 10
    sock.settimeout(5)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    sock.close()
    took = time.time() - t0
    print(f"\ntrickled body: 408 after {took:.2f} s (timeout {BODY_TIMEOUT_S} s)")
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    error = json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "request_timeout"
    assert took < BODY_TIMEOUT_S + 2


# ------------------------------------------------------------------------------------- soak


def _proc(pid) -> dict:
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else ""
    return {"rss_kb": int(fields["VmRSS"]), "threads": int(fields["Threads"])}


def soak(server, seconds: float, clients: int = 6) -> dict:
    """Mixed clients for `seconds`: streams read to [DONE], plain replies, streams dropped midway,
    bad requests. Returns counts, RSS and thread figures (after a warm-up of a fifth of the time)."""
    url, stop = server["url"], threading.Event()
    counts = {"streams_done": 0, "streams_without_done": 0, "plain": 0, "dropped": 0, "bad": 0, "429": 0, "5xx": 0}
    lock = threading.Lock()

    def count(key):
        with lock:
            counts[key] += 1

    def client(k):
        import random

        rng = random.Random(k)
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                kind = rng.choice(["stream", "plain", "drop", "bad"])
                body = {"model": NAME, "messages": MESSAGES, "max_tokens": rng.randint(1, 12)}
                if kind == "bad":
                    r = http.post(f"{url}/v1/chat/completions", json={**body, "temperature": -1})
                    count("5xx" if r.status_code >= 500 else "bad")
                    continue
                if kind == "plain":
                    r = http.post(f"{url}/v1/chat/completions", json=body)
                    count("5xx" if r.status_code >= 500 else "429" if r.status_code == 429 else "plain")
                    continue
                with http.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r:
                    if r.status_code != 200:
                        count("5xx" if r.status_code >= 500 else "429")
                        r.read()
                        continue
                    events = []
                    for line in r.iter_lines():
                        if line:
                            events.append(line)
                        if kind == "drop" and len(events) == 2:
                            break  # hang up mid-reply
                    if kind == "drop":
                        count("dropped")
                    else:
                        count("streams_done" if events[-1] == "data: [DONE]" else "streams_without_done")
                time.sleep(rng.uniform(0, 0.02))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    warm = max(2.0, seconds / 5)
    samples = []
    while time.time() - t0 < seconds:
        time.sleep(0.5)
        samples.append((time.time() - t0, _proc(server["pid"])))
    stop.set()
    for t in threads:
        t.join(30)
    wait_idle(url)
    time.sleep(0.5)
    after = _proc(server["pid"])
    warm_rss = (
        statistics.median(s["rss_kb"] for t, s in samples if warm - 2 <= t <= warm + 2) or samples[0][1]["rss_kb"]
    )
    late = [s["rss_kb"] for t, s in samples if t > warm]
    return {
        **counts,
        "seconds": round(time.time() - t0, 1),
        "rss_mb_after_warmup": round(warm_rss / 1024, 1),
        "rss_mb_end": round(late[-1] / 1024, 1),
        "rss_drift_pct": round(100 * (max(late) - warm_rss) / warm_rss, 1),
        "threads_during_max": max(s["threads"] for _, s in samples),
        "threads_after_idle": after["threads"],
    }


def _soak_and_check(server, seconds):
    wait_idle(server["url"])
    base = _proc(server["pid"])["threads"]
    figures = soak(server, seconds)
    figures["threads_before"] = base
    print(f"\nsoak: {json.dumps(figures)}")
    assert figures["5xx"] == 0 and figures["streams_without_done"] == 0
    assert figures["streams_done"] > 0 and figures["plain"] > 0 and figures["dropped"] > 0 and figures["bad"] > 0
    assert figures["rss_drift_pct"] <= 10
    # Generation threads end with their request; the thread pool that counts prompt tokens stays at its size.
    assert figures["threads_after_idle"] <= max(base, 8) + 2
    return figures


def test_soak_short(server):
    _soak_and_check(server, seconds=8)


@pytest.mark.slow
@pytest.mark.soak
def test_soak(server):
    _soak_and_check(server, seconds=float(os.environ.get("SOAK_SECONDS", 600)))
