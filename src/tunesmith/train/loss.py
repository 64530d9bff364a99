"""The training kernels: attention that never crosses a packed example's boundary, and the
cross-entropy that runs the LM head only where there is loss, in chunks.

    from tunesmith.train.loss import CausalLMLoss, use_varlen
    use_varlen(model); loss_sum = CausalLMLoss(model)(**collate(examples, packing=True))

  * a packed micro-batch is one row of concatenated examples; ``varlen_attention`` runs causal
    attention per example, so a packed example sees exactly what it would see alone (position ids
    restart at 0 for each example);
  * ``linear_cross_entropy`` computes the loss of the hidden states whose next token carries loss,
    with the gradient computed on the fly: the (tokens, vocab) logits are never materialised, so
    memory does not grow with the number of prompt tokens.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from tunesmith import UserError, arch
from tunesmith.data.batches import IGNORE

# -------------------------------------------------------------------------------- the attention

VARLEN = "tunesmith_varlen"


def varlen_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    cu_seqlens=None,
    sliding_window=None,
    softcap=None,
    shared_prefix=None,
    **_,
):
    """Causal attention that never crosses an example boundary.

    query (B, H, T, D), key/value (B, Hkv, T, D) -> (B, T, H, D), the shape transformers expects.
    With cu_seqlens (a packed row, B = 1) each example [cu[i], cu[i+1]) attends only to itself:
    one fused varlen kernel on CUDA, one attention call per example elsewhere — the cost is the
    sum of per-example squares, not the square of the row. Without cu_seqlens the batch is
    right-padded and causal attention per row is exact for every real token.

    shared_prefix (one count per example, with cu_seqlens): example i also sees the first
    shared_prefix[i] tokens of example i - 1, as if they stood before it, its positions continuing
    theirs. A preference pair's rejected reply reads the prompt computed once with its chosen one
    (preference.pair_batch). The fused kernel takes one causal band per example, so such a row
    takes the per-example path on every device.

    transformers passes each layer's own settings: `sliding_window` (a token sees itself and the
    window - 1 before it; None on a global layer of a local/global model) and `softcap` (Gemma 2's
    scores -> softcap * tanh(scores / softcap), before the mask).
    """
    shared = shared_prefix if shared_prefix is not None and any(shared_prefix) else None
    bounds = list(cu_seqlens) if cu_seqlens is not None else [0, query.shape[2]]
    kernel = (
        _cuda_varlen()
        if (
            query.is_cuda
            and query.dtype in (torch.bfloat16, torch.float16)
            and not dropout
            and not softcap
            and len(bounds) > 2
            and shared is None
        )
        else None
    )
    if kernel is not None and (sliding_window is None or "window_size" in kernel[1]):
        fn, params = kernel
        cu = _device_cu(tuple(bounds), query.device)
        longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
        q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # (T, heads, D)
        if "window_size" in params:  # newer torch: (left, right); right 0 is causal
            extra = {"window_size": (sliding_window - 1 if sliding_window else -1, 0)}
        else:
            extra = {"is_causal": True}
        if k.shape[1] != q.shape[1]:
            if "enable_gqa" in params:
                extra["enable_gqa"] = True
            else:
                k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        out = fn(q, k, v, cu, cu, longest, longest, scale=scaling, **extra)
        return out.unsqueeze(0), None
    if len(bounds) == 2:
        return _causal(query, key, value, scaling, dropout, sliding_window, softcap).transpose(1, 2).contiguous(), None
    # split, not slicing: its backward is one concatenation, where each slice's backward would
    # write into a zero-filled copy of the whole row
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    qs, ks, vs = (t.split(lengths, dim=2) for t in (query, key, value))
    outs = []
    for i, q in enumerate(qs):
        k, v = ks[i], vs[i]
        n = shared[i] if shared is not None else 0
        if n:
            k, v = torch.cat([ks[i - 1][:, :, :n], k], dim=2), torch.cat([vs[i - 1][:, :, :n], v], dim=2)
        outs.append(_causal(q, k, v, scaling, dropout, sliding_window, softcap))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _causal(q, k, v, scale, dropout, window, softcap):
    """Causal attention of one example (or right-padded rows): q (B, H, Lq, D), k/v (B, Hkv, L, D) ->
    (B, H, Lq, D). Keys longer than the queries (by a shared prefix) put the queries at the end."""
    length, offset = k.shape[2], k.shape[2] - q.shape[2]
    banded = window is not None and length > window  # a window as long as the example changes nothing
    if not softcap and not banded and not offset:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout, enable_gqa=True)
    allowed = _band(length, window if banded else length, q.device)[offset:]  # (Lq, L)
    if not softcap:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, scale=scale, dropout_p=dropout, enable_gqa=True
        )
    # SDPA cannot cap scores: written out as the model's eager attention does it, one example at a time
    groups = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(groups, dim=1) for x in (k, v))
    scores = (q @ k.transpose(2, 3)) * (scale if scale is not None else q.shape[-1] ** -0.5)  # (B, H, Lq, L)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(_wide(scores), dim=-1).to(q.dtype)  # float32 at least, as the eager attention
    if dropout:
        probs = F.dropout(probs, p=dropout)
    return probs @ v


@functools.lru_cache(maxsize=16)
def _band(length: int, window: int, device) -> torch.Tensor:
    """(L, L) bool, True where query i may see key j: j <= i and i - j < window (transformers' sliding
    window: the token itself and the window - 1 before it). Cached: every layer of a forward asks."""
    i = torch.arange(length, device=device)
    dist = i[:, None] - i[None, :]
    return (dist >= 0) & (dist < window)


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
    What the varlen attention cannot do is refused here, before any training.
    """
    from transformers import AttentionInterface

    cfg = arch.text_config(model)
    family, fix = cfg.model_type, "fix: set train.packing=false (padded batches use the model's own attention)."
    refused = {
        "use_bidirectional_attention": "bidirectional attention (packed attention is causal)",
        "attention_chunk_size": "chunked attention",
    }
    for key, feature in refused.items():
        if getattr(cfg, key, None):
            raise UserError(
                f"{family}: {feature} ({key}={getattr(cfg, key)}) is not supported by tunesmith's "
                f"packed attention. {fix}"
            )
    if arch.has_sinks(model):
        raise UserError(f"{family}: attention sinks are not supported by tunesmith's packed attention. {fix}")
    if arch.sliding_window(cfg) and not getattr(model, "_supports_flash_attn", False):
        # transformers hands a layer's window to the attention function only in families that can run
        # flash attention (flash takes no mask); elsewhere the window lives in a mask we never build
        raise UserError(
            f"{family}: its sliding window reaches attention only through a mask, which tunesmith's "
            f"packed attention does not build. {fix}"
        )
    AttentionInterface.register(VARLEN, varlen_attention)
    model.set_attn_implementation(VARLEN)


