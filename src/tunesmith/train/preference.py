"""Preference tuning in our own loop: DPO (sigmoid, IPO or hinge loss; label smoothing) and ORPO.

    tunesmith train config.yaml train.objective=dpo train.init_from=runs/sft data.train=pairs.jsonl
    tunesmith train config.yaml train.objective=orpo data.train=pairs.jsonl

A pair is a prompt and two replies, one preferred (data.format=preference, tunesmith.data.formats).
The loop (loop.py) is the same as for SFT; what is here is what differs: how a pair is encoded,
a step's backward, the held-out loss, and the reference.

  * Both replies of every pair in a micro-batch go through the packed path together: one row of
    [prompt, chosen, rejected] per pair, the prompt computed once for both sides (pair_batch), no
    padding, attention never crossing a pair or from one reply to the other, the LM head only on
    reply tokens (CausalLMLoss(reduce=False) -> token_log_probs). A reply's log-probability is the
    sum of its tokens'.
  * The reference (DPO) is where training started, never a second copy of the weights. With
    LoRA, the starting adapter is loaded a second time, frozen, beside the trained one on the
    same base weights and switched in for the reference pass; from the base model the adapter is
    switched off. With full fine-tuning, the starting model's log-probabilities of every pair are
    computed once before the first step and kept in RUN/reference/ (a resume reads them back).
    ORPO has no reference.

The losses follow TRL's definitions (tests/test_preference.py checks losses and gradients against
TRL's own on the same batch): DPO's margin is beta * ((chosen - ref chosen) - (rejected - ref
rejected)); IPO averages the log-ratios per reply token; ORPO adds the chosen reply's token NLL to
beta * -log sigmoid(log odds ratio) of the per-token mean log-probabilities.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tunesmith import UserError, rundir
from tunesmith.data.batches import IGNORE, collate, encode, example_name, micro_batches, n_targets, to_device
from tunesmith.fsutil import atomic_dir

REFERENCE = "reference"  # the frozen starting adapter's name beside peft's "default", and RUN/reference/


class Logps(NamedTuple):
    """Summed log-probabilities of each pair's replies, and their token counts: each (P,) float32."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


# ------------------------------------------------------------------------------------ the losses

# train.dpo_loss -> per-pair loss from the log-ratios against the reference (chosen, rejected), (P,) each
DPO_LOSSES = {
    "sigmoid": lambda t, c, r, n: (
        -(1 - t.label_smoothing) * F.logsigmoid(t.beta * (c - r)) - t.label_smoothing * F.logsigmoid(t.beta * (r - c))
    ),
    "hinge": lambda t, c, r, n: torch.relu(1 - t.beta * (c - r)),
    "ipo": lambda t, c, r, n: (
        (c / n.chosen_tokens.clamp(min=1) - r / n.rejected_tokens.clamp(min=1) - 1 / (2 * t.beta)) ** 2
    ),
}


def dpo(t, policy: Logps, ref: Logps):
    """(per-pair losses, token NLL sum (none), chosen rewards, rejected rewards)."""
    chosen, rejected = policy.chosen - ref.chosen, policy.rejected - ref.rejected
    losses = DPO_LOSSES[t.dpo_loss](t, chosen, rejected, policy)
    return losses, None, t.beta * chosen.detach(), t.beta * rejected.detach()


def orpo(t, policy: Logps, ref=None):
    """(per-pair odds-ratio losses, the chosen replies' token NLL sum, chosen rewards, rejected rewards)."""
    mean_c = policy.chosen / policy.chosen_tokens.clamp(min=1)  # per-token mean log-probabilities, (P,)
    mean_r = policy.rejected / policy.rejected_tokens.clamp(min=1)
    log_odds = (mean_c - mean_r) - (_log1mexp(mean_c) - _log1mexp(mean_r))
    return -t.beta * F.logsigmoid(log_odds), -policy.chosen.sum(), t.beta * mean_c.detach(), t.beta * mean_r.detach()


OBJECTIVES = {"dpo": dpo, "orpo": orpo}


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler's rule: expm1 near 0, log1p below -log 2)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def pair_loss(t, policy: Logps, ref: Logps | None, pairs: int, chosen_tokens: int):
    """(loss of these pairs as their share of the step's mean, stats to sum over the step).

    pairs and chosen_tokens count the whole step (every micro-batch and process): per-pair losses
    are averaged over pairs, ORPO's NLL over chosen reply tokens, however the step is split.
    stats (5,): loss, reward margin sum, correctly ranked pairs, chosen and rejected log-prob sums.
    """
    losses, nll, chosen_rewards, rejected_rewards = OBJECTIVES[t.objective](t, policy, ref)
    loss = losses.sum() / pairs + (nll / max(chosen_tokens, 1) if nll is not None else 0.0)
    stats = torch.stack(
        [
            loss.detach().float(),
            (chosen_rewards - rejected_rewards).sum(),
            (chosen_rewards > rejected_rewards).sum().float(),
            policy.chosen.detach().sum(),
            policy.rejected.detach().sum(),
        ]
    )
    return loss, stats


