"""An OpenAI-compatible HTTP API (and a small web UI) for a run or any model tunesmith can load.

    tunesmith serve runs/pantry                       # http://127.0.0.1:8000, the run's adapter on its base
    tunesmith serve smollm2-135m-instruct --port 8001 --api-key "$KEY"
    from tunesmith.serve import create_app
    app = create_app("runs/pantry", api_key="secret")  # any ASGI server runs it

Routes: POST /v1/chat/completions (streamed over SSE or not), GET /v1/models, GET /health, and the
web UI at /. Every answer a client can cause is a 4xx in OpenAI's error shape
{"error": {"message", "type", "param", "code"}}: 401 without the key, 413 for a large body, 400 for
bad parameters or a prompt + max_tokens past the context length, 429 (with Retry-After) when the
batch is full and `max_queue` requests already wait. Every request joins one running batch (the
engine, tunesmith.generation.engine: continuous batching in its own thread; or vLLM with --engine vllm); the
event loop only moves bytes. A client that goes away mid-reply loses its row at the next step. A
client that sends its headers or body too slowly is cut off (the connection closed, or 408) and
never holds a place in the batch.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.
import asyncio
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tunesmith import UserError, rundir, web
from tunesmith.config import ServeConfig
from tunesmith.web import SSE_HEADERS, ApiError, Guard, allowed_hosts, key_matches, number, read_body, sampling

# Parameters a client may send that this server cannot honour: refused (400), never silently ignored,
# unless they carry the value that means "off".
_UNSUPPORTED = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
}

_CFG = ServeConfig()

# A client must send its request headers within HEADER_TIMEOUT_S of starting them (uvicorn itself
# waits forever: one byte a minute keeps a connection open), and its body within BODY_TIMEOUT_S.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0


@dataclass
class ChatRequest:
    messages: list[dict]
    max_tokens: int | None
    temperature: float
    top_p: float
    stream: bool
    include_usage: bool
    stop: list[str]


# ------------------------------------------------------------------------------- the app


def create_app(
    model_spec_or_loaded=None,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    max_concurrency: int = _CFG.max_concurrency,
    max_queue: int = _CFG.max_queue,
    max_body_bytes: int = _CFG.max_body_bytes,
    default_max_tokens: int = _CFG.default_max_tokens,
    engine: str = "tunesmith",
    system: str = "",
    body_timeout_s: float = BODY_TIMEOUT_S,
    workbench: str | Path | None = None,
    hosts: frozenset[str] | None = None,
):
    """A FastAPI app serving one model: a spec (run dir, model dir, embedded name, hub id, or a resolved
    models.ModelSource) or a (model, tok) pair.
    engine: tunesmith | vllm | auto (generate.engine). system: a system prompt put in front of every
    conversation that brings none. workbench: a projects directory whose workbench (`tunesmith ui`)
    is served under /workbench/ as well, behind the same API key (or a workbench app). hosts: the Host
    names answered (web.allowed_hosts; default: loopback names only)."""
    import contextlib

    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import HTMLResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from tunesmith.generation import vllm as vllm_engine

    bench = None  # the workbench first: a bad projects directory is refused before the model loads
    if isinstance(workbench, (str, Path)) and str(workbench):
        from tunesmith.workbench.app import create_app as create_workbench

        bench = create_workbench(workbench, api_key=api_key, hosts=hosts)
    elif workbench is not None:  # a workbench app already made (tests give it their model and job settings)
        bench = workbench

    kind = vllm_engine.choose(engine) if not isinstance(model_spec_or_loaded, tuple) else "tunesmith"
    if kind == "vllm":
        from tunesmith.models import ModelSource, converted_dir, load_tokenizer

        tok = load_tokenizer(model_spec_or_loaded)
        spec = model_spec_or_loaded
        spec = str(converted_dir(spec)) if isinstance(spec, ModelSource) else spec  # vLLM reads the folder
        backend = _VllmBackend(vllm_engine.AsyncBackend(spec, max_concurrency=max_concurrency), tok)
        context = int(tok.model_max_length) if tok.model_max_length < 1e9 else 2048
    else:
        if isinstance(model_spec_or_loaded, tuple):
            model, tok = model_spec_or_loaded
        else:
            from tunesmith.models import load

            model, tok = load(model_spec_or_loaded, merge_adapter=True)
        backend = _EngineBackend(model, tok, max_concurrency)
        context = int(getattr(model.config, "max_position_embeddings", 0) or tok.model_max_length)
    name = model_name or _served_name(model_spec_or_loaded)
    slots = _Slots(max_concurrency + max_queue)  # in the batch or waiting for a row
    created = int(time.time())

    async def authorize(request: Request):  # async: a sync dependency costs a thread-pool hop per request
        if api_key and request.url.path != "/health" and not key_matches(request, api_key, basic=True):
            # Browsers answer a Basic challenge with a login box, so the web UI works with a key too.
            headers = {"WWW-Authenticate": 'Basic realm="tunesmith"'} if request.url.path == "/" else {}
            raise ApiError(
                401,
                "Incorrect or missing API key. Send `Authorization: Bearer KEY`.",
                code="invalid_api_key",
                headers=headers,
            )

    @contextlib.asynccontextmanager
    async def lifespan(app):  # a mounted app's own lifespan never runs: its job queue starts here
        if bench is not None:
            bench.state.runner.start()
        yield
        if bench is not None:
            bench.state.runner.close()

    app = FastAPI(
        title="tunesmith",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(authorize)],
        lifespan=lifespan,
    )
    if bench is not None:
        app.mount("/workbench", bench)
    # The mounted workbench keeps its own body limits (uploads are larger than chat requests).
    app.add_middleware(
        Guard,
        hosts=hosts or allowed_hosts(),
        body_limit=lambda path: None if path.startswith("/workbench/") else max_body_bytes,
    )
    app.state.slots, app.state.backend = slots, backend

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return ApiError(
            exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None
        ).response()

    @app.exception_handler(Exception)
    async def _our_bug(request, exc: Exception):
        return ApiError(
            500, f"internal error ({type(exc).__name__}); see the server log", type="server_error"
        ).response()

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": name,
            "busy": slots.busy,
            "running": backend.running,
            "queued": max(0, slots.busy - backend.running),
            "max_concurrency": max_concurrency,
            "max_queue": max_queue,
        }

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(name, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str):
        if model_id != name:
            raise ApiError(
                404,
                f"The model `{model_id}` does not exist; this server serves `{name}`.",
                param="model",
                code="model_not_found",
            )
        return _model_card(name, created)

    @app.get("/", response_class=HTMLResponse)
    async def ui():
        return HTMLResponse((Path(__file__).parent / "ui" / "index.html").read_text(encoding="utf-8"))

    @app.get("/ui/chat.js")
    async def ui_script():  # the page's script is a file of its own: the CSP allows no inline script
        from fastapi.responses import FileResponse

        return FileResponse(Path(__file__).parent / "ui" / "chat.js", media_type="text/javascript")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_json(request, max_body_bytes, body_timeout_s)
        req = parse_chat_request(body, name)
        if system and req.messages[0]["role"] != "system":
            req.messages.insert(0, {"role": "system", "content": system})
        # The place is taken before the prompt is tokenized: in a burst, every request past the limit
        # is refused at once instead of queueing for the tokenizer behind all the others.
        if not slots.try_acquire():
            raise ApiError(
                429,
                f"{max_concurrency} requests are generating and {max_queue} waiting, the most this "
                f"server takes; retry shortly.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        try:
            prompt = await asyncio.to_thread(_encode_prompt, tok, req.messages)
            prompt_tokens = len(prompt)
            max_tokens = _fit_context(prompt_tokens, req.max_tokens, context, default_max_tokens)
            gen = _Generation(backend, prompt, req, max_tokens, slots)  # owns the slot from here on
        except UserError as exc:  # the engine cannot take this request (e.g. past a sliding window)
            slots.release()
            raise ApiError(400, str(exc), param="messages") from None
        except BaseException:  # refused (400) or the client left: the place was never used
            slots.release()
            raise
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return StreamingResponse(
                _sse(gen, rid, now, name, req),
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        text, finish = await _collect(gen, request)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": name,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(gen.usage, prompt_tokens),
        }

    return app


# ------------------------------------------------------------------------- request checks


async def _read_json(request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> dict:
    """The body as a JSON object, at most `limit` bytes (413 before reading more), within timeout_s (408)."""
    body = await read_body(request, limit, timeout_s)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Request body is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    return data


def parse_chat_request(body: dict, served: str) -> ChatRequest:
    """Check a chat completion request; every problem is a 400 naming the parameter."""
    model = body.get("model")
    if model is not None and model != served:
        raise ApiError(
            404,
            f"The model `{model}` does not exist; this server serves `{served}`.",
            param="model",
            code="model_not_found",
        )
    for key, off in _UNSUPPORTED.items():
        if key in body and body[key] not in off:
            raise ApiError(400, f"`{key}` is not supported by this server.", param=key, code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise ApiError(400, 'Only response_format {"type": "text"} is supported.', param="response_format")
    n = number(body, "n", 1, int, lo=1)
    if n != 1:
        raise ApiError(400, f"n={n}: this server returns one choice per request; send n=1.", param="n")
    max_tokens, temperature, top_p = sampling(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, "`stream` must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "`stream_options` must be an object.", param="stream_options")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "`stop` must be a non-empty string or a list of up to 4 of them.", param="stop")
    return ChatRequest(
        messages=web.messages(body.get("messages")),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stream=bool(stream),
        include_usage=bool(options.get("include_usage")),
        stop=stop,
    )


def _encode_prompt(tok, messages: list[dict]) -> list[int]:
    from tunesmith.generation.api import encode_prompts

    try:
        return encode_prompts(tok, [messages])[0]
    except Exception as exc:  # the chat template refused this conversation (e.g. roles must alternate)
        raise ApiError(400, f"The model's chat template rejected these messages: {exc}", param="messages") from None


def _fit_context(prompt_tokens: int, max_tokens: int | None, context: int, default: int) -> int:
    if max_tokens is None:
        if prompt_tokens >= context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, your messages "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        return min(default, context - prompt_tokens)
    if prompt_tokens + max_tokens > context:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
            f"max_tokens). Please reduce the length of the messages or max_tokens.",
            param="messages",
            code="context_length_exceeded",
        )
    return max_tokens


# ----------------------------------------------------------------------------- generation


class _Slots:
    """At most `limit` requests generating or waiting; one more is answered 429."""

    def __init__(self, limit: int):
        self.limit, self.busy, self._lock = limit, 0, threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.busy >= self.limit:
                return False
            self.busy += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.busy -= 1


class _EngineBackend:
    """The tunesmith engine, stepping in its own thread; every request is one row of its batch."""

    def __init__(self, model, tok, max_rows: int):
        from tunesmith.generation.engine import Engine, EngineConfig

        self.engine = Engine(model, tok, EngineConfig.serving(max_rows))
        self.engine.start()

    @property
    def running(self) -> int:
        return self.engine.running

    def submit(self, gen: "_Generation", prompt: list[int], req: ChatRequest, max_tokens: int):
        from tunesmith.generation.engine import Request

        def done(r: Request):
            gen.usage.update(prompt_tokens=len(r.prompt), completion_tokens=r.spent, finish_reason=r.finish_reason)
            gen.end(r.error)

        handle = Request(
            prompt,
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=int.from_bytes(os.urandom(4), "little"),
            on_text=gen.put,
            on_done=done,
        )
        self.engine.submit(handle)
        return handle.cancel


class _VllmBackend:
    """vLLM's own engine (generate.engine=vllm): an asyncio task per request."""

    def __init__(self, backend, tok):
        self.backend, self.tok = backend, tok

    @property
    def running(self) -> int:
        return self.backend.running

    def submit(self, gen: "_Generation", prompt: list[int], req: ChatRequest, max_tokens: int):
        async def run():
            error = None
            try:
                async for piece in self.backend.stream(
                    self.tok, prompt, max_tokens, req.temperature, req.top_p, True, gen.usage
                ):
                    gen.put(piece)
            except asyncio.CancelledError:  # the client went away; vLLM aborts the request itself
                gen.usage.setdefault("finish_reason", "cancelled")
            except Exception as exc:  # reported to the client by the event loop
                error = exc
            finally:
                gen.end(error)

        task = asyncio.get_running_loop().create_task(run())
        return lambda: gen.loop.call_soon_threadsafe(task.cancel)


