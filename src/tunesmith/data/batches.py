"""From chat examples to training tensors: tokenize under the chat template with loss masks, order
the examples into optimizer steps, lay a micro-batch out packed (no padding) or padded, and compute
the loss without ever building full-vocabulary logits for tokens that carry no loss.

    from tunesmith.data.batches import encode_examples, step_indices, collate, linear_cross_entropy
    encoded, report = encode_examples(tok, examples, max_len=1024)
    batch = collate([encoded[i] for i in step_indices(len(encoded), 8, seed=0, step=0)], packing=True)

Three ideas make training fast and exact:
  * loss only where it belongs: assistant tokens (unless train_on_prompt), never a message with
    weight 0;
  * no compute on padding: a packed micro-batch is one row of concatenated examples, and a custom
    attention function (``varlen``) runs causal attention per example, so a packed example sees
    exactly what it would see alone — position ids restart at 0 for each example;
  * the LM head runs only on hidden states whose next token carries loss, in chunks, with the
    gradient computed on the fly (``linear_cross_entropy``): the (tokens, vocab) logits are never
    materialised, so memory does not grow with the number of prompt tokens.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import inspect
import json
import random

import torch
import torch.nn.functional as F

from tunesmith import UserError
from tunesmith.models import render

IGNORE = -100  # label of a position whose next token carries no loss

# ------------------------------------------------------------------------------------- tokenize


def loss_spans(tok, messages: list[dict], train_on_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss.

    A message's text is what its turn adds to the rendering of the conversation before it, so
    whatever the template wraps around a message (headers, end-of-turn tokens, a default system
    prompt) is attributed to the right message. An assistant span starts after the template's
    assistant header (the generation prompt) and ends with the end-of-turn token: the model learns
    to answer and to stop, not to write the header it is always given.
    """
    full = render(tok, messages, add_generation_prompt=False)
    spans, prev_end = [], 0
    for i, msg in enumerate(messages):
        turn = render(tok, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(turn):
            raise _NotIncremental
        end = len(turn.rstrip())  # the newline after the end-of-turn token is the next turn's business
        weight = msg.get("weight", 1)
        if weight not in (0, 1, True, False, None):
            raise UserError(f"message weight must be 0 or 1, got {weight!r}")
        if weight != 0 and (train_on_prompt or msg.get("role") == "assistant"):
            start = prev_end
            if msg.get("role") == "assistant" and not train_on_prompt and i > 0:
                head = render(tok, messages[:i], add_generation_prompt=True)
                if full.startswith(head) and prev_end <= len(head) <= end:
                    start = len(head)
            if end > start:
                spans.append((start, end))
        prev_end = len(turn)
    return full, spans


class _NotIncremental(Exception):
    """The template renders earlier turns differently once later turns exist (e.g. it drops reasoning)."""


def encode(tok, messages: list[dict], train_on_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of a conversation under the chat template, and per token 1 if it is a loss target."""
    try:
        text, spans = loss_spans(tok, messages, train_on_prompt)
    except _NotIncremental:
        # Only the last turn can be located reliably: train on it alone.
        if messages[-1].get("role") != "assistant":
            raise UserError("this model's chat template rewrites earlier turns, so only a final assistant "
                            "message can carry loss; this example does not end with one.") from None
        text = render(tok, messages, add_generation_prompt=False)
        head = render(tok, messages[:-1], add_generation_prompt=True)
        spans = [(len(head), len(text.rstrip()))] if text.startswith(head) and messages[-1].get("weight", 1) != 0 else []
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in spans]
    targets = []
    for a, _ in enc["offset_mapping"]:
        k = bisect.bisect_right(starts, a) - 1  # the last span starting at or before this token
        targets.append(int(k >= 0 and a < spans[k][1]))
    return list(enc["input_ids"]), targets


def encode_examples(tok, examples: list[dict], max_len: int, too_long: str = "drop",
                    train_on_prompt: bool = False, where: str = "dataset") -> tuple[list[dict], dict]:
    """Encode every example: [{"ids", "targets", "index"}], and a report of what was dropped and why.

    Examples longer than max_len are dropped, truncated or an error (too_long); examples left with
    no loss token (every assistant message weight 0, or truncated away) are dropped and counted.
    """
    if too_long not in ("drop", "truncate", "error"):
        raise UserError(f"data.too_long must be drop, truncate or error, got '{too_long}'.")
    out, report = [], {"examples": len(examples), "too_long_dropped": 0, "truncated": 0, "no_loss_tokens": 0}
    for index, ex in enumerate(examples):
        try:
            ids, targets = encode(tok, ex["messages"], train_on_prompt)
        except UserError as exc:
            raise UserError(f"{_name(ex, index, where)}: {exc}") from None
        if len(ids) > max_len:
            if too_long == "error":
                raise UserError(f"{_name(ex, index, where)}: {len(ids)} tokens, longer than data.max_len={max_len}. "
                                f"fix: raise data.max_len, shorten the example, or set data.too_long=truncate|drop.")
            if too_long == "drop":
                report["too_long_dropped"] += 1
                continue
            ids, targets = ids[:max_len], targets[:max_len]
            report["truncated"] += 1
        if sum(targets[1:]) == 0:  # the first token is never predicted
            report["no_loss_tokens"] += 1
            continue
        out.append({"ids": ids, "targets": targets, "index": index})
    report["kept"] = len(out)
    report["tokens"] = sum(len(e["ids"]) for e in out)
    report["loss_tokens"] = sum(n_targets(e) for e in out)
    return out, report


def _name(ex: dict, index: int, where: str) -> str:
    meta = ex.get("meta") or {}
    line = f":{meta['line']}" if meta.get("line") else ""
    ident = f" ({meta['id']})" if meta.get("id") else ""
    return f"{meta.get('source') or where}{line} example {index + 1}{ident}"


def n_targets(e: dict) -> int:
    return sum(e["targets"][1:])


def examples_hash(examples: list[dict]) -> str:
    """A stable fingerprint of a dataset: resuming on different data is refused."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex["messages"], sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------ ordering


def step_indices(n: int, global_batch: int, seed: int, step: int) -> list[int]:
    """Which examples optimizer step `step` (0-based) trains on.

    The example stream is a fresh seeded permutation per epoch, concatenated; step s takes the
    stream's slice [s*G, (s+1)*G). A pure function of (n, G, seed, step): resuming at step s
    continues the stream exactly, without repeats or gaps, and every process computes the same
    global batch without talking to the others.
    """
    out = []
    for pos in range(step * global_batch, (step + 1) * global_batch):
        epoch, k = divmod(pos, n)
        out.append(_permutation(n, seed, epoch)[k])
    return out


_PERM_CACHE: dict = {}


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 8:
            _PERM_CACHE.clear()
        order = list(range(n))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        _PERM_CACHE[key] = order
    return _PERM_CACHE[key]


def micro_batches(encoded: list[dict], step_ids: list[int], rank: int, world: int, grad_accum: int) -> list[list[dict]]:
    """This process's share of a step, split into grad_accum micro-batches.

    Examples are sorted by length first (length bucketing): with padding, examples of similar
    length share a micro-batch; with packing, micro-batches get similar token counts.
    """
    per_rank = len(step_ids) // world
    mine = [encoded[i] for i in step_ids[rank * per_rank:(rank + 1) * per_rank]]
    mine.sort(key=lambda e: -len(e["ids"]))
    size = -(-len(mine) // grad_accum)
    return [mine[i:i + size] for i in range(0, len(mine), size)]


# --------------------------------------------------------------------------------------- layout


def collate(examples: list[dict], packing: bool = True, pad_id: int = 0) -> dict:
    """Tensors for one micro-batch.

    packing: one row of all examples back to back, (1, sum of lengths), position ids restarting at
      0 per example and `cu_seqlens` (the example boundaries) for the `varlen` attention. No padding.
    padding: (B, longest) right-padded; causal attention alone keeps real tokens from seeing pads,
      which come after them.
    labels[t] is the token at t+1 when that token carries loss, else IGNORE; never across examples.
    """
    rows = []
    for e in examples:
        ids, tgt = e["ids"], e["targets"]
        labels = [ids[t + 1] if tgt[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        rows.append((ids, labels))
    if packing:
        ids = [t for r in rows for t in r[0]]
        labels = [t for r in rows for t in r[1]]
        pos = [p for r in rows for p in range(len(r[0]))]
        cu = [0]
        for r in rows:
            cu.append(cu[-1] + len(r[0]))
        return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]),
                "labels": torch.tensor([labels]), "cu_seqlens": cu}
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (i, lab) in enumerate(rows):
        input_ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(lab)] = torch.tensor(lab)
    pos = torch.arange(width).expand(len(rows), width)
    return {"input_ids": input_ids, "position_ids": pos, "labels": labels, "cu_seqlens": None}


# -------------------------------------------------------------------------------- the attention

VARLEN = "tunesmith_varlen"


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seqlens=None, **_):
    """Causal attention that never crosses an example boundary.

    query (B, H, T, D), key/value (B, Hkv, T, D) -> (B, T, H, D), the shape transformers expects.
    With cu_seqlens (a packed row, B = 1) each example [cu[i], cu[i+1]) attends only to itself:
    one fused varlen kernel on CUDA, one causal SDPA call per example elsewhere — the cost is the
    sum of per-example squares, not the square of the row. Without cu_seqlens the batch is
    right-padded and plain causal attention is exact for every real token.
    """
    if cu_seqlens is None or len(cu_seqlens) == 2:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             dropout_p=dropout, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    kernel = _cuda_varlen() if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and not dropout else None
    if kernel is not None:
        fn, params = kernel
        cu = _device_cu(tuple(cu_seqlens), query.device)
        longest = max(b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:]))
        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # (T, heads, D)
        extra = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}  # newer / older torch
        if k.shape[1] != q.shape[1]:
            if "enable_gqa" in params:
                extra["enable_gqa"] = True
            else:
                k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        out = fn(q, k, v, cu, cu, longest, longest, scale=scaling, **extra)
        return out.unsqueeze(0), None
    # split, not slicing: its backward is one concatenation, where each slice's backward would
    # write into a zero-filled copy of the whole row
    lengths = [b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])]
    outs = [F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=True)
            for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