# ---------------------------------------------------------------------------------------- the loss


def logit_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) the model's forward applies to its logits: logits * scale, then
    softcap * tanh(logits / softcap) when softcap is set. Raises for what tunesmith cannot reproduce."""
    cfg = arch.text_config(config)
    scales, softcap, unknown = arch.logit_scales(cfg), arch.final_softcap(cfg), arch.other_logit_scales(cfg)
    if unknown or len(scales) + bool(softcap) > 1:
        keys = unknown or [*scales, *(["final_logit_softcapping"] if softcap else [])]
        raise UserError(
            f"{cfg.model_type}: its logits are rescaled in a way tunesmith's training loss does not "
            f"reproduce ({', '.join(keys)}). fix: none in tunesmith yet; train this model with "
            f"transformers' own Trainer, or pick another base model."
        )
    return (next(iter(scales.values())) if scales else 1.0), softcap


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk: int | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Sum of cross-entropy of `targets` under logits hidden @ weight.T (+ bias), in chunks.

    hidden (N, d) holds only positions with a target; weight (V, d). The (chunk, V) logits live one
    chunk at a time, in float32. When gradients are wanted they are computed in the same pass
    (softmax - onehot is the gradient of the logits), so nothing of size (N, V) is kept for backward.
    scale and softcap reshape the logits as the model's own forward does (logit_transform).
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    chunk = chunk or _chunk_rows(hidden, weight)
    if _wants_grad(hidden, weight, bias):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, scale, softcap)
    return -token_log_probs(hidden, weight, targets, bias, chunk, scale, softcap).sum()


def token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk: int | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """log p(target) at each position, (N,) float32, under logits hidden @ weight.T (+ bias), in chunks.

    What preference losses need: a sequence's log-probability is the sum of its tokens', and the
    loss is not a sum over tokens, so the gradient cannot be folded in on the way forward as
    linear_cross_entropy does. Each chunk runs under activation checkpointing instead: its
    (chunk, V) logits are dropped after the forward and recomputed in backward, one chunk at a time.
    """
    from torch.utils.checkpoint import checkpoint

    if hidden.shape[0] == 0:  # still in the graph: DDP expects a gradient for every parameter
        return hidden.new_zeros(0, dtype=torch.float32) + (hidden.sum() * 0.0 + weight.sum() * 0.0)
    chunk = chunk or _chunk_rows(hidden, weight)

    def piece(h, t):
        return _chunk_log_probs(h, t, weight, bias, scale, softcap)[0]

    grad = _wants_grad(hidden, weight, bias)
    parts = [
        checkpoint(piece, h, t, use_reentrant=False) if grad else piece(h, t)
        for h, t in zip(hidden.split(chunk), targets.split(chunk))
    ]
    return torch.cat(parts)


def _chunk_rows(hidden: torch.Tensor, weight: torch.Tensor) -> int:
    """Rows per chunk: float32 logits of ~16 MB on a CPU (they stay in cache), ~256 MB on a GPU."""
    return max(1, (1 << (26 if hidden.is_cuda else 22)) // weight.shape[0])


def _wants_grad(hidden, weight, bias) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias))


def _chunk_log_probs(h, t, weight, bias, scale, softcap):
    """One chunk of the LM head: (log p(t) (n,), the (n, V) logits at least float32, tanh(logits /
    softcap) or None, logsumexp (n,)). Both kernels walk the vocabulary through here."""
    logits, capped = _head(F.linear(h, weight, bias), scale, softcap)
    lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(1, t[:, None]).squeeze(1) - lse, logits, capped, lse


def _head(raw: torch.Tensor, scale: float, softcap: float | None):
    """(logits at least float32, tanh(logits / softcap) or None) from lm_head's output."""
    logits = _wide(raw)
    if scale != 1.0:
        logits = logits * scale
    if not softcap:
        return logits, None
    capped = torch.tanh(logits / softcap)
    return capped * softcap, capped


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, scale, softcap):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=_wide(hidden).dtype, device=hidden.device)
        d_hidden = torch.empty_like(hidden) if need_h else None
        d_weight = torch.zeros_like(_wide(weight)) if need_w else None
        d_bias = torch.zeros_like(_wide(bias)) if need_b else None
        for a in range(0, hidden.shape[0], chunk):
            h, t = hidden[a : a + chunk], targets[a : a + chunk]
            logp, logits, capped, lse = _chunk_log_probs(h, t, weight, bias, scale, softcap)  # logits (chunk, V)
            total -= logp.sum()
            # d(sum CE)/d logits = softmax - onehot, computed in place of the logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(t), device=t.device), t] -= 1.0
            if capped is not None:  # d/dx softcap * tanh(x / softcap) = 1 - tanh²
                grad.mul_(capped.square_().neg_().add_(1.0))
            if scale != 1.0:
                grad.mul_(scale)
            grad = grad.to(hidden.dtype)
            if need_h:
                d_hidden[a : a + chunk] = grad @ weight
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
        return (
            None if d_hidden is None else d_hidden * g.to(d_hidden.dtype),
            None if d_weight is None else (d_weight * g).to(ctx.weight_dtype),
            None if d_bias is None else (d_bias * g).to(ctx.weight_dtype),
            None,
            None,
            None,
            None,
        )


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (a softmax over 50k logits needs it), else as is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ------------------------------------------------------------------------------------- the module


class CausalLMLoss(torch.nn.Module):
    """A causal LM and its loss in one forward, so DDP/FSDP see one call that uses every parameter.

    forward returns the SUM of token losses: the caller decides what to divide by; with
    reduce=False, the log-probability of each loss token instead, (N,) in the order of
    labels[labels != IGNORE] (token_log_probs: preference losses sum them per sequence). The LM
    head runs only on the hidden states whose next token carries loss, and its logits are scaled
    and capped as the model's own forward does (logit_transform).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.scale, self.softcap = logit_transform(model.config)

    def forward(self, input_ids, position_ids, labels, cu_seqlens=None, reduce=True, shared_prefix=None):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = base.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            cu_seqlens=cu_seqlens,
            shared_prefix=shared_prefix,
            use_cache=False,
        ).last_hidden_state  # (B, T, d)
        keep = labels != IGNORE  # (B, T): the only positions that reach the LM head
        head = base.get_output_embeddings()
        kernel = linear_cross_entropy if reduce else token_log_probs
        return kernel(hidden[keep], head.weight, labels[keep], head.bias, scale=self.scale, softcap=self.softcap)
