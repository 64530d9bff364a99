"""Load test for `tunesmith serve`: N streaming clients for T seconds against a server on loopback.

    python bench/serve_load.py                                  # embedded model, 20 clients, 30 s
    python bench/serve_load.py --model runs/pantry --clients 8 --seconds 60 --max-concurrency 8

Starts `tunesmith serve` as a child process on 127.0.0.1 (a free port), waits for /health, then runs
the clients: each sends a streamed chat completion, reads it to `data: [DONE]`, and sends the next;
a 429 is honoured by waiting its Retry-After. New requests stop at the deadline; the ones in flight
finish (each bounded by --max-tokens and a timeout), then the server is stopped. It counts 5xx
answers and truncated streams (no [DONE], no finish chunk, no usage, or a broken connection) — both
must be zero — and prints p50/p99 latency, time to first token and tokens/s. The numbers also go to
bench/out/serve_load.json.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

QUESTIONS = [
    "What is a cook night?",
    "Summarise why households drift from their weekly plan.",
    "Write one insight about delivery windows in the house style.",
    "What do participants mean by a quiet week?",
    "Give a recommendation for first-week experience friction.",
    "How do teenagers take part in weeknight cooking?",
    "What is the leftover loop?",
    "Describe a moment of doubt during checkout.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def one_request(http: httpx.AsyncClient, url: str, model: str, max_tokens: int, rng: random.Random, stats: dict):
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.7,
        "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
    }
    t0 = time.perf_counter()
    first = None
    done = finished = False
    usage = None
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code == 429:
                stats["429"] += 1
                await r.aread()
                return float(r.headers.get("retry-after", "1"))
            if r.status_code >= 500:
                stats["5xx"] += 1
                await r.aread()
                return 0.5
            if r.status_code != 200:
                stats["other_4xx"] += 1
                stats.setdefault("errors", []).append((await r.aread()).decode()[:300])
                return 0.5
            async for line in r.aiter_lines():
                if not line:
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content") and first is None:
                        first = time.perf_counter() - t0
                    if choice.get("finish_reason"):
                        finished = True
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        stats["truncated"] += 1
        stats.setdefault("errors", []).append(repr(exc)[:300])
        return 0.5
    if not (done and finished and usage):
        stats["truncated"] += 1
        return 0.0
    stats["ok"] += 1
    stats["latency"].append(time.perf_counter() - t0)
    if first is not None:
        stats["ttft"].append(first)
    stats["completion_tokens"] += usage["completion_tokens"]
    return 0.0


async def client(idx: int, url: str, model: str, deadline: float, max_tokens: int, stats: dict):
    rng = random.Random(idx)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10)) as http:
        while time.perf_counter() < deadline:
            wait = await one_request(http, url, model, max_tokens, rng, stats)
            if wait:
                await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))


async def load(url: str, model: str, clients: int, seconds: float, max_tokens: int) -> dict:
    stats = {
        "ok": 0,
        "429": 0,
        "5xx": 0,
        "other_4xx": 0,
        "truncated": 0,
        "latency": [],
        "ttft": [],
        "completion_tokens": 0,
    }
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(client(i, url, model, deadline, max_tokens, stats) for i in range(clients)))
    stats["wall_s"] = time.perf_counter() - t0
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--max-concurrency", type=int, default=None, help="rows in the server's batch (default: serve.max_concurrency)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="requests the server lets wait (default: serve.max_queue); more get 429 and retry",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "serve_load.json"))
    args = p.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tunesmith.cli", "serve", args.model, "--host", "127.0.0.1", "--port", str(port)]
    for flag, value in (("--max-concurrency", args.max_concurrency), ("--max-queue", args.max_queue)):
        if value is not None:
            cmd += [flag, str(value)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    log = open(Path(args.out).with_suffix(".server.log"), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TUNESMITH_API_KEY": ""})
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() - t0 > 300:
                print(f"server did not start; see {log.name}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        health = httpx.get(f"{url}/health").json()
        args.max_concurrency, args.max_queue = health["max_concurrency"], health["max_queue"]
        print(
            f"server up in {time.time() - t0:.1f} s; {args.clients} clients for {args.seconds:.0f} s, "
            f"max_tokens {args.max_tokens}, server batch {args.max_concurrency} rows + {args.max_queue} waiting; "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        stats = asyncio.run(load(url, model, args.clients, args.seconds, args.max_tokens))
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    result = {
        "model": args.model,
        "clients": args.clients,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "max_concurrency": args.max_concurrency,
        "max_queue": args.max_queue,
        "load_avg_1m": os.getloadavg()[0],
        "requests_ok": stats["ok"],
        "responses_429": stats["429"],
        "responses_5xx": stats["5xx"],
        "other_4xx": stats["other_4xx"],
        "truncated_streams": stats["truncated"],
        "latency_p50_s": percentile(stats["latency"], 50),
        "latency_p99_s": percentile(stats["latency"], 99),
        "ttft_p50_s": percentile(stats["ttft"], 50),
        "ttft_p99_s": percentile(stats["ttft"], 99),
        "completion_tokens": stats["completion_tokens"],
        "wall_s": round(stats["wall_s"], 1),
        "tokens_per_s": stats["completion_tokens"] / stats["wall_s"],
        "errors": stats.get("errors", [])[:5],
        "cpu_count": os.cpu_count(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"requests ok {result['requests_ok']}  429 {result['responses_429']}  5xx {result['responses_5xx']}  "
        f"truncated {result['truncated_streams']}  other 4xx {result['other_4xx']}"
    )
    print(
        f"latency p50 {result['latency_p50_s']:.2f} s  p99 {result['latency_p99_s']:.2f} s   "
        f"first token p50 {result['ttft_p50_s']:.2f} s  p99 {result['ttft_p99_s']:.2f} s"
    )
    print(
        f"{result['completion_tokens']} completion tokens in {result['wall_s']} s "
        f"= {result['tokens_per_s']:.1f} tokens/s"
    )
    print(f"wrote {args.out}")
    return 0 if result["responses_5xx"] == 0 and result["truncated_streams"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