class _Generation:
    """One reply, handed to the event loop piece by piece by the backend (from its own thread).

    The slot is freed when generation has really ended, so a slot is never free while its tokens
    are still being computed. `cancel()` takes the request out of the batch at the next step.
    """

    def __init__(self, backend, prompt: list[int], req: ChatRequest, max_tokens: int, slots: _Slots):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.usage: dict = {}
        self.stops = req.stop
        self.finish: str | None = None
        self.slots = slots
        self._cancel = backend.submit(self, prompt, req, max_tokens)

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def end(self, error: BaseException | None) -> None:
        self.slots.release()
        self.put(error if error is not None else StopIteration())

    async def pieces(self):
        """Text as it comes, cut at the first stop string; sets self.finish at the end."""
        hold = max((len(s) for s in self.stops), default=1) - 1
        buffer = ""
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, StopIteration):
                    break
                if isinstance(item, Exception):
                    raise item
                buffer += item
                cut = min((i for i in (buffer.find(s) for s in self.stops) if i >= 0), default=-1)
                if cut >= 0:
                    if buffer[:cut]:
                        yield buffer[:cut]
                    self.finish = "stop"
                    self.cancel()
                    await self._drain()
                    return
                if len(buffer) > hold:  # keep back what could be the start of a stop string
                    yield buffer[: len(buffer) - hold]
                    buffer = buffer[len(buffer) - hold :]
            if buffer:
                yield buffer
            self.finish = "stop" if self.usage.get("finish_reason") in ("stop", "repeat", "cancelled") else "length"
        finally:
            self.cancel()  # the consumer is gone (client disconnect): stop at the next token

    async def _drain(self) -> None:
        """Wait for the worker to finish, so usage counts every token it generated."""
        while not isinstance(await self.queue.get(), (StopIteration, Exception)):
            pass

    def cancel(self) -> None:
        self._cancel()


