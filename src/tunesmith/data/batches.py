"""From chat examples to training tensors: tokenize under the chat template with loss masks, order
the examples into optimizer steps, and lay a micro-batch out packed (no padding) or padded.
The kernels that consume these batches live in tunesmith.train.loss.

    from tunesmith.data.batches import encode_examples, step_indices, collate
    encoded, report = encode_examples(tok, examples, max_len=1024)
    batch = collate([encoded[i] for i in step_indices(len(encoded), 8, seed=0, step=0)], packing=True)

  * loss only where it belongs: assistant tokens (unless train_on_prompt), never a message with
    weight 0;
  * no compute on padding: a packed micro-batch is one row of concatenated examples with its
    boundaries (cu_seqlens), position ids restarting at 0 for each example.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random

import torch

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
            raise UserError(
                "this model's chat template rewrites earlier turns, so only a final assistant "
                "message can carry loss; this example does not end with one."
            ) from None
        text = render(tok, messages, add_generation_prompt=False)
        head = render(tok, messages[:-1], add_generation_prompt=True)
        spans = (
            [(len(head), len(text.rstrip()))] if text.startswith(head) and messages[-1].get("weight", 1) != 0 else []
        )
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in spans]
    targets = []
    for a, _ in enc["offset_mapping"]:
        k = bisect.bisect_right(starts, a) - 1  # the last span starting at or before this token
        targets.append(int(k >= 0 and a < spans[k][1]))
    return list(enc["input_ids"]), targets


def encode_examples(
    tok,
    examples: list[dict],
    max_len: int,
    too_long: str = "drop",
    train_on_prompt: bool = False,
    where: str = "dataset",
) -> tuple[list[dict], dict]:
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
            raise UserError(f"{example_name(ex, index, where)}: {exc}") from None
        if len(ids) > max_len:
            if too_long == "error":
                raise UserError(
                    f"{example_name(ex, index, where)}: {len(ids)} tokens, longer than data.max_len={max_len}. "
                    f"fix: raise data.max_len, shorten the example, or set data.too_long=truncate|drop."
                )
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


def example_name(ex: dict, index: int, where: str) -> str:
    """Where an example comes from, for errors: source:line example N (id)."""
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
        if "rejected" in ex:  # a preference pair: the other reply is data too
            h.update(json.dumps(ex["rejected"], sort_keys=True, ensure_ascii=False).encode())
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
    mine = [encoded[i] for i in step_ids[rank * per_rank : (rank + 1) * per_rank]]
    mine.sort(key=lambda e: -len(e["ids"]))
    size = -(-len(mine) // grad_accum)
    return [mine[i : i + size] for i in range(0, len(mine), size)]


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
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "labels": torch.tensor([labels]),
            "cu_seqlens": cu,
        }
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for b, (i, lab) in enumerate(rows):
        input_ids[b, : len(i)] = torch.tensor(i)
        labels[b, : len(lab)] = torch.tensor(lab)
    pos = torch.arange(width).expand(len(rows), width)
    return {"input_ids": input_ids, "position_ids": pos, "labels": labels, "cu_seqlens": None}


def to_device(batch: dict, device) -> dict:
    """A collated batch's tensors on `device` (cu_seqlens stays a list)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
