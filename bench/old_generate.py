"""The batched generation path as it was before the engine (src/tunesmith/generate.py at d8dad5c),
kept only so bench/generate_speed.py can compare the two on the same prompts. Not part of tunesmith.
Generation shared by compare, chat, generate and serve: batched, and streamed.

    tunesmith generate --prompt "What is a persona?"
    from tunesmith.generation.api import generate
    outs = generate(model, tok, [[{"role": "user", "content": "Hi"}]], max_new_tokens=64)

Both paths use transformers' `generate` (KV cache, stop at EOS). The batched path left-pads the
prompts, records prompt and completion tokens and the latency per example.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from tunesmith.generation.stopping import newline_ids as _newline_ids
from tunesmith.generation.stopping import repeat_start
from tunesmith.generation.stopping import stop_ids as _stop_ids
from tunesmith.models import render


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # wall time of the batch this example was generated in
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens) or "repeat" (LoopGuard)


def _decoding(tok, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=_stop_ids(tok))
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def encode_prompts(tok, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation's prompt under the chat template, ready for the reply."""
    return [tok(render(tok, conv), add_special_tokens=False)["input_ids"] for conv in conversations]


@torch.inference_mode()
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
    reuse_prefix: bool = False,
    stop_on_repeat: bool = True,
) -> list[Completion]:
    """Reply to each conversation. Prompts are sorted by length so a batch wastes little on padding.

    reuse_prefix: the token prefix every prompt shares (a long common system prompt) is run through
    the model once and its KV cache reused by every batch, as a serving stack's prompt cache does.
    The replies are the same; prompt_tokens still counts the whole prompt.
    stop_on_repeat: a reply that starts to loop stops there and loses the repeat (LoopGuard);
    finish_reason "repeat", completion_tokens counts what was generated.
    """
    from transformers import StaticCache, StoppingCriteriaList

    prompts = encode_prompts(tok, conversations)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Completion | None] = [None] * len(prompts)
    stop = set(_stop_ids(tok))
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    shared, prefix_cache = _prefix_cache(model, prompts, device) if reuse_prefix else (0, None)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) - shared for i in idx)
        # (B, shared + T): the shared prefix, then each row's own part left-padded so every row's next
        # token is at the same position (positions come from the mask, so the padding in the middle
        # of a row changes nothing)
        ids = torch.full((len(idx), shared + width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), shared + width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :shared], mask[row, :shared] = torch.tensor(prompts[i][:shared]), 1
            own = prompts[i][shared:]
            ids[row, shared + width - len(own) :] = torch.tensor(own)
            mask[row, shared + width - len(own) :] = 1
        cache = {}
        if prefix_cache is not None:
            # a static cache, the shared prefix copied in once per row: a dynamic cache would copy
            # the whole (B, H, prefix + t, D) cache at every step to append one token (a 1,600-token
            # prefix: 41 s → 34 s for 15 replies of 48 tokens). Without a long prefix the dynamic one
            # is faster (a static cache attends over its whole length at every step).
            cache["cache"] = StaticCache(config=model.config, max_cache_len=shared + width + max_new_tokens)
            for layer_idx, layer in enumerate(prefix_cache.layers):
                cache["cache"].update(*(x.expand(len(idx), -1, -1, -1) for x in (layer.keys, layer.values)), layer_idx)
        guard = LoopGuard(tok, shared + width) if stop_on_repeat else None
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            **cache,
            stopping_criteria=StoppingCriteriaList([guard] if guard else []),
            **_decoding(tok, max_new_tokens, temperature, top_p),
        )
        latency = time.perf_counter() - t0
        for row, i in enumerate(idx):
            kept, spent, reason = _finish(out[row, shared + width :].tolist(), stop, guard, row)
            results[i] = Completion(
                tok.decode(kept, skip_special_tokens=True).strip(), len(prompts[i]), spent, latency, reason
            )
        if progress is not None:
            progress(len(idx))
    return results


def _finish(new: list[int], stop: set[int], guard: "LoopGuard | None", row: int = 0) -> tuple[list[int], int, str]:
    """One row's generated ids -> (ids of the reply, tokens generated, finish reason)."""
    if guard is not None and row in guard.cuts:
        return new[: guard.cuts[row]], guard.spent[row], "repeat"
    cut = next((j for j, t in enumerate(new) if t in stop), None)
    return (new, len(new), "length") if cut is None else (new[:cut], cut, "stop")


def _prefix_cache(model, prompts: list[list[int]], device, at_least: int = 64):
    """(length, KV cache) of the token prefix all prompts share; (0, None) when it is short.
    Every prompt keeps at least one token of its own, so generation starts from a real input."""
    shared = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        shared = next((j for j in range(shared) if p[j] != prompts[0][j]), shared)
    if shared < at_least:
        return 0, None
    out = model(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True)
    return shared, out.cache


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
) -> Iterator[str]:
    """Yield the reply to one conversation piece by piece as it is generated.

    Setting `stop_event` (a client went away) ends generation at the next token. A `usage` dict is
    filled, once the reply is complete, with prompt_tokens, completion_tokens (stop token excluded,
    as in `generate`) and finish_reason: "stop" (EOS), "length" (max_new_tokens), "repeat" (a loop
    began; what was already streamed stays sent) or "cancelled".
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return bool(stop_event is not None and stop_event.is_set())

    device = next(model.parameters()).device
    prompt = encode_prompts(tok, [messages])[0]
    guard = LoopGuard(tok, len(prompt)) if stop_on_repeat else None
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(
        input_ids=torch.tensor([prompt], device=device),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([_Stop()] + ([guard] if guard else [])),
        **_decoding(tok, max_new_tokens, temperature, top_p),
    )
    errors = []
    stop = set(_stop_ids(tok))

    def run():
        try:
            with torch.inference_mode():
                out = model.generate(**kwargs)
            if usage is not None:
                _, spent, reason = _finish(out[0, len(prompt) :].tolist(), stop, guard)
                if reason == "length" and stop_event is not None and stop_event.is_set():
                    reason = "cancelled"
                usage.update(prompt_tokens=len(prompt), completion_tokens=spent, finish_reason=reason)
        except Exception as exc:  # surfaced in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if errors:
        raise errors[0]


class LoopGuard:
    """Stops a reply that has started to repeat itself, and says where the repetition began.

    Small models under greedy decoding fall into loops ("Participants: 7\\nParticipants: 7\\n…")
    and then spend every remaining token on them. A row stops when it writes a whole line (five
    tokens or more) it already wrote, or when its last tokens are one unit repeated at least three
    times and over at least 16 tokens. `cuts[row]` is then the length of the reply without the repeat.
    A stopping criterion for transformers' generate (called with the ids so far, it answers per row),
    and rows that stop are padded from then on (a row that ended at EOS is padded too, and its
    padding is not taken for a loop).
    """

    def __init__(self, tok, start: int):
        self.start, self.newlines, self.stop = start, _newline_ids(tok), set(_stop_ids(tok))
        self.cuts: dict[int, int] = {}  # row -> tokens kept
        self.spent: dict[int, int] = {}  # row -> tokens generated when it stopped

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, new in enumerate(input_ids[:, self.start :].tolist()):
            if row in self.cuts:
                done[row] = True
                continue
            if self.stop.intersection(new):  # ended at EOS: what follows is padding, not a loop
                continue
            cut = repeat_start(new, self.newlines)
            if cut is not None:
                self.cuts[row], self.spent[row], done[row] = cut, len(new), True
        return done