def metrics(stats: torch.Tensor, pairs: int, prefix: str = "") -> dict:
    loss, margin, right, chosen, rejected = stats.tolist()
    return {
        f"{prefix}loss": loss,
        f"{prefix}reward_margin": round(margin / pairs, 6),
        f"{prefix}reward_accuracy": round(right / pairs, 4),
        f"{prefix}logp_chosen": round(chosen / pairs, 4),
        f"{prefix}logp_rejected": round(rejected / pairs, 4),
    }


# ------------------------------------------------------------------------------------- the data


def encode_pairs(
    tok, examples: list[dict], max_len: int, too_long: str = "drop", train_on_prompt: bool = False, where: str = ""
) -> tuple[list[dict], dict]:
    """Encode preference pairs: [{"chosen", "rejected": {"ids", "targets"}, "ids", "index", "pos"}] and
    a report with encode_examples' keys. Loss targets are the reply tokens only (train_on_prompt does
    not apply: a pair's prompt is the same on both sides); "ids" is both sides' tokens, for ordering
    and counting; "pos" is the pair's place in the returned list (reference tables are indexed by it).
    A pair with a side longer than max_len is dropped, truncated or an error, as data.too_long says.
    """
    if too_long not in ("drop", "truncate", "error"):
        raise UserError(f"data.too_long must be drop, truncate or error, got '{too_long}'.")
    out, report = [], {"examples": len(examples), "too_long_dropped": 0, "truncated": 0, "no_loss_tokens": 0}
    for index, ex in enumerate(examples):
        name = example_name(ex, index, where or "dataset")
        if "rejected" not in ex:
            raise UserError(
                f"{name}: not a preference pair (no rejected reply), but train.objective asks for pairs. "
                f"fix: give data.train pairs ({{'prompt', 'chosen', 'rejected'}}, docs/train.md), or "
                f"train.objective=sft."
            )
        prompt = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in ex["messages"][:-1]]
        try:
            sides = [encode(tok, [*prompt, reply]) for reply in (ex["messages"][-1], ex["rejected"])]
        except UserError as exc:
            raise UserError(f"{name}: {exc}") from None
        longest = max(len(ids) for ids, _ in sides)
        if longest > max_len:
            if too_long == "error":
                raise UserError(
                    f"{name}: {longest} tokens on its longer side, more than data.max_len={max_len}. "
                    f"fix: raise data.max_len, shorten the pair, or set data.too_long=truncate|drop."
                )
            if too_long == "drop":
                report["too_long_dropped"] += 1
                continue
            sides = [(ids[:max_len], targets[:max_len]) for ids, targets in sides]
            report["truncated"] += 1
        if any(sum(targets[1:]) == 0 for _, targets in sides):  # a reply cut away entirely says nothing
            report["no_loss_tokens"] += 1
            continue
        chosen, rejected = ({"ids": ids, "targets": targets} for ids, targets in sides)
        out.append(
            {"chosen": chosen, "rejected": rejected, "ids": chosen["ids"] + rejected["ids"], "index": index, "pos": 0}
        )
        out[-1]["pos"] = len(out) - 1
    report["kept"] = len(out)
    report["tokens"] = sum(len(p["ids"]) for p in out)
    report["loss_tokens"] = sum(n_targets(p["chosen"]) + n_targets(p["rejected"]) for p in out)
    return out, report


def pair_batch(pairs: list[dict], packing: bool, pad_id: int) -> dict:
    """One micro-batch of pairs, each pair's chosen sequence then its rejected one (2P sequences).

    Packed, the two sides of a pair share their prompt: the row holds the chosen sequence whole and
    the rejected one from the last prompt token on, which attends to the prompt before it in the
    chosen sequence (shared_prefix, loss.varlen_attention) at the positions it has alone. Every
    token's hidden state is what it would be in its own sequence, so the log-probabilities are
    unchanged, and the prompt goes through the model once instead of twice. The last prompt token
    is computed on both sides: its hidden state predicts each reply's first token.
    """
    if not packing:
        return collate([p[side] for p in pairs for side in ("chosen", "rejected")], False, pad_id)
    segments, shared = [], []
    for p in pairs:
        n = max(shared_prompt(p["chosen"], p["rejected"]) - 1, 0)
        segments += [p["chosen"], {"ids": p["rejected"]["ids"][n:], "targets": p["rejected"]["targets"][n:]}]
        shared += [0, n]
    batch = collate(segments, True, pad_id)
    cu = batch["cu_seqlens"]
    positions = [t for a, b, n in zip(cu[:-1], cu[1:], shared) for t in range(n, n + b - a)]
    return {**batch, "position_ids": torch.tensor([positions]), "shared_prefix": tuple(shared)}


