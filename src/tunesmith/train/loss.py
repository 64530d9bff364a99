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

from tunesmith import UserError
from tunesmith.data.batches import IGNORE

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


# ------------------------------------------------------------------------------------- the module


class CausalLMLoss(torch.nn.Module):
    """A causal LM and its loss in one forward, so DDP/FSDP see one call that uses every parameter.

    forward returns the SUM of token losses: the caller decides what to divide by. The LM head runs
    only on the hidden states whose next token carries loss (linear_cross_entropy).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, labels, cu_seqlens=None):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = base.get_decoder()(input_ids=input_ids, position_ids=position_ids, cu_seqlens=cu_seqlens,
                                    use_cache=False).last_hidden_state  # (B, T, d)
        keep = labels != IGNORE  # (B, T): the only positions that reach the LM head
        head = base.get_output_embeddings()
        return linear_cross_entropy(hidden[keep], head.weight, labels[keep], head.bias)
