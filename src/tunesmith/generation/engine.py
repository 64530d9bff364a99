"""The generation engine behind compare, chat, generate and serve: continuous batching on one model.

    from tunesmith.generation.engine import Engine, Request
    engine = Engine(model, tok, max_rows=16)
    done = engine.run([Request(ids, max_new_tokens=128) for ids in prompts])  # batch: every reply, in order
    engine.start(); engine.submit(Request(ids, on_text=print))                # serve: a thread steps while there is work

One step of the engine: (1) requests whose client went away leave; (2) waiting prompts are prefilled
into free rows, at most `prefill_tokens` prompt tokens per step while replies are running (chunked
prefill: a long prompt does not stall them for its whole length), any amount when none is;
(3) one decode step for every running row. A reply that ends (stop id, its token limit, a loop, a
cancel) leaves the batch at the end of that step, and a waiting prompt takes its row at the next.

A decode step feeds each greedy row its last token followed by a draft: the tokens that followed
the last earlier occurrence of the row's last four (else three, else two) tokens, in its prompt or
its reply (prompt lookup). One forward pass gives the logits after every fed token, so the step
keeps the draft's tokens as long as each is the one greedy decoding picks, then adds greedy's own
next pick: a reply that copies its prompt (a study header, a quoted highlight, a template) or
repeats itself advances several tokens a step, and is the same reply token-by-token decoding
gives. A row's draft grows while its drafts are kept whole (up to `draft_tokens`) and shrinks when
they are dropped. A row with no draft, and a sampling row, advance one token.

The KV cache of the running rows is one buffer per layer, (rows, kv_heads, columns, head_dim), rows
left-aligned: row r's tokens fill columns [0, len_r), the rest is padding the attention mask hides.
A step writes each row's fed tokens at columns len_r onwards and moves len_r past the ones it keeps;
a dropped draft's columns are written over next time. A newcomer is prefilled alone in its own
cache (exactly the computation transformers' `generate` does for that prompt), then copied into a
free row; a finished row is replaced by the last row (one row's copy, not the whole cache's).
Decode attention (`_decode_attention`) is torch's fused CPU kernel, called per range of rows of
similar length and draft, so a short row is not read to the longest row's length nor a row
without a draft padded to the longest one.

A prefix several prompts share (a system prompt, a style guide, the same few-shot block) is
prefilled once: after a prompt's prefill, the longest prefix it shares with a prompt still to come
(or a recent one) is kept, and a later prompt that starts with it copies its keys and values
instead of recomputing them. A long shared prefix (`shared_attention` tokens or more) also stays
out of the rows: decode attends over it once for every row that shares it (one kernel call over
the prefix, merged with each row's own columns by log-sum-exp), where a copy per row would be read
once per row at every step.

Exact: with greedy decoding every reply equals transformers' `generate` for that prompt alone,
token for token (tests/test_engine.py, fp32), as far as fp32 rounding allows: the padded batch, the
drafts and the chunked prefill sum in another order, which can only flip a near-tie between two
tokens.

Why not transformers' own continuous batching (`generate_batch`, paged attention, transformers
5.24): it gives the same replies, but on a CPU it was 1.8× the batched `generate` it replaces on the
demo's zero-shot prompts (64 new tokens), below the 2.5× this needs, and on the demo's whole compare
workload it was slower than this engine by more than 5× (figures: docs/compare.md, and
`bench/generate_speed.py --systems hf-cb,engine`); it runs its loop in its own thread with no
per-step hook, so the loop guard could only stop a reply after the fact.
"""

from __future__ import annotations