async def _collect(gen: _Generation, request) -> tuple[str, str]:
    """The whole reply; a client that hangs up stops generation (watched every 0.25 s)."""

    async def watch():
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)
        gen.cancel()

    watcher = asyncio.create_task(watch())
    try:
        text = "".join([piece async for piece in gen.pieces()])
    finally:
        watcher.cancel()
    return text, gen.finish


async def _sse(gen: _Generation, rid: str, created: int, name: str, req: ChatRequest):
    """OpenAI's chat.completion.chunk events, then `data: [DONE]`."""

    def event(choices, **extra) -> str:
        chunk = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n"

    def choice(delta, finish=None):
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    yield event(choice({"role": "assistant", "content": ""}))
    try:
        async for piece in gen.pieces():
            yield event(choice({"content": piece}))
    except Exception as exc:  # headers are sent: report in-band, and end without [DONE]
        error = {
            "message": f"generation failed ({type(exc).__name__})",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        yield f"data: {json.dumps({'error': error})}\n\n"
        return
    yield event(choice({}, gen.finish))
    if req.include_usage:
        yield event([], usage=_usage(gen.usage, gen.usage.get("prompt_tokens", 0)))
    yield "data: [DONE]\n\n"


def _usage(usage: dict, prompt_tokens: int) -> dict:
    prompt = usage.get("prompt_tokens", prompt_tokens)
    completion = usage.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "tunesmith"}


