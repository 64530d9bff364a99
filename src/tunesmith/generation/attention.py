"""The engine's decode attention: the step's layout (`Plan`), the cost model that splits the rows
into kernel calls (`slices`), and the attention itself (`decode_attention`), registered with
transformers under `NAME` and used only for decode steps of models whose attention is plain
softmax attention (tunesmith.arch.plain_attention). A model that keeps its own attention gets the
step as padded rows and the mask `padded_mask` builds."""

from __future__ import annotations

import torch

from tunesmith.generation.prefix_cache import SharedPrefix

NAME = "tunesmith_decode"

# A range of rows costs the kernel about (its widest row's tokens + _ROW_QUERIES) per row and column,
# and one more kernel call (its start, the query and output copies) about as much as _CALL_COST such
# units: fitted to timings of torch's CPU flash kernel at decode shapes.
_ROW_QUERIES = 4
_CALL_COST = 3500


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, decode_attention)


def slices(lens: list[int], counts: list[int]) -> list[tuple[int, int, int, int]]:
    """Row ranges [a, b) that decode attends in one kernel call each, with the columns and the
    tokens per row each one reads (`lens`: each row's columns before the step; `counts`: the tokens
    it feeds). Rows are left-aligned and a range's tokens are padded to its widest row, so a range
    costs about (b - a) × its longest row's columns × (its widest row's tokens + `_ROW_QUERIES`):
    one call would read a short row up to the longest row's length and pad a row without a draft to
    the longest draft. The ranges are the partition of the rows (in their order in the batch) that
    minimises that plus a fixed cost per call (`_CALL_COST`), by dynamic programming over the rows."""
    lens = [n + c for n, c in zip(lens, counts)]  # a row reads its own columns and its fed tokens'
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


class Plan:
    """A decode step's attention layout, worked out once for all the layers. The step's tokens come
    as one sequence: row 0's last token and draft, then row 1's, and so on. `slices` are the ranges
    of rows attended in one kernel call each (`slices`): per range the index of each of its tokens
    in a (rows, widest row's tokens) layout (a shorter row repeats its last token, whose result is
    dropped), which of those slots are real, and which columns each slot sees. `groups` are the rows
    that share a prefix kept out of the batch, by the indices of their tokens."""

    def __init__(self, counts: list[int], lens: list[int], prefixes: list[SharedPrefix | None], device):
        dev = device
        self.starts = starts = [0]  # row i's tokens are [starts[i], starts[i + 1]) of the sequence
        for c in counts:
            starts.append(starts[-1] + c)
        self.slices = []
        for a, b, n, w in slices(lens, counts):
            steps = torch.tensor([[min(j, counts[r] - 1) for j in range(w)] for r in range(a, b)], device=dev)
            slots = torch.tensor(starts[a:b], device=dev)[:, None] + steps
            real = torch.tensor([(r - a) * w + j for r in range(a, b) for j in range(counts[r])], device=dev)
            last = torch.tensor(lens[a:b], device=dev)[:, None] + steps  # token j of row r sees columns to lens[r] + j
            self.slices.append((a, b, n, w, slots, real, torch.arange(n, device=dev) <= last[..., None]))
        groups: dict[tuple, list] = {}
        for i, prefix in enumerate(prefixes):
            if prefix is not None:
                group = groups.setdefault(prefix.key(), [prefix, []])
                group[1].extend(range(starts[i], starts[i + 1]))
        self.groups = [(p.layers, p.length, torch.tensor(idx, device=dev)) for p, idx in groups.values()]
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


def padded_mask(lens: list[int], width: int, columns: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The additive mask of a decode step fed as padded rows, for a model that keeps its own
    attention: (rows, 1, width, columns), a row's token j sees the row's own columns and this
    step's first j + 1."""
    last = torch.tensor(lens, device=device)[:, None] + torch.arange(width, device=device)
    visible = torch.arange(columns, device=device) <= last[:, :, None]
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, torch.finfo(dtype).min)[
        :, None
    ]


def decode_attention(
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
        o, lse = attend(q, key[a:b, :, :n], value[a:b, :, :n], plan.mask(i, rep, query.dtype), scale)
        outs.append(o.reshape(r, kv_heads, rep, w, dim).permute(0, 3, 1, 2, 4).reshape(r * w, heads, dim)[real])
        lses.append(lse.reshape(r, kv_heads, rep, w).permute(0, 3, 1, 2).reshape(r * w, heads)[real])
    out, lse = (outs[0], lses[0]) if len(outs) == 1 else (torch.cat(outs), torch.cat(lses))
    for layers, n, idx in plan.groups:
        pk, pv = layers[module.layer_idx]
        g = len(idx)
        q = flat[idx].reshape(g, kv_heads, rep, dim).transpose(0, 1).reshape(1, kv_heads, g * rep, dim)
        po, plse = attend(q, pk[:, :, :n], pv[:, :, :n], None, scale)
        po = po.reshape(kv_heads, g, rep, dim).transpose(0, 1).reshape(g, heads, dim)
        plse = plse.reshape(kv_heads, g, rep).transpose(0, 1).reshape(g, heads)
        own = lse[idx]
        top = torch.maximum(own, plse)
        wa, wb = torch.exp(own - top)[..., None], torch.exp(plse - top)[..., None]
        out[idx] = (out[idx] * wa + po * wb) / (wa + wb)
    return out[None], None  # transformers' attention returns (output, weights); there are no weights


def attend(q, k, v, mask, scale):
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