_CU: dict = {}


def _device_cu(cu: tuple, device) -> torch.Tensor:
    """The boundaries on the GPU, copied once per forward rather than once per layer."""
    if _CU.get("key") != (cu, device):
        _CU.update(key=(cu, device), value=torch.tensor(cu, dtype=torch.int32, device=device))
    return _CU["value"]


@functools.cache
def _cuda_varlen():
    """torch's fused varlen attention and its parameter names, or None where this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = set(inspect.signature(varlen_attn).parameters)
    return (varlen_attn, params) if params & {"window_size", "is_causal"} else None  # causal, or not at all


def use_varlen(model) -> None:
    """Switch a transformers model to the varlen attention (registered once, by name).

    A name transformers has no mask builder for also makes it skip building a (T, T) mask.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    cfg = model.config
    for unsupported in ("sliding_window", "attn_logit_softcapping"):
        if getattr(cfg, unsupported, None):
            raise UserError(f"{cfg.model_type}: {unsupported} is not supported by tunesmith's packed attention yet. "
                            f"fix: set train.packing=false.")
    model.set_attn_implementation(VARLEN)


# ---------------------------------------------------------------------------------------- the loss


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         bias: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """Sum of cross-entropy of `targets` under logits hidden @ weight.T (+ bias), in chunks.

    hidden (N, d) holds only positions with a target; weight (V, d). The (chunk, V) logits live one
    chunk at a time, in float32. When gradients are wanted they are computed in the same pass
    (softmax - onehot is the gradient of the logits), so nothing of size (N, V) is kept for backward.
    """
    if chunk is None:  # float32 logits per chunk: ~16 MB on a CPU (stays in cache), ~256 MB on a GPU
        chunk = max(1, (1 << (26 if hidden.is_cuda else 22)) // weight.shape[0])
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk)
    total = torch.zeros((), dtype=_wide(hidden).dtype, device=hidden.device)
    for a in range(0, hidden.shape[0], chunk):
        logits = _wide(F.linear(hidden[a:a + chunk], weight, bias))  # (chunk, V)
        total += F.cross_entropy(logits, targets[a:a + chunk], reduction="sum")
    return total


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=_wide(hidden).dtype, device=hidden.device)
        d_hidden = torch.empty_like(hidden) if need_h else None
        d_weight = torch.zeros_like(_wide(weight)) if need_w else None
        d_bias = torch.zeros_like(_wide(bias)) if need_b else None
        for a in range(0, hidden.shape[0], chunk):
            h, t = hidden[a:a + chunk], targets[a:a + chunk]
            logits = _wide(F.linear(h, weight, bias))  # (chunk, V), at least float32
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(sum CE)/d logits = softmax - onehot, computed in place of the logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            grad = grad.to(hidden.dtype)
            if need_h:
                d_hidden[a:a + chunk] = grad @ weight
            if need_w:
                d_weight += grad.t() @ h
            if need_b:
                d_bias += grad.sum(0)
        ctx.save_for_backward(d_hidden, d_weight, d_bias)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, g):
        d_hidden, d_weight, d_bias = ctx.saved_tensors
        return (None if d_hidden is None else d_hidden * g.to(d_hidden.dtype),
                None if d_weight is None else (d_weight * g).to(ctx.weight_dtype),
                None if d_bias is None else (d_bias * g).to(ctx.weight_dtype),
                None, None)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (a softmax over 50k logits needs it), else as is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