import collections
import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Request:
    """One prompt to answer; the engine fills in the reply fields."""

    prompt: list[int]  # token ids, chat template applied
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0  # sampling only: the same seed gives the same reply
    stop_on_repeat: bool = True  # LoopGuard: stop where the reply starts to repeat itself, drop the repeat
    on_text: Callable[[str], None] | None = None  # streaming: called from the engine's thread with each new piece
    on_done: Callable[["Request"], None] | None = None  # called from the engine's thread once the reply is finished
    # ---- the reply
    tokens: list[int] = field(default_factory=list)  # generated ids, the stop id included when there was one
    kept: int = 0  # tokens that make the reply (before the stop id or the repeat)
    spent: int = 0  # tokens generated, the repeat included, the stop id not
    finish_reason: str | None = None  # stop | length | repeat | cancelled | error
    error: BaseException | None = None
    t_admit: float = 0.0  # prefill began
    t_first: float = 0.0  # first token
    t_done: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    _cancel: bool = False
    _prefix: tuple | None = None  # (per-layer (k, v), length, tokens): a shared prefix kept out of its row
    _grams: dict | None = None  # draft lookup: n-gram of the prompt and reply -> where it last ended (Engine._draft)
    _draft_len: int = 0  # how many tokens its next draft may have (0: not drafted yet)
    _printed: int = 0  # characters of the reply already streamed

    def cancel(self) -> None:
        """Stop at the next step (a client went away); finish_reason "cancelled"."""
        self._cancel = True

    def text(self, tok) -> str:
        return tok.decode(self.tokens[: self.kept], skip_special_tokens=True).strip()


