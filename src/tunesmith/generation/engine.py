"""The generation engine behind compare, chat, generate and serve: continuous batching on one model.

    from tunesmith.generation.engine import Engine, EngineConfig, Request
    engine = Engine(model, tok, EngineConfig(max_rows=16))
    done = engine.run([Request(ids, max_new_tokens=128) for ids in prompts])  # batch: every reply, in order
    engine.start(); engine.submit(Request(ids, on_text=print))                # serve: a thread steps on demand

One step of the engine: (1) requests whose client went away leave; (2) waiting prompts are prefilled
into free rows, at most `prefill_tokens` prompt tokens per step while replies are running (chunked
prefill: a long prompt does not stall them for its whole length), any amount when none is;
(3) one decode step for every running row. A reply that ends (stop id, its token limit, a loop, a
cancel) leaves the batch at the end of that step, and a waiting prompt takes its row at the next.

A decode step feeds each greedy row its last token followed by a draft (generation.draft: the
tokens that followed an earlier occurrence of the row's last few tokens, in its prompt or reply).
One forward pass gives the logits after every fed token, so the step keeps the draft's tokens as
long as each is the one greedy decoding picks, then adds greedy's own next pick: the same reply
token-by-token decoding gives, several tokens a step where a reply copies its prompt or repeats
itself. A row with no draft, and a sampling row (generation.sampling), advance one token.

The KV cache of the running rows is one buffer per layer, rows left-aligned (generation.kv). A
newcomer is prefilled alone in its own cache (exactly the computation transformers' `generate` does
for that prompt), then copied into a free row; a finished row is replaced by the last row. Decode
attention (generation.attention) is torch's fused CPU kernel, called per range of rows of similar
length and draft, so a short row is not read to the longest row's length nor a row without a draft
padded to the longest one.

A prefix several prompts share (a system prompt, a style guide, the same few-shot block) is
prefilled once and copied for the prompts that start with it (generation.prefix_cache). A long
shared prefix (`shared_attention` tokens or more) also stays out of the rows: decode attends over
it once for every row that shares it, merged with each row's own columns by log-sum-exp, where a
copy per row would be read once per row at every step.

Exact: with greedy decoding every reply equals transformers' `generate` for that prompt alone,
token for token (tests/test_engine.py, fp32), as far as fp32 rounding allows: the padded batch, the
drafts and the chunked prefill sum in another order, which can only flip a near-tie between two
tokens.

Why not transformers' own continuous batching (`generate_batch`, paged attention): it gives the
same replies, but on a CPU it was far slower than this engine on the demo's workload (figures and
the command that measures them: docs/compare.md), and it runs its loop in its own thread with no
per-step hook, so the loop guard could only stop a reply after the fact.
"""

from __future__ import annotations

import collections
import inspect
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tunesmith import arch
from tunesmith.generation import attention
from tunesmith.generation.draft import PromptLookup
from tunesmith.generation.kv import BatchKV
from tunesmith.generation.prefix_cache import PrefixCache
from tunesmith.generation.request import Request
from tunesmith.generation.sampling import Sampler
from tunesmith.generation.stopping import newline_ids, reply_end, stop_ids

__all__ = ["Engine", "EngineConfig", "Request"]


@dataclass
class EngineConfig:
    """How the engine batches. The defaults suit a few interactive rows; `batch` and `serving` are
    the settings compare/generate and serve run with."""

    max_rows: int = 8  # replies decoded together
    prefill_tokens: int = 512  # prompt tokens prefilled per step while replies run (any amount when none do)
    min_prefix: int | None = 64  # a prefix prompts share is reused from this many tokens on (None: never)
    prefix_bytes: int = 256 << 20  # memory for stored shared prefixes, least recently used dropped first
    shared_attention: int = 256  # a reused prefix this long stays out of the rows, read once per step (0: never)
    draft_tokens: int = 8  # the longest prompt-lookup draft per greedy row and step (0: no drafts)

    @classmethod
    def batch(cls, rows: int, reuse_prefix: bool = True) -> "EngineConfig":
        """compare and generate: no reply is watched while it is written, so newcomers are prefilled
        in large chunks; a shared prefix from 64 tokens (a system prompt, a few-shot block) is reused."""
        return cls(max_rows=rows, prefill_tokens=2048, min_prefix=64 if reuse_prefix else None)

    @classmethod
    def serving(cls, rows: int) -> "EngineConfig":
        """serve: 256 prompt tokens per step, so a newcomer's prefill delays the running replies by
        about as much as a few decode steps, not by its whole prompt; a shared prefix from 16 tokens is
        reused: even the chat template's default system prompt is cheaper copied than recomputed."""
        return cls(max_rows=rows, prefill_tokens=256, min_prefix=16)