def shared_prompt(chosen: dict, rejected: dict) -> int:
    """Leading tokens the two sides have in common, none of them a loss token."""
    n = 0
    for a, b, ta, tb in zip(chosen["ids"], rejected["ids"], chosen["targets"], rejected["targets"]):
        if a != b or ta or tb:
            break
        n += 1
    return n


def sequence_logps(token_logps: torch.Tensor, batch: dict, pairs: int) -> Logps:
    """Sum per sequence the (N,) log-probabilities of a pair_batch's loss tokens (in labels' order)."""
    labels = batch["labels"]  # (B, T)
    if batch["cu_seqlens"] is not None:  # packed: (1, T), the sequence of position t from the boundaries
        cu = torch.tensor(batch["cu_seqlens"][1:], device=labels.device)
        seq = torch.searchsorted(cu, torch.arange(labels.shape[1], device=labels.device), right=True)[None]
    else:  # padded: a row per sequence
        seq = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    seq = seq[labels != IGNORE]  # (N,)
    sums = torch.zeros(2 * pairs, dtype=torch.float32, device=labels.device).index_add(0, seq, token_logps.float())
    counts = torch.zeros(2 * pairs, dtype=torch.float32, device=labels.device).index_add(
        0, seq, torch.ones_like(seq, dtype=torch.float32)
    )
    return Logps(sums[0::2], sums[1::2], counts[0::2], counts[1::2])  # sequences alternate chosen, rejected


# ------------------------------------------------------------------------------------ the step


def backward(run, ids: list[int]) -> tuple[float, dict]:
    """Backward of one optimizer step on the pairs `ids`; (the step's loss, its metrics)."""
    t, acc = run.cfg.train, run.accelerator
    pairs = len(ids)
    chosen_tokens = sum(n_targets(run.encoded[i]["chosen"]) for i in ids)  # ORPO's NLL is a mean over these
    sums = torch.zeros(5, device=acc.device)
    mbs = micro_batches(run.encoded, ids, acc.process_index, acc.num_processes, t.grad_accum)
    for k, mb in enumerate(mbs):
        batch = to_device(pair_batch(mb, t.packing, run.tok.pad_token_id), acc.device)
        ref = reference_logps(run, mb, batch, "train")
        sync = contextlib.nullcontext() if k == len(mbs) - 1 else acc.no_sync(run.loss_model)
        with sync:
            policy = sequence_logps(run.loss_model(**batch, reduce=False), batch, len(mb))
            loss, stats = pair_loss(t, policy, ref, pairs, chosen_tokens)
            acc.backward(loss * acc.num_processes)  # DDP averages over processes; the loss is already a share
        sums += stats
    step = metrics(acc.reduce(sums, "sum"), pairs)
    return step.pop("loss"), step


def heldout(run) -> tuple[float, dict]:
    """The preference loss and its metrics on the held-out pairs, in eval mode; every process returns the same."""
    t, acc = run.cfg.train, run.accelerator
    inner = acc.unwrap_model(run.loss_model)
    rank, world = acc.process_index, acc.num_processes
    chosen_tokens = sum(n_targets(p["chosen"]) for p in run.held)
    mine = sorted(run.held[rank::world], key=lambda p: len(p["ids"]))
    sums = torch.zeros(5, device=acc.device)
    inner.eval()
    with torch.no_grad(), acc.autocast():
        for a in range(0, len(mine), t.batch_size):
            mb = mine[a : a + t.batch_size]
            batch = to_device(pair_batch(mb, t.packing, run.tok.pad_token_id), acc.device)
            ref = reference_logps(run, mb, batch, "heldout")
            policy = sequence_logps(inner(**batch, reduce=False), batch, len(mb))
            sums += pair_loss(t, policy, ref, len(run.held), chosen_tokens)[1]
    out = metrics(acc.reduce(sums, "sum"), len(run.held), prefix="eval_")
    return out.pop("eval_loss"), out


# ------------------------------------------------------------------------------------ the reference