class Engine:
    """Continuous batching on one model. Plain state, one lock; `step` is the whole algorithm."""

    def __init__(
        self,
        model,
        tok,
        max_rows: int = 8,
        prefill_tokens: int = 512,
        min_prefix: int = 64,
        prefix_bytes: int = 256 << 20,
        shared_attention: int = 256,
        draft_tokens: int = 8,
    ):
        from tunesmith.generation.stopping import newline_ids, stop_ids

        self.model, self.tok, self.max_rows = model, tok, max(1, max_rows)
        self.prefill_tokens, self.min_prefix = max(1, prefill_tokens), min_prefix
        self.draft_tokens = max(0, draft_tokens)  # the longest prompt-lookup draft per greedy row and step (0: none)
        # a reused prefix this long stays out of the rows: decode reads it once for all the rows that
        # share it, not once per row (0: never)
        # decode runs the engine's own attention (one fused kernel call per layer on a CPU, shared
        # prefixes merged in) wherever the model's attention is plain softmax attention; a model
        # that soft-caps its scores or adds sink logits keeps its own, with every prefix in the rows
        self.own_attention = _plain_attention(model)
        self.shared_attention = shared_attention if self.own_attention else 0
        if self.own_attention:
            _register_attention()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.stop = set(stop_ids(tok))
        self._newline_ids = lambda: newline_ids(tok)
        self.top_k = int(getattr(getattr(model, "generation_config", None), "top_k", 0) or 0)
        self.kv = _BatchKV(self._n_layers(model), self.max_rows)
        self.window = self._sliding_window(model)
        self.rows: list[Request] = []  # row i of the batch answers rows[i]
        self.waiting: collections.deque[Request] = collections.deque()
        self.prefilling: _Prefill | None = None
        self.prefixes = _Prefixes(min_prefix, prefix_bytes)
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self._generators: dict[int, torch.Generator] = {}
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
            for req in [r for r in self.waiting if r._cancel]:
                self.waiting.remove(req)
                self._finish(req, "cancelled")
        if self.prefilling is not None and self.prefilling.req._cancel:
            self._finish(self.prefilling.req, "cancelled")
            self.prefilling = None
        for i in reversed(range(len(self.rows))):
            if self.rows[i]._cancel:
                self._finish(self.rows[i], "cancelled")
                self._evict(i)

    # ------------------------------------------------------------------------------- prefill

    def _begin_prefill(self, req: Request, upcoming: list[list[int]]) -> "_Prefill":
        from transformers import DynamicCache

        req.t_admit = time.perf_counter()
        if req.temperature and req.temperature > 0:
            self._generators[id(req)] = torch.Generator(device=self.device).manual_seed(req.seed)
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
            token = self._pick(out.logits[:, -1].float(), [req])[0]
            req.t_first = time.perf_counter()
            if not self._advance(req, token):
                req._prefix = self._decode_prefix(p) if self.shared_attention else None
                own = req._prefix[1] if req._prefix else 0
                if own:
                    self.stats["shared_rows"] += 1
                self.kv.admit(
                    [(layer.keys[:, :, own:], layer.values[:, :, own:]) for layer in p.cache.layers],
                    len(req.prompt) - own,
                )
                self.rows.append(req)
        self.stats["prefill_s"] += time.perf_counter() - t0
        return n

    def _decode_prefix(self, p: "_Prefill") -> tuple | None:
        """The prefix a newly prefilled row reads from outside its row at decode, (per-layer (k, v),
        length, tokens), or None: the group of running rows whose prefix its prompt starts with;
        else, where it reuses a stored prefix of `shared_attention` tokens or more, a new group
        whose prefix is what it shares with every prompt to come that shares that much with it, so
        that they join this group rather than each reading a copy that differs in its last tokens."""
        prompt = p.req.prompt
        for r in self.rows:
            if r._prefix is not None and len(prompt) > r._prefix[1] and prompt[: r._prefix[1]] == r._prefix[2]:
                return r._prefix
        own, layers = p.shared, p.layers
        if own < self.shared_attention:  # it may have just stored one
            own, layers = self.prefixes.lookup(prompt)
        if own < self.shared_attention:
            return None
        alike = (_common(prompt, o) for o in p.upcoming)
        own = min([own] + [n for n in alike if n >= self.shared_attention])
        return layers, own, prompt[:own]

    # -------------------------------------------------------------------------------- decode

    def _decode(self) -> None:
        t0 = time.perf_counter()
        kv, rows, dev = self.kv, self.rows, self.device
        drafts = [self._draft(r) for r in rows]
        counts = [1 + len(d) for d in drafts]  # tokens each row feeds: its last one, then its draft
        width = max(counts)
        # With the engine's own attention the model runs on one sequence of just those tokens, laid
        # out in rows again only inside attention (`_Plan`), so a row without a draft costs one
        # token, not `width`; a model that keeps its own attention gets them as (rows, width), padded.
        flat = self.own_attention
        kv.reserve(counts if flat else [width] * len(rows))
        first = [len(r.prompt) + len(r.tokens) - 1 for r in rows]  # the position of each row's last token
        config = self.model.config
        saved = config._attn_implementation_internal
        if flat:
            ids = torch.tensor([[t for r, d in zip(rows, drafts) for t in [r.tokens[-1]] + d]], device=dev)
            pos = torch.tensor([[p + j for p, c in zip(first, counts) for j in range(c)]], device=dev)
            plan = _Plan(self, counts)
            mask, extra = None, {"tunesmith_plan": plan}  # no mask: the plan has them
            config._attn_implementation_internal = _ATTENTION
        else:
            steps = torch.arange(width, device=dev)
            ids = torch.tensor(
                [[r.tokens[-1]] + d + [r.tokens[-1]] * (width - 1 - len(d)) for r, d in zip(rows, drafts)], device=dev
            )
            pos = torch.tensor(first, device=dev)[:, None] + steps
            # (rows, 1, width, columns): a row's token j sees the row's own columns and this step's first j + 1
            last = torch.tensor(kv.lens, device=dev)[:, None] + steps
            visible = torch.arange(kv.columns, device=dev) <= last[:, :, None]
            mask = torch.zeros(visible.shape, dtype=self.dtype, device=dev).masked_fill_(
                ~visible, torch.finfo(self.dtype).min
            )[:, None]
            extra = {}
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
        logits = out.logits.float()
        if flat:  # back to rows: row i's tokens start at plan.starts[i]
            starts = plan.starts[:-1]
            picked = logits[0].argmax(-1).tolist()
            best = [picked[s : s + c] for s, c in zip(starts, counts)]
            firsts = logits[0, starts]
        else:
            best = logits.argmax(-1).tolist()  # (rows, width): greedy's pick after each of the row's tokens
            firsts = logits[:, 0]
        if any(r.temperature and r.temperature > 0 for r in rows):
            sampled = self._pick(firsts, rows)
            best = [b if not (r.temperature and r.temperature > 0) else [t] for b, r, t in zip(best, rows, sampled)]
        self.stats["decode_steps"] += 1
        self.stats["decode_rows"] += len(rows)
        self.stats["decode_fed"] += sum(counts) if flat else len(rows) * width
        for i in reversed(range(len(rows))):
            draft, picks = drafts[i], best[i]
            kept = 0  # draft tokens greedy would have picked itself, one after another
            while kept < len(draft) and draft[kept] == picks[kept]:
                kept += 1
            self.stats["drafted"] += len(draft)
            self.stats["accepted"] += kept
            kv.lens[i] += 1 + kept  # the last token's and the kept draft's keys and values stay
            self._next_draft_len(rows[i], len(draft), kept)
            if any(self._advance(rows[i], t) for t in draft[:kept] + [picks[kept]]):
                self._evict(i)
        self.stats["decode_s"] += time.perf_counter() - t0

    def _draft(self, req: Request) -> list[int]:
        """Prompt lookup: the tokens that followed the last earlier occurrence of the reply's last
        four tokens, else its last three, else its last two (in the prompt or the reply so far), at
        most `req._draft_len`. Greedy rows only: decode verifies the draft in the same forward pass
        and keeps the part greedy would have picked, so a reply that copies from its prompt or
        repeats itself takes several tokens a step, and every reply is the one token-by-token
        decoding gives. The longer match is tried first because it predicts the continuation
        better (fewer tokens fed only to be dropped)."""
        if not req._draft_len:
            req._draft_len = min(_FIRST_DRAFT, self.draft_tokens)
        room = min(req._draft_len, req.max_new_tokens - len(req.tokens) - 1)
        if room <= 0 or (req.temperature and req.temperature > 0):
            return []
        n = len(req.prompt) + len(req.tokens)
        if req._grams is None:  # where each n-gram last ended, those ending at the last token left out
            seq = req.prompt + req.tokens
            req._grams = {tuple(seq[end - k + 1 : end + 1]): end for k in _GRAMS for end in range(k - 1, n - 1)}
        for k in _GRAMS:
            end = req._grams.get(tuple(_at(req, i) for i in range(n - k, n))) if n >= k else None
            if end is not None:
                return [_at(req, i) for i in range(end + 1, min(end + 1 + room, n))]
        return []

    def _next_draft_len(self, req: Request, drafted: int, kept: int) -> None:
        """A row whose whole draft was kept may draft twice as many next time (up to
        `draft_tokens`); one whose draft was dropped entirely, half as many (at least one). A reply
        copying a passage advances faster, and one writing freely feeds few tokens that are then
        dropped."""
        if drafted and kept == drafted:
            req._draft_len = min(self.draft_tokens, 2 * req._draft_len)
        elif drafted and kept == 0:
            req._draft_len = max(1, req._draft_len // 2)

    def _slices(self, counts: list[int]) -> list[tuple[int, int, int, int]]:
        """Row ranges [a, b) that decode attends in one kernel call each, with the columns and the
        tokens per row each one reads. Rows are left-aligned and a range's tokens are padded to its
        widest row, so a range costs about (b - a) × its longest row's columns × (its widest row's
        tokens + `_ROW_QUERIES`): one call would read a short row up to the longest row's length
        and pad a row without a draft to the longest draft. The ranges are the partition of the
        rows (in their order in the batch) that minimises that plus a fixed cost per call
        (`_CALL_COST`), by dynamic programming over the rows."""
        lens = [n + c for n, c in zip(self.kv.lens, counts)]  # a row reads its own columns and its fed tokens'
        n = len(lens)
        best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
        for b in range(1, n + 1):
            longest = widest = 0
            for a in range(b - 1, -1, -1):
                longest, widest = max(longest, lens[a]), max(widest, counts[a])
                cost = best[a] + (b - a) * longest * (widest + _ROW_QUERIES) + _CALL_COST
                if cost < best[b]:
                    best[b], cut[b] = cost, a
        ranges, b = [], n
        while b > 0:
            a = cut[b]
            ranges.append((a, b, max(lens[a:b]), max(counts[a:b])))
            b = a
        return ranges[::-1]

    def _evict(self, i: int) -> None:
        self.kv.evict(i)
        last = self.rows.pop()
        if i < len(self.rows):
            self.rows[i] = last

    def _pick(self, logits: torch.Tensor, reqs: list[Request]) -> list[int]:
        """Next token per row: argmax for greedy rows; temperature, top-k, top-p for sampling ones."""
        picks = logits.argmax(-1).tolist()
        for i, req in enumerate(reqs):
            if req.temperature and req.temperature > 0:
                scores = logits[i] / req.temperature
                if self.top_k:
                    kth = torch.topk(scores, min(self.top_k, scores.numel())).values[-1]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                if req.top_p < 1.0:
                    sorted_scores, order = torch.sort(scores, descending=False)
                    cum = sorted_scores.softmax(-1).cumsum(-1)
                    drop = cum <= 1 - req.top_p
                    drop[-1] = False  # keep at least the most likely token
                    scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
                probs = scores.softmax(-1)
                picks[i] = int(torch.multinomial(probs, 1, generator=self._generators[id(req)]))
        return picks

    # ------------------------------------------------------------------------ a reply's end

    def _advance(self, req: Request, token: int) -> bool:
        """Add one generated token to the reply; True when the reply is finished."""
        req.tokens.append(token)
        n = len(req.prompt) + len(req.tokens)
        if req._grams is not None:  # the n-grams that ended at the last token now end at an earlier one, n - 2
            for k in _GRAMS:
                if n - 1 - k >= 0:
                    req._grams[tuple(_at(req, i) for i in range(n - 1 - k, n - 1))] = n - 2
        if token in self.stop:
            req.kept = req.spent = len(req.tokens) - 1
            self._finish(req, "stop")
            return True
        from tunesmith.generation.stopping import repeat_start

        cut = repeat_start(req.tokens, self._newline_ids()) if req.stop_on_repeat else None
        if cut is not None:
            req.kept, req.spent = cut, len(req.tokens)
            self._finish(req, "repeat")
            return True
        req.kept = req.spent = len(req.tokens)
        if len(req.tokens) >= req.max_new_tokens:
            self._finish(req, "length")
            return True
        self._stream(req)
        return False

    def _stream(self, req: Request, final: bool = False) -> None:
        """Hand the client the reply's new text once it is settled: up to the last space or line
        break (a later token can still change how the last word decodes), all of it at the end."""
        if req.on_text is None:
            return
        text = self.tok.decode(req.tokens[: req.kept], skip_special_tokens=True)
        if not final:
            if text.endswith("\ufffd"):  # half a multi-byte character
                return
            text = text if text.endswith("\n") else text[: text.rfind(" ") + 1]
        if len(text) > req._printed:
            req.on_text(text[req._printed :])
            req._printed = len(text)

    def _finish(self, req: Request, reason: str) -> None:
        if reason == "cancelled":
            req.kept = req.spent = min(req.kept, len(req.tokens))
        req.finish_reason = reason
        req.t_done = time.perf_counter()
        self._generators.pop(id(req), None)
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
        self.kv = _BatchKV(self.kv.n_layers, self.max_rows)
        for req in reqs:
            req.error = exc
            self._finish(req, "error")

    @staticmethod
    def _sliding_window(model) -> int | None:
        """The sliding window some layers use, if any: the batch's mask is full attention, which
        equals theirs only while a sequence fits the window."""
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        types = getattr(config, "layer_types", None)
        if types:  # Gemma 2/3, Cohere 2, newer Qwen: per layer
            windowed = any(t != "full_attention" for t in types)
        elif hasattr(config, "use_sliding_window"):  # Qwen 2: a window only when switched on
            windowed = bool(config.use_sliding_window)
        else:  # Mistral: every layer, whenever a window is set
            windowed = bool(getattr(config, "sliding_window", None))
        if windowed:
            return getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None) or 0
        return None

    @staticmethod
    def _n_layers(model) -> int:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return int(config.num_hidden_layers)