class Engine:
    """Continuous batching on one model. Plain state, one lock; `step` is the whole algorithm."""

    def __init__(self, model, tok, config: EngineConfig | None = None):
        c = self.config = config or EngineConfig()
        self.model, self.tok, self.max_rows = model, tok, max(1, c.max_rows)
        self.prefill_tokens, self.draft_tokens = max(1, c.prefill_tokens), max(0, c.draft_tokens)
        # decode runs the engine's own attention (one fused kernel call per range of rows, shared
        # prefixes merged in) wherever the model's attention is plain softmax attention; a model
        # that soft-caps its scores or adds sink logits keeps its own, with every prefix in the rows
        self.own_attention = arch.plain_attention(model)
        self.shared_attention = c.shared_attention if self.own_attention else 0
        if self.own_attention:
            attention.register()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.stop = set(stop_ids(tok))
        self.sampler = Sampler(model, self.device)
        self.kv = BatchKV(arch.n_layers(model), self.max_rows)
        # the batch's mask is full attention, which equals a local layer's only while a sequence fits
        self.window = arch.sliding_window(model) or arch.attention_chunk(model)
        self.rows: list[Request] = []  # row i of the batch answers rows[i]
        self.waiting: collections.deque[Request] = collections.deque()
        self.prefilling: _Prefill | None = None
        self.prefixes = PrefixCache(c.min_prefix, c.prefix_bytes)
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.stats = {
            "prefill_s": 0.0,
            "decode_s": 0.0,
            "prefill_tokens": 0,
            "reused_tokens": 0,
            "decode_steps": 0,
            "decode_rows": 0,
            "shared_rows": 0,
            "decode_fed": 0,
            "drafted": 0,
            "accepted": 0,
        }

    # ------------------------------------------------------------------------------ the outside

    def submit(self, req: Request) -> Request:
        if self.window is not None and len(req.prompt) + req.max_new_tokens > self.window:
            from tunesmith import UserError

            raise UserError(
                f"this model attends over a sliding window of {self.window} tokens in some layers, which "
                f"tunesmith's engine does not implement, and a prompt of {len(req.prompt)} tokens plus "
                f"{req.max_new_tokens} new ones is longer. fix: shorter prompts or max_new_tokens, or "
                f"generate.engine=vllm on a GPU."
            )
        with self.cond:
            self.waiting.append(req)
            self.cond.notify()
        return req

    def run(self, requests: list[Request], progress: Callable[[int], None] | None = None) -> list[Request]:
        """Answer every request in this thread and return them (the engine must not be started)."""
        for req in requests:
            self.submit(req)
        pending = set(map(id, requests))
        while pending:
            self.step()
            for req in requests:
                if id(req) in pending and req.done.is_set():
                    pending.discard(id(req))
                    if progress is not None:
                        progress(1)
        return requests

    def start(self) -> None:
        """Step in a daemon thread whenever there is work (serve)."""
        self.thread = threading.Thread(target=self._loop, daemon=True, name="tunesmith-engine")
        self.thread.start()

    @property
    def running(self) -> int:
        return len(self.rows) + (self.prefilling is not None)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.waiting or self.rows or self.prefilling):
                    self.cond.wait()
            try:
                self.step()
            except Exception as exc:  # our bug or the model's: fail what is in flight, keep serving
                self._fail_all(exc)

    # ---------------------------------------------------------------------------------- a step

    @torch.inference_mode()
    def step(self) -> None:
        self._drop_cancelled()
        budget = self.prefill_tokens if self.rows else None  # None: no reply waits, prefill freely
        while len(self.rows) < self.max_rows and (budget is None or budget > 0):
            if self.prefilling is None:
                with self.cond:
                    if not self.waiting:
                        break
                    req = self.waiting.popleft()
                    upcoming = [r.prompt for r in self.waiting]
                self.prefilling = self._begin_prefill(req, upcoming)
            used = self._prefill_chunk(self.prefilling, budget)
            if budget is not None:
                budget -= used
        if self.rows:
            self._decode()

    def _drop_cancelled(self) -> None:
        with self.cond:
            for req in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(req)
                self._finish(req, "cancelled")
        if self.prefilling is not None and self.prefilling.req.cancelled:
            self._finish(self.prefilling.req, "cancelled")
            self.prefilling = None
        for i in reversed(range(len(self.rows))):
            if self.rows[i].cancelled:
                self._finish(self.rows[i], "cancelled")
                self._evict(i)

    # ------------------------------------------------------------------------------- prefill

    def _begin_prefill(self, req: Request, upcoming: list[list[int]]) -> "_Prefill":
        from transformers import DynamicCache

        req.t_admit = time.perf_counter()
        self.sampler.begin(req)
        if req.greedy:
            req.lookup = PromptLookup(self.draft_tokens)
        cache = DynamicCache()
        shared, layers = self.prefixes.lookup(req.prompt)
        for i, (k, v) in enumerate(layers or []):
            cache.update(k[:, :, :shared], v[:, :, :shared], i)
        self.stats["reused_tokens"] += shared
        return _Prefill(req, cache, shared, upcoming, layers, shared)

    def _prefill_chunk(self, p: "_Prefill", budget: int | None) -> int:
        """Run up to `budget` more prompt tokens of the newcomer; when its prompt is done, pick its
        first token and give it a row. Returns the prompt tokens run."""
        t0 = time.perf_counter()
        n = len(p.req.prompt) - p.done
        if budget is not None:
            n = min(n, budget)
        ids = torch.tensor([p.req.prompt[p.done : p.done + n]], device=self.device)
        pos = torch.arange(p.done, p.done + n, device=self.device)[None]
        out = self.model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1, **{self._cache_kw: p.cache})
        p.done += n
        self.stats["prefill_tokens"] += n
        if p.done == len(p.req.prompt):
            self.prefilling = None
            self.prefixes.learn(p.req.prompt, p.cache, p.upcoming)
            req = p.req
            token = self.sampler.pick(out.logits[:, -1].float(), [req])[0]
            req.t_first = time.perf_counter()
            if not self._advance(req, token):
                if self.shared_attention:
                    running = [r.prefix for r in self.rows]
                    args = (running, p.shared, p.layers, p.upcoming, self.shared_attention)
                    req.prefix = self.prefixes.shared_for(req.prompt, *args)
                own = req.prefix.length if req.prefix else 0
                self.stats["shared_rows"] += bool(own)
                self.kv.admit(
                    [(layer.keys[:, :, own:], layer.values[:, :, own:]) for layer in p.cache.layers],
                    len(req.prompt) - own,
                )
                self.rows.append(req)
        self.stats["prefill_s"] += time.perf_counter() - t0
        return n

    # -------------------------------------------------------------------------------- decode

    def _decode(self) -> None:
        t0 = time.perf_counter()
        rows = self.rows
        drafts = [r.lookup.propose(r) if r.lookup else [] for r in rows]
        counts = [1 + len(d) for d in drafts]  # tokens each row feeds: its last one, then its draft
        best, firsts = self._forward(drafts, counts)
        if not all(r.greedy for r in rows):  # a sampling row keeps one token, picked from its first logits
            sampled = self.sampler.pick(firsts, rows)
            best = [b if r.greedy else [t] for b, r, t in zip(best, rows, sampled)]
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += len(rows)
        for i in reversed(range(len(rows))):
            draft, picks = drafts[i], best[i]
            kept = 0  # draft tokens greedy would have picked itself, one after another
            while kept < len(draft) and draft[kept] == picks[kept]:
                kept += 1
            self.stats["drafted"] += len(draft)
            self.stats["accepted"] += kept
            self.kv.lens[i] += 1 + kept  # the last token's and the kept draft's keys and values stay
            if rows[i].lookup:
                rows[i].lookup.adapt(len(draft), kept)
            if any(self._advance(rows[i], t) for t in draft[:kept] + [picks[kept]]):
                self._evict(i)
        self.stats["decode_s"] += time.perf_counter() - t0

    def _forward(self, drafts: list[list[int]], counts: list[int]) -> tuple[list[list[int]], torch.Tensor]:
        """One forward pass over every row's last token and draft: per row, greedy's pick after each
        of its fed tokens; and the logits after each row's first token, (rows, vocab) float32."""
        kv, rows, dev = self.kv, self.rows, self.device
        width = max(counts)
        # With the engine's own attention the model runs on one sequence of just those tokens, laid
        # out in rows again only inside attention (attention.Plan), so a row without a draft costs one
        # token, not `width`; a model that keeps its own attention gets them as (rows, width), padded.
        flat = self.own_attention
        kv.reserve(counts if flat else [width] * len(rows))
        first = [len(r.prompt) + len(r.tokens) - 1 for r in rows]  # the position of each row's last token
        if flat:
            ids = torch.tensor([[t for r, d in zip(rows, drafts) for t in [r.tokens[-1]] + d]], device=dev)
            pos = torch.tensor([[p + j for p, c in zip(first, counts) for j in range(c)]], device=dev)
            plan = attention.Plan(counts, kv.lens, [r.prefix for r in rows], dev)
            mask, extra = None, {"tunesmith_plan": plan}  # no mask: the plan has them
        else:
            ids = torch.tensor(
                [[r.tokens[-1]] + d + [r.tokens[-1]] * (width - 1 - len(d)) for r, d in zip(rows, drafts)], device=dev
            )
            pos = torch.tensor(first, device=dev)[:, None] + torch.arange(width, device=dev)
            mask, extra = attention.padded_mask(kv.lens, width, kv.columns, self.dtype, dev), {}
        config = self.model.config
        saved = config._attn_implementation_internal
        if flat:
            config._attn_implementation_internal = attention.NAME
        try:
            out = self.model(
                input_ids=ids,
                position_ids=pos,
                attention_mask=mask,
                use_cache=True,
                **{self._cache_kw: kv.cache},
                **extra,
            )
        finally:
            config._attn_implementation_internal = saved
        self.stats["decode_fed"] += sum(counts) if flat else len(rows) * width
        logits = out.logits.float()
        if flat:  # back to rows: row i's tokens start at plan.starts[i]
            starts = plan.starts[:-1]
            picked = logits[0].argmax(-1).tolist()
            return [picked[s : s + c] for s, c in zip(starts, counts)], logits[0, starts]
        return logits.argmax(-1).tolist(), logits[:, 0]  # (rows, width): greedy's pick after each token

    def _evict(self, i: int) -> None:
        self.kv.evict(i)
        last = self.rows.pop()
        if i < len(self.rows):
            self.rows[i] = last

    # ------------------------------------------------------------------------ a reply's end

    def _advance(self, req: Request, token: int) -> bool:
        """Add one generated token to the reply; True when the reply is finished."""
        req.tokens.append(token)
        if req.lookup:
            req.lookup.extend(req)
        newlines = newline_ids(self.tok) if req.stop_on_repeat else None
        end = reply_end(req.tokens, req.max_new_tokens, self.stop, newlines)
        if end is None:
            req.kept = req.spent = len(req.tokens)
            self._stream(req)
            return False
        reason, req.kept, req.spent = end
        self._finish(req, reason)
        return True

    def _stream(self, req: Request, final: bool = False) -> None:
        if req.on_text is not None and (piece := req.unsent(self.tok, final)):
            req.on_text(piece)

    def _finish(self, req: Request, reason: str) -> None:
        if reason == "cancelled":
            req.kept = req.spent = min(req.kept, len(req.tokens))
        req.finish_reason = reason
        req.t_done = time.perf_counter()
        self.sampler.end(req)
        try:
            if reason != "error":
                self._stream(req, final=True)
        finally:
            req.done.set()
            if req.on_done is not None:
                req.on_done(req)

    def _fail_all(self, exc: BaseException) -> None:
        with self.cond:
            reqs = self.rows + ([self.prefilling.req] if self.prefilling else []) + list(self.waiting)
            self.rows, self.prefilling = [], None
            self.waiting.clear()
        self.kv = BatchKV(self.kv.n_layers, self.max_rows)
        for req in reqs:
            req.error = exc
            self._finish(req, "error")


@dataclass
class _Prefill:
    req: Request
    cache: object  # transformers DynamicCache: this prompt's keys and values alone
    done: int  # prompt tokens already in the cache (a reused prefix counts)
    upcoming: list[list[int]]  # prompts queued behind it: a prefix they share is worth keeping
    layers: list | None = None  # the stored prefix it started from, per layer (k, v)
    shared: int = 0  # tokens of that prefix it reuses