def reference_logps(run, mb: list[dict], batch: dict, split: str) -> Logps | None:
    """The reference's log-probabilities of a micro-batch's pairs (DPO; None for ORPO)."""
    if run.cfg.train.objective != "dpo":
        return None
    if run.reference is not None:  # full fine-tuning: the table computed before the first step
        rows = run.reference[split][[p["pos"] for p in mb]].to(batch["labels"].device)  # (P, 2)
        counts = [torch.tensor([n_targets(p[s]) for p in mb], dtype=torch.float32) for s in ("chosen", "rejected")]
        return Logps(rows[:, 0], rows[:, 1], *(c.to(rows.device) for c in counts))
    inner = run.accelerator.unwrap_model(run.loss_model)
    training = inner.training
    inner.eval()  # no dropout: the reference is one fixed function
    try:
        with torch.no_grad(), reference_weights(inner.model), run.accelerator.autocast():
            return sequence_logps(inner(**batch, reduce=False), batch, len(mb))
    finally:
        inner.train(training)


@contextlib.contextmanager
def reference_weights(model):
    """The starting point on the same base weights: the frozen starting adapter, or no adapter at all."""
    if REFERENCE in model.peft_config:
        model.set_adapter(REFERENCE, inference_mode=True)
        try:
            yield
        finally:
            model.set_adapter("default")  # trainable again; the reference stays frozen
    else:
        with model.disable_adapter():
            yield


def reference_table(run, resume: bool) -> dict | None:
    """Full fine-tuning with DPO: the starting model's log-probabilities of every pair, {"train": (n, 2),
    "heldout": (m, 2)} (chosen, rejected), computed once now and kept in RUN/reference/; a resume reads
    them back, since the model has moved since. None where the reference is an adapter or not needed."""
    from safetensors.torch import load_file, save_file

    t, acc = run.cfg.train, run.accelerator
    if t.objective != "dpo" or t.method != "full":
        return None
    path = run.dir / rundir.REFERENCE / "logps.safetensors"
    if resume:
        if not path.exists():
            raise UserError(
                f"{path} is missing: a full fine-tune with DPO keeps its reference there, and a resume needs it. "
                f"fix: start the run again in a new train.output_dir."
            )
        table = load_file(path)
        if [len(table["train"]), len(table["heldout"])] != [len(run.encoded), len(run.held)]:
            raise UserError(f"{path} does not hold this run's pairs. fix: start the run again in a new output_dir.")
        return table
    inner = acc.unwrap_model(run.loss_model)
    table = {}
    inner.eval()
    with torch.no_grad(), acc.autocast():
        for split, pairs in (("train", run.encoded), ("heldout", run.held)):
            rows = torch.zeros(len(pairs), 2)
            for a in range(0, len(pairs), t.batch_size):
                mb = pairs[a : a + t.batch_size]
                batch = to_device(pair_batch(mb, t.packing, run.tok.pad_token_id), acc.device)
                lp = sequence_logps(inner(**batch, reduce=False), batch, len(mb))
                rows[a : a + len(mb)] = torch.stack([lp.chosen, lp.rejected], dim=1).cpu()
            table[split] = rows
    inner.train()
    if acc.is_main_process:
        with atomic_dir(run.dir / rundir.REFERENCE, what="the reference log-probabilities") as tmp:
            save_file(table, tmp / "logps.safetensors")
    acc.wait_for_everyone()
    return table


def drop_reference(model) -> None:
    """Before the final save: the reference adapter is the starting point's, not this run's result."""
    if REFERENCE in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE)


def check_options(t) -> None:
    if t.objective not in ("sft", *OBJECTIVES):
        raise UserError(f"train.objective={t.objective!r} is not one of sft, {', '.join(OBJECTIVES)}.")
    if t.dpo_loss not in DPO_LOSSES:
        raise UserError(f"train.dpo_loss={t.dpo_loss!r} is not one of {', '.join(DPO_LOSSES)}.")
    if t.objective != "sft" and not t.beta > 0:
        raise UserError(f"train.beta must be above 0, got {t.beta}. fix: e.g. train.beta=0.1")
    if t.objective != "sft" and t.replay:
        raise UserError(
            f"train.replay={t.replay} mixes chat examples into training, and train.objective={t.objective} "
            f"trains on preference pairs only. fix: train.replay=0, or keep general behaviour with a pair set "
            f"that includes general prompts."
        )
    if not 0 <= t.label_smoothing < 0.5:
        raise UserError(f"train.label_smoothing must be in [0, 0.5), got {t.label_smoothing}.")