def _served_name(spec) -> str:
    """What /v1/models calls the model: the run or directory name, or the embedded name."""
    from tunesmith.models import DEFAULT_MODEL

    if spec is None or isinstance(spec, tuple):
        return DEFAULT_MODEL if spec is None else "tunesmith-model"
    spec = getattr(spec, "spec", spec)  # a ModelSource: the name it was asked by
    path = Path(str(spec))
    if not path.exists():
        return str(spec)
    path = path.resolve()
    return path.parent.name if path.name == rundir.FINAL else path.name


# ------------------------------------------------------------------------------ the server


def server_config(app, host: str = "127.0.0.1", port: int = 8000, header_timeout_s: float = HEADER_TIMEOUT_S, **kwargs):
    """uvicorn's settings for clients we do not control: headers that trickle in are cut off."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=_slow_headers_protocol(header_timeout_s), **kwargs)


def _slow_headers_protocol(timeout_s: float):
    """uvicorn's h11 protocol, closing a connection whose request headers are not all there within
    timeout_s of the connection opening, or of a kept-alive connection's next request starting
    (uvicorn's keep-alive timeout only covers idle time between requests)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SlowHeaders(H11Protocol):
        def connection_made(self, transport):
            self._header_timer = None
            super().connection_made(transport)
            self._watch_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_headers()

        def connection_lost(self, exc):
            self._stop_header_timer()
            super().connection_lost(exc)

        def _watch_headers(self) -> None:
            waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
            if waiting and self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)
            elif not waiting:
                self._stop_header_timer()

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE:
                self.transport.close()

    return SlowHeaders