_GRAMS = (4, 3, 2)  # draft lookup: the n-gram lengths matched, longest first
_FIRST_DRAFT = 4  # a row's first draft; later ones grow or shrink with what was kept (Engine._next_draft_len)


def _at(req: Request, i: int) -> int:
    """Token i of the prompt followed by the reply so far."""
    return req.prompt[i] if i < len(req.prompt) else req.tokens[i - len(req.prompt)]


@dataclass
class _Prefill:
    req: Request
    cache: object  # transformers DynamicCache: this prompt's keys and values alone
    done: int  # prompt tokens already in the cache (a reused prefix counts)
    upcoming: list[list[int]]  # prompts queued behind it: a prefix they share is worth keeping
    layers: list | None = None  # the stored prefix it started from, per layer (k, v)
    shared: int = 0  # tokens of that prefix it reuses


# --------------------------------------------------------------------------- decode attention

_ATTENTION = "tunesmith_decode"


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION, _decode_attention)


def _plain_attention(model) -> bool:
    """Whether the model's attention is softmax(q·k·scale + mask)·v and nothing more, which is all
    `_decode_attention` computes: no score soft-capping (Gemma 2), no sink logits (gpt-oss)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "attn_logit_softcapping", None):
        return False
    return not any(name.endswith("sinks") for name, _ in model.named_parameters())


class _Plan:
    """A decode step's attention layout, worked out once for all the layers. The step's tokens come
    as one sequence: row 0's last token and draft, then row 1's, and so on. `slices` are the ranges
    of rows attended in one kernel call each (Engine._slices): per range the index of each of its
    tokens in a (rows, widest row's tokens) layout (a shorter row repeats its last token, whose
    result is dropped), which of those slots are real, and which columns each slot sees. `groups`
    are the rows that share a prefix kept out of the batch, by the indices of their tokens."""

    def __init__(self, engine: Engine, counts: list[int]):
        dev, lens = engine.device, engine.kv.lens
        self.starts = starts = [0]  # row i's tokens are [starts[i], starts[i + 1]) of the sequence
        for c in counts:
            starts.append(starts[-1] + c)
        self.slices = []
        for a, b, n, w in engine._slices(counts):
            steps = torch.tensor([[min(j, counts[r] - 1) for j in range(w)] for r in range(a, b)], device=dev)
            slots = torch.tensor(starts[a:b], device=dev)[:, None] + steps
            real = torch.tensor([(r - a) * w + j for r in range(a, b) for j in range(counts[r])], device=dev)
            last = (
                torch.tensor(lens[a:b], device=dev)[:, None] + steps
            )  # token j of row r sees columns up to lens[r] + j
            self.slices.append((a, b, n, w, slots, real, torch.arange(n, device=dev) <= last[..., None]))
        groups: dict[tuple, list] = {}
        for i, r in enumerate(engine.rows):
            if r._prefix is not None:
                group = groups.setdefault((id(r._prefix[0]), r._prefix[1]), [r._prefix, []])
                group[1].extend(range(starts[i], starts[i + 1]))
        self.groups = [(layers, n, torch.tensor(idx, device=dev)) for (layers, n, _), idx in groups.values()]
        self._masks: dict[tuple, torch.Tensor] = {}

    def mask(self, i: int, rep: int, dtype: torch.dtype) -> torch.Tensor:
        """Slice i's additive mask, one row per query: (rows, 1, rep × widest, columns), made at the
        first layer and kept for the others."""
        if (i, rep, dtype) not in self._masks:
            a, b, n, w, _, _, visible = self.slices[i]
            m = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
            m.masked_fill_(~visible, torch.finfo(dtype).min)
            self._masks[i, rep, dtype] = m[:, None, None].expand(b - a, 1, rep, w, n).reshape(b - a, 1, rep * w, n)
        return self._masks[i, rep, dtype]


def _decode_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, tunesmith_plan=None, **kwargs
):
    """A decode step's attention: each row's tokens (its last one, then a draft) attend over the
    row's own columns (key, value: (rows, kv_heads, columns, head_dim); the plan's masks hide
    padding and the step's later tokens) and, for rows that share a prefix kept out of the batch,
    over that prefix, read once for the whole group; the two parts are merged by their
    log-sum-exps (the same softmax, summed in another order). Rows are attended in the plan's
    ranges, so a short row is not read up to the longest row's length. Grouped-query heads are
    never repeated: the `rep` query heads of one key head, times a row's tokens, are that head's
    queries. The step's tokens come as one sequence, query (1, heads, tokens, head_dim), and go
    back as (1, tokens, heads, head_dim), as transformers expects."""
    plan = tunesmith_plan
    _, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    flat = query[0].transpose(0, 1)  # (tokens, heads, dim)
    outs, lses = [], []
    for i, (a, b, n, w, slots, real, _) in enumerate(plan.slices):
        r = b - a
        q = flat[slots].reshape(r, w, kv_heads, rep, dim).permute(0, 2, 3, 1, 4).reshape(r, kv_heads, rep * w, dim)
        o, lse = _attend(q, key[a:b, :, :n], value[a:b, :, :n], plan.mask(i, rep, query.dtype), scale)
        outs.append(o.reshape(r, kv_heads, rep, w, dim).permute(0, 3, 1, 2, 4).reshape(r * w, heads, dim)[real])
        lses.append(lse.reshape(r, kv_heads, rep, w).permute(0, 3, 1, 2).reshape(r * w, heads)[real])
    out, lse = (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))
    for layers, n, idx in plan.groups:
        pk, pv = layers[module.layer_idx]
        g = len(idx)
        q = flat[idx].reshape(g, kv_heads, rep, dim).transpose(0, 1).reshape(1, kv_heads, g * rep, dim)
        po, plse = _attend(q, pk[:, :, :n], pv[:, :, :n], None, scale)
        po = po.reshape(kv_heads, g, rep, dim).transpose(0, 1).reshape(g, heads, dim)
        plse = plse.reshape(kv_heads, g, rep).transpose(0, 1).reshape(g, heads)
        own = lse[idx]
        top = torch.maximum(own, plse)
        wa, wb = torch.exp(own - top)[..., None], torch.exp(plse - top)[..., None]
        out[idx] = (out[idx] * wa + po * wb) / (wa + wb)
    return out[None], None


# A range of rows costs the kernel about (its widest row's tokens + _ROW_QUERIES) per row and column,
# and one more kernel call (its start, the query and output copies) about as much as _CALL_COST such
# units: fitted to timings of torch's CPU flash kernel at decode shapes.
_ROW_QUERIES = 4
_CALL_COST = 3500


def _attend(q, k, v, mask, scale):
    """softmax(q·kᵀ·scale + mask)·v and its log-sum-exp, per (batch, key head): q (B, H, L, D), k and
    v (B, H, S, D), mask broadcastable to (B, H, L, S) or None. On a CPU, torch's fused flash kernel:
    it reads each key and value once and keeps no (L, S) score tensor, where three matmuls and an
    exp over the scores cost 2 to 3 times as long at the demo's shapes."""
    if q.device.type == "cpu":
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=scale
        )
        return out, lse
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, -1)
    return torch.matmul(torch.exp(scores - lse[..., None]), v), lse


