"""Generation shared by compare, chat, generate and serve, on the engine (tunesmith.generation.engine).

    tunesmith generate --prompt "What is a persona?"
    from tunesmith.generation.api import generate
    outs = generate(model, tok, [[{"role": "user", "content": "Hi"}]], max_new_tokens=64)

`generate` answers many conversations with continuous batching; `stream` yields one reply piece by
piece. Both record prompt and completion tokens, the finish reason and the latency per reply.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

from tunesmith.generation.stopping import guard_cut, newline_ids, repeat_start, stop_ids
from tunesmith.models import render


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # from the start of its prefill to its last token, sharing the batch with the others
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens) or "repeat" (the loop guard)


def encode_prompts(tok, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation's prompt under the chat template, ready for the reply."""
    return [tok(render(tok, conv), add_special_tokens=False)["input_ids"] for conv in conversations]


def generate(
    model,
    tok,
    conversations: list[list[dict]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    progress=None,
    reuse_prefix: bool = True,
    stop_on_repeat: bool = True,
) -> list[Completion]:
    """Reply to each conversation, `batch_size` replies in flight at once (continuous batching: a
    finished reply's row goes to the next prompt at the next step). `model` may also be a
    tunesmith.generation.vllm.VllmModel (generate.engine=vllm).

    reuse_prefix: a prefix several prompts share (a long system prompt, the same few-shot block) is
    prefilled once and its keys and values copied for the others; replies and token counts are the same.
    stop_on_repeat: a reply that starts to loop stops there and loses the repeat (finish_reason
    "repeat"; completion_tokens counts what was generated).
    Prompts are taken shortest first, so the rows running together have similar lengths (a row's
    padding up to the longest one costs attention at every step); shared prefixes are found in any order.
    """
    from tunesmith.generation.engine import Engine, EngineConfig, Request
    from tunesmith.generation.vllm import VllmModel

    prompts = encode_prompts(tok, conversations)
    if isinstance(model, VllmModel):  # generate.engine=vllm: vLLM batches them itself
        from tunesmith.generation import vllm as vllm_engine

        outs = [
            Completion(*o)
            for o in vllm_engine.generate(model, tok, prompts, max_new_tokens, temperature, top_p, seed, stop_on_repeat)
        ]
        if progress is not None:
            progress(len(outs))
        return outs
    engine = Engine(model, tok, EngineConfig.batch(batch_size, reuse_prefix))
    results: list[Completion | None] = [None] * len(prompts)
    # The engine's batch attends over every cached token; a model with sliding-window layers agrees
    # with it only while a sequence fits the window. Longer ones go through transformers' own
    # generate, one at a time: the same replies, without the batching.
    beyond = {i for i, p in enumerate(prompts) if engine.window is not None and len(p) + max_new_tokens > engine.window}
    for i in sorted(beyond):
        results[i] = _one_by_transformers(
            model, tok, prompts[i], max_new_tokens, temperature, top_p, seed + i, stop_on_repeat
        )
        if progress is not None:
            progress(1)
    order = sorted((i for i in range(len(prompts)) if i not in beyond), key=lambda i: (len(prompts[i]), prompts[i]))
    reqs = [
        Request(
            prompts[i],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed + i,
            stop_on_repeat=stop_on_repeat,
        )
        for i in order
    ]
    engine.run(reqs, progress=progress)
    for i, req in zip(order, reqs):
        if req.error is not None:
            raise req.error
        results[i] = Completion(req.text(tok), len(req.prompt), req.spent, req.t_done - req.t_admit, req.finish_reason)
    return results


def _one_by_transformers(
    model,
    tok,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    stop_on_repeat: bool,
) -> Completion:
    """One reply from transformers' `generate`, with the engine's stop ids and loop guard (checked
    after every token, as the engine does, so the reply and its token count are the engine's)."""
    import time

    import torch

    t0 = time.perf_counter()
    stops = stop_ids(tok)
    kw = {
        "do_sample": temperature > 0,
        "max_new_tokens": max_new_tokens,
        "eos_token_id": stops,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else stops[0],
    }
    if temperature > 0:
        torch.manual_seed(seed)
        kw.update(temperature=temperature, top_p=top_p)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)[0, len(prompt) :].tolist()
    end = next((j for j, t in enumerate(out) if t in stops), None)
    new, finish = (out[:end], "stop") if end is not None else (out, "length")
    spent = len(new)
    n = guard_cut(new, newline_ids(tok)) if stop_on_repeat else None
    if n is not None:
        new, spent, finish = new[: repeat_start(new[:n], newline_ids(tok))], n, "repeat"
    return Completion(
        tok.decode(new, skip_special_tokens=True).strip(), len(prompt), spent, time.perf_counter() - t0, finish
    )


def stream(
    model,
    tok,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_event: threading.Event | None = None,
    usage: dict | None = None,
    stop_on_repeat: bool = True,
    seed: int = 0,
) -> Iterator[str]:
    """Yield the reply to one conversation piece by piece as it is generated.

    Setting `stop_event` (a client went away) ends generation at the next token. A `usage` dict is
    filled, once the reply is complete, with prompt_tokens, completion_tokens (stop token excluded,
    as in `generate`) and finish_reason: "stop" (EOS), "length" (max_new_tokens), "repeat" (a loop
    began; what was already streamed stays sent) or "cancelled".
    """
    from tunesmith.generation.engine import Engine, EngineConfig, Request

    pieces: list[str] = []
    req = Request(
        encode_prompts(tok, [messages])[0],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop_on_repeat=stop_on_repeat,
        on_text=pieces.append,
    )
    engine = Engine(model, tok, EngineConfig(max_rows=1))
    engine.submit(req)
    while not req.done.is_set():
        if stop_event is not None and stop_event.is_set():
            req.cancel()
        engine.step()
        while pieces:
            yield pieces.pop(0)
    while pieces:
        yield pieces.pop(0)
    if req.error is not None:
        raise req.error
    if usage is not None:
        usage.update(prompt_tokens=len(req.prompt), completion_tokens=req.spent, finish_reason=req.finish_reason)