# -------------------------------------------------------------------------------------- CLI


def model_to_serve(args, cfg):
    """The model spec `serve` loads: --model, else the config's model.name; a hub model's pinned
    revision or GGUF file (--revision / --quant, else the config's when the model is the config's)
    resolves it here, so the served weights are the ones the config names."""
    model = args.model or (cfg.model.name if args.config else None)
    from_config = not args.model and bool(args.config)
    revision = getattr(args, "revision", "") or (cfg.model.revision if from_config else "")
    gguf_file = getattr(args, "quant", "") or (cfg.model.gguf_file if from_config else "")
    if not (revision or gguf_file):
        return model
    from tunesmith.models import resolve

    return resolve(model, revision, gguf_file)


def cli_serve(args) -> int:
    import uvicorn

    from tunesmith.config import load_config

    cfg = load_config(args.config) if args.config else load_config(None)
    s = cfg.serve  # the config's serve: section, then the flags given on the command line
    for key in (
        "host",
        "port",
        "api_key",
        "max_concurrency",
        "max_queue",
        "max_body_bytes",
        "default_max_tokens",
        "workbench",
    ):
        if getattr(args, key, None) is not None:
            setattr(s, key, getattr(args, key))
    engine = args.engine or cfg.generate.engine
    from tunesmith import web

    api_key = web.api_key_from(args) or s.api_key or None  # --api-key-file, the env, --api-key, serve.api_key
    if s.max_concurrency < 1:
        raise UserError(
            f"max_concurrency {s.max_concurrency}: must be at least 1. "
            "fix: --max-concurrency N or serve.max_concurrency."
        )
    if s.max_queue < 0:
        raise UserError(f"max_queue {s.max_queue}: must be 0 or more. fix: --max-queue N or serve.max_queue.")
    web.check_exposure(s.host, api_key, "serving")
    t0 = time.perf_counter()
    model = model_to_serve(args, cfg)
    app = create_app(
        model,
        api_key=api_key,
        max_concurrency=s.max_concurrency,
        max_queue=s.max_queue,
        max_body_bytes=s.max_body_bytes,
        default_max_tokens=s.default_max_tokens,
        engine=engine,
        system=args.system,
        workbench=s.workbench or None,
        hosts=web.allowed_hosts(s.host, getattr(args, "allowed_host", None) or ()),
    )
    name = _served_name(model)
    lines = [
        ("API", f'{web.url(s.host, s.port, "/v1")}  (model id "{name}"{", API key required" if api_key else ""})'),
        ("web UI", web.url(s.host, s.port)),
    ]
    if s.workbench:
        lines.append(
            ("workbench", f"{web.url(s.host, s.port, '/workbench/')}  (projects in {Path(s.workbench).resolve()})")
        )
    lines.append(
        ("limits", f"{s.max_concurrency} requests in the batch, {s.max_queue} waiting, {s.max_body_bytes} byte bodies")
    )
    print(
        web.startup_notice("tunesmith serve", f"{name} loaded in {time.perf_counter() - t0:.1f} s", lines), flush=True
    )
    try:
        uvicorn.Server(server_config(app, s.host, s.port, log_level="info", timeout_graceful_shutdown=5)).run()
    except KeyboardInterrupt:  # Ctrl-C after a clean shutdown (uvicorn re-raises the signal it caught)
        pass
    return 0