# ------------------------------------------------------------------------------ the batch's KV


class _BatchKV:
    """The running rows' keys and values: per layer (row capacity, kv_heads, column capacity, head_dim).

    Rows 0..rows-1 are live and left-aligned: row r's tokens fill columns [0, lens[r]). A decode
    step that feeds row r counts[r] tokens writes them into its columns lens[r] .. lens[r] +
    counts[r] - 1 (`reserve` sets where); the engine then moves lens[r] past the tokens it keeps, and a
    rejected draft's columns are simply written over at the next step.
    """

    def __init__(self, n_layers: int, max_rows: int, room: int = 128):
        from transformers.cache_utils import Cache

        # room: columns allocated beyond the longest row, so the buffer grows once per `room` steps
        self.n_layers, self.max_rows, self.room = n_layers, max_rows, room
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.lens: list[int] = []
        self.rows = self.columns = 0  # columns: how far this step's attention reads into the rows
        self.at: tuple | None = None  # (row index, column index) of each of this step's new tokens
        self.cache = Cache(layers=[_Layer(self, i) for i in range(n_layers)])

    def admit(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Copy a prefilled prompt's keys and values, each (1, kv_heads, length, head_dim), into a new row."""
        if not self.k:
            k0 = layers[0][0]
            self._alloc(self.max_rows, length + self.room, k0.shape[1], k0.shape[3], k0.dtype, k0.device)
        if self.rows == self.k[0].shape[0]:
            self._regrow(rows=self.rows + self.max_rows)
        if length > self.k[0].shape[2]:
            self._regrow(cols=length + self.room)
        r = self.rows
        for i, (k, v) in enumerate(layers):
            self.k[i][r, :, :length] = k[0]
            self.v[i][r, :, :length] = v[0]
        self.lens.append(length)
        self.rows += 1

    def evict(self, r: int) -> None:
        """Free row r: the last row moves into it."""
        last = self.rows - 1
        if r != last:
            n = self.lens[last]
            for t in self.k + self.v:
                t[r, :, :n] = t[last, :, :n]
            self.lens[r] = n
        self.lens.pop()
        self.rows -= 1

    def reserve(self, counts: list[int]) -> None:
        """Room for counts[r] more tokens in row r, and where this step writes them: `at`, the
        (row, column) of each token fed, in order."""
        width = max(counts)
        self.columns = max(self.lens) + width
        if self.columns > self.k[0].shape[2]:
            self._regrow(cols=self.columns + self.room)
        device = self.k[0].device
        rows = [r for r, c in enumerate(counts) for _ in range(c)]
        steps = [j for c in counts for j in range(c)]
        self.at = (
            torch.tensor(rows, device=device),
            torch.tensor([self.lens[r] + j for r, j in zip(rows, steps)], device=device),
        )

    def _alloc(self, rows, cols, heads, dim, dtype, device) -> None:
        self.k = [torch.zeros(rows, heads, cols, dim, dtype=dtype, device=device) for _ in range(self.n_layers)]
        self.v = [torch.zeros(rows, heads, cols, dim, dtype=dtype, device=device) for _ in range(self.n_layers)]

    def _regrow(self, rows: int | None = None, cols: int | None = None) -> None:
        """New buffers with more rows or more columns, the live rows copied. Columns grow by a
        quarter at least, so prompts that come longest last do not copy every time."""
        old_rows, old_cols = self.k[0].shape[0], self.k[0].shape[2]
        n_rows = rows or old_rows
        n_cols = max(cols, old_cols + old_cols // 4) if cols and cols > old_cols else old_cols
        used = max(self.lens, default=0)
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):  # one layer at a time: the copy never holds two whole caches
                new = old.new_zeros(n_rows, old.shape[1], n_cols, old.shape[3])
                new[: self.rows, :, :used] = old[: self.rows, :, :used]
                buffers[i] = new


def _layer_base():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class _Layer(_layer_base()):
    """One layer's view of the batch buffer, in the shape transformers' attention expects: a decode
    step writes its (rows, kv_heads, width, head_dim) keys and values where `_BatchKV.reserve`
    said and attends over the first `_BatchKV.columns` columns."""

    def __init__(self, kv: _BatchKV, index: int):
        super().__init__()
        self.kv, self.index, self.is_initialized = kv, index, True

    def update(self, key_states, value_states, *args, **kwargs):
        kv, i = self.kv, self.index
        rows, cols = kv.at  # one (row, column) per token fed: (batch, tokens) of the states, flattened
        kv.k[i][rows, :, cols] = key_states.transpose(1, 2).flatten(0, 1)
        kv.v[i][rows, :, cols] = value_states.transpose(1, 2).flatten(0, 1)
        return kv.k[i][: kv.rows, :, : kv.columns], kv.v[i][: kv.rows, :, : kv.columns]

    def get_seq_length(self) -> int:
        return max(self.kv.lens, default=0)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


# ------------------------------------------------------------------------------- shared prefixes


class _Prefixes:
    """Keys and values of prefixes that several prompts share, least recently used dropped first."""

    def __init__(self, min_tokens: int, max_bytes: int, recent: int = 16):
        self.min_tokens, self.max_bytes = min_tokens, max_bytes
        self.entries: collections.OrderedDict[tuple, list] = collections.OrderedDict()
        self.recent: collections.deque[list[int]] = collections.deque(maxlen=recent)

    def lookup(self, prompt: list[int]) -> tuple[int, list | None]:
        """(tokens reusable, per-layer (k, v)) of the stored prefix that covers most of `prompt`; the
        prompt keeps at least its last token, whose logits pick the first reply token."""
        best, layers, key = 0, None, None
        for tokens, kv in self.entries.items():
            n = min(_common(tokens, prompt), len(prompt) - 1)
            if n > best:
                best, layers, key = n, kv, tokens
        if best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(key)
        return best, layers

    def learn(self, prompt: list[int], cache, upcoming: list[list[int]]) -> None:
        """After `prompt` is prefilled: keep the longest prefix it shares with a prompt to come or a
        recent one, unless a stored prefix already covers it."""
        others = list(upcoming) + list(self.recent)
        self.recent.append(prompt)
        n = max((min(_common(prompt, o), len(o) - 1, len(prompt)) for o in others), default=0)
        if n < self.min_tokens or self.lookup(prompt)[0] >= n:
            return
        layers = [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()) for layer in cache.layers]
        self.entries[tuple(prompt[:n])] = layers
        while sum(_nbytes(kv) for kv in self.entries.values()) > self.max_bytes and len(self.entries) > 1:
            self.entries.popitem(last=False)


def _common(a, b) -> int:
    """Length of the common prefix of two token sequences (slices compare in C: a bisection of
    slice comparisons beats a Python loop over thousands of tokens)."""
    a, b = a if isinstance(a, list) else list(a), b if isinstance(b, list) else list(b)  # a stored key is a tuple
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _nbytes(layers: list) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
