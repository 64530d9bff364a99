"""What the fine-tune broke: general instruction following and drift, base model → fine-tuned.

    tunesmith compare config.yaml                           # on by default; compare.side_effects=false turns it off
    tunesmith compare config.yaml compare.side_effects_size=0   # every bundled instruction and prompt

    from tunesmith.compare import side_effects
    plan = side_effects.prepare(cfg, base_spec)        # which instructions and prompts, and the cached replies
    section = side_effects.summarise(plan, base, tuned, drift, resamples=2000, seed=0)

Two measures, neither needs a network or a judge:

  * instruction following: the bundled verifiable instructions (tunesmith.compare.instructions; a user's own
    file, compare.side_effects_file, joins them) answered by the base model and by the fine-tuned
    one in the same engine batches as the arms, scored strict and loose (IFEval's readings); the
    change is a paired bootstrap over prompts, and per category of instruction;
  * drift: the mean per-token KL(base ‖ fine-tuned), teacher-forced on the base model's own greedy
    replies to general prompts — the fine-tune generates nothing. With LoRA it is one model with
    the adapter switched off and on.

It informs the verdict; it decides nothing unless compare.decide_on names `instructions`, which
makes a clear loss a veto on fine-tuning (decide). The base model's replies to general prompts are cached on disk per
base model (general_replies), and the same replies are what train.replay mixes into training.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.compare import instructions as I
from tunesmith.compare import stats

# run_arms' extra conversation groups: the instructions for each model, the drift prompts for the base
BASE, TUNED, GENERAL = "side-effects:base", "side-effects:tuned", "side-effects:general"
# a kind of instruction is called lost only over this many checks: a single failed check has a
# zero-width bootstrap interval and would read as a certain loss
MIN_CATEGORY_CHECKS = 5


@dataclass
class Plan:
    """What the section will run, chosen before any model loads (a bad check file must not cost a run)."""

    items: list[dict]  # instructions: {"id", "prompt", "checks"} or {"id", "prompt", "reference"}
    drift_prompts: list[str]  # general prompts the base model answers, then both models are scored on
    base_spec: str = ""
    pinned: dict = field(default_factory=dict)  # a hub base model's revision and GGUF file (models.resolve)
    max_new_tokens: int = 256
    cached: dict = field(default_factory=dict)  # prompt -> the base model's reply, from the disk cache
    own: int = 0  # how many of `items` came from the user's file


def prepare(cfg, base_spec: str) -> Plan:
    """The instructions (a spread over every kind when compare.side_effects_size is set) and the
    drift prompts; the cached base replies are read now so they need no generation."""
    c = cfg.compare
    bundled = spread(I.load_instructions(), c.side_effects_size)
    own = I.load_instructions(c.side_effects_file) if c.side_effects_file else []
    prompts = drift_prompts()
    # replies to drift prompts are long and many tokens each: half as many prompts measure it as well
    prompts = spread(prompts, max(8, c.side_effects_size // 2)) if c.side_effects_size else prompts
    plan = Plan(bundled + own, prompts, base_spec, _pinned(cfg, base_spec), cfg.generate.max_new_tokens, own=len(own))
    path = cache_file(base_spec, plan.max_new_tokens, **plan.pinned)
    plan.cached = {p: r for p, r in read_cache(path).items() if p in prompts}
    return plan


def spread(items: list, n: int) -> list:
    """n items taken evenly across the list (the bundled files are grouped by kind, so every kind
    is represented); n = 0 or more than there are: all of them."""
    if not n or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def drift_prompts() -> list[str]:
    """Every other bundled general prompt measures drift; train.replay trains on the others, so
    replay is never scored on the very replies it trained on."""
    return I.load_general_prompts()[0::2]


def replay_prompts() -> list[str]:
    return I.load_general_prompts()[1::2]


def conversations(plan: Plan, tuned: bool) -> dict[str, list]:
    """The extra conversations for run_arms: the instructions for either model; the drift prompts
    for the base model, where the cache does not have its replies yet."""
    out = {TUNED if tuned else BASE: [[{"role": "user", "content": it["prompt"]}] for it in plan.items]}
    missing = [p for p in plan.drift_prompts if p not in plan.cached]
    if not tuned and missing:
        out[GENERAL] = [[{"role": "user", "content": p}] for p in missing]
    return out


def keep_base_replies(plan: Plan, replies: list) -> None:
    """The base model's new replies to drift prompts, into the plan and the disk cache."""
    missing = [p for p in plan.drift_prompts if p not in plan.cached]
    plan.cached.update({p: r.text for p, r in zip(missing, replies)})
    path = cache_file(plan.base_spec, plan.max_new_tokens, **plan.pinned)
    write_cache(path, {**read_cache(path), **plan.cached})  # the replay prompts' replies stay


# -------------------------------------------------------------------------------------- cache


def _pinned(cfg, spec: str) -> dict:
    """The config's hub revision and GGUF file, when `spec` is the config's model (as compare loads it)."""
    return {"revision": cfg.model.revision, "gguf_file": cfg.model.gguf_file} if spec == cfg.model.name else {}


def cache_file(spec: str, max_new_tokens: int, revision: str = "", gguf_file: str = "") -> Path:
    """One file per base model and reply length: its greedy replies to general prompts. A model is
    known by its weights' names, sizes and times (and a hub model's commit, which is in its folder's
    path), so a retrained directory or another revision gets a new cache."""
    from tunesmith.models import converted_dir, home, resolve

    source = resolve(spec, revision, gguf_file)
    folder = converted_dir(source)
    weights = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in folder.glob("*.safetensors"))
    key = hashlib.sha256(json.dumps([str(folder.resolve()), weights, max_new_tokens]).encode()).hexdigest()[:16]
    return home() / "general-replies" / f"{key}.jsonl"


def read_cache(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            out[row["prompt"]] = row["reply"]
        except (ValueError, KeyError, TypeError):  # a cache written half-way: regenerate that prompt
            continue
    return out


def write_cache(path: Path, replies: dict[str, str]) -> None:
    import os

    text = "".join(json.dumps({"prompt": p, "reply": r}, ensure_ascii=False) + "\n" for p, r in replies.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two compares of one model may write at once
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def general_replies(cfg, prompts: list[str], log=print) -> dict[str, str]:
    """The base model's greedy replies to `prompts` (cfg.model.name), from the cache or generated
    once through the engine and cached. What train.replay trains on."""
    from tunesmith.generation.api import generate
    from tunesmith.models import load

    pinned = _pinned(cfg, cfg.model.name)
    path = cache_file(cfg.model.name, cfg.generate.max_new_tokens, **pinned)
    have = read_cache(path)
    missing = [p for p in prompts if p not in have]
    if missing:
        log(f"replay: the base model answers {len(missing)} general prompts once (cached in {path})")
        model, tok = load(
            cfg.model.name, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code, **pinned
        )
        outs = generate(
            model,
            tok,
            [[{"role": "user", "content": p}] for p in missing],
            max_new_tokens=cfg.generate.max_new_tokens,
            batch_size=cfg.generate.batch_size,
            stop_on_repeat=cfg.generate.stop_on_repeat,
        )
        del model
        have.update({p: o.text for p, o in zip(missing, outs)})
        write_cache(path, have)
    return {p: have[p] for p in prompts}


def replay_examples(cfg, n_task: int, log=print) -> list[dict]:
    """train.replay: chat examples of the base model's own replies to the replay prompts, as many
    as make `cfg.train.replay` of the training set beside `n_task` task examples (the prompts are
    cycled when more are needed). Training on them pulls the fine-tune back toward the base model
    on general prompts: self-distillation, no outside data."""
    fraction = cfg.train.replay
    prompts = replay_prompts()
    replies = general_replies(cfg, prompts, log)
    usable = [p for p in prompts if replies[p].strip()]
    want = round(fraction / (1 - fraction) * n_task)
    if not usable or not want:
        return []
    return [
        {
            "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": replies[p]}],
            "meta": {"id": f"replay:{i}", "task": "replay", "source": "replay (the base model's own reply)"},
        }
        for i, p in ((i, usable[i % len(usable)]) for i in range(want))
    ]


# -------------------------------------------------------------------------------------- drift


def drift(run: Path, plan: Plan, cfg) -> dict:
    """Mean per-token KL(base ‖ fine-tuned) over the assistant tokens of the base model's own
    replies to the drift prompts, teacher-forced, with a bootstrap interval over replies (tokens
    of one reply are not independent). A LoRA run is one model, adapter off then on."""
    import numpy as np
    from peft import PeftModel

    from tunesmith.models import load

    tuned, tok = load(str(run), dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    base = None if isinstance(tuned, PeftModel) else load(plan.base_spec, dtype=cfg.model.dtype, **plan.pinned)[0]
    convs = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": plan.cached[p]}]
        for p in plan.drift_prompts
        if plan.cached.get(p, "").strip()
    ]
    per_reply = reply_kl(tuned, base, tok, convs)
    del tuned, base
    sums, counts = np.array([s for s, _ in per_reply]), np.array([n for _, n in per_reply])
    if not counts.sum():
        return {"kl": math.nan, "tokens": 0, "replies": 0, "lo": math.nan, "hi": math.nan}
    rng = np.random.default_rng(cfg.data.seed)
    idx = rng.integers(0, len(per_reply), size=(cfg.compare.bootstrap, len(per_reply)))  # (R, replies)
    ratios = sums[idx].sum(1) / np.maximum(counts[idx].sum(1), 1)  # (R,) a ratio of sums, as the mean is
    return {
        "kl": float(sums.sum() / counts.sum()),
        "lo": float(np.percentile(ratios, 2.5)),
        "hi": float(np.percentile(ratios, 97.5)),
        "tokens": int(counts.sum()),
        "replies": len(per_reply),
    }


def reply_kl(tuned, base, tok, conversations: list[list[dict]], batch_size: int = 4) -> list[tuple[float, int]]:
    """(sum of per-token KL(base ‖ tuned), tokens) for each conversation's assistant tokens.
    base=None: `tuned` is a peft model and the base is the same model with its adapter off."""
    import torch

    from tunesmith.data.batches import IGNORE, collate, encode

    device = next(tuned.parameters()).device
    encoded = [dict(zip(("ids", "targets"), encode(tok, conv))) for conv in conversations]
    encoded = [e for e in encoded if sum(e["targets"][1:])]
    out = []
    with torch.no_grad():
        for a in range(0, len(encoded), batch_size):
            batch = collate(encoded[a : a + batch_size], packing=False, pad_id=tok.pad_token_id or 0)
            ids = batch["input_ids"].to(device)  # (B, T), right-padded: no real token attends to a pad
            keep = (batch["labels"] != IGNORE).to(device)  # (B, T): positions that predict a reply token
            if base is None:
                with tuned.disable_adapter():
                    p_logits = tuned(input_ids=ids).logits[keep]  # (K, V), K reply tokens in the batch
            else:
                p_logits = base(input_ids=ids).logits[keep]
            q_logits = tuned(input_ids=ids).logits[keep]
            logp, logq = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
            kl = (logp.exp() * (logp - logq)).sum(-1)  # (K,)
            out += [(piece.sum().item(), len(piece)) for piece in kl.split(keep.sum(1).tolist())]
    return out


def section(cfg, plan: Plan, run: Path, replies: dict[str, list], log) -> dict:
    """The whole section once the arms have run: `replies` holds run_arms' extra groups."""
    import time

    t0 = time.time()
    if GENERAL in replies:
        keep_base_replies(plan, replies[GENERAL])
    log(f"side effects: drift on {len(plan.drift_prompts)} general prompts (teacher-forced, no generation)")
    found = drift(run, plan, cfg)
    out = summarise(plan, replies[BASE], replies[TUNED], found, cfg.compare.bootstrap, cfg.data.seed)
    out["drift_seconds"] = round(time.time() - t0, 1)
    out["samples"] = [
        {"id": it["id"], "prompt": it["prompt"], "base": b.text, "tuned": t.text}
        for it, b, t in zip(plan.items, replies[BASE], replies[TUNED])
    ]
    return out


# -------------------------------------------------------------------------------------- score


def score_items(items: list[dict], replies: list) -> list[dict]:
    """Per prompt: strict and loose (all of its instructions followed, as 100 or 0), per-check
    results, and for a reference item its chrF."""
    from tunesmith.compare.metrics import score

    rows = []
    for it, r in zip(items, replies):
        text = getattr(r, "text", r)
        if "reference" in it:
            chrf = score(text, it["reference"], "", [], {})["chrf"]
            rows.append({"id": it["id"], "reference": True, "chrf": chrf})
            continue
        strict, loose = I.follows(text, it["checks"])
        rows.append(
            {
                "id": it["id"],
                "strict": 100.0 * all(strict),
                "loose": 100.0 * all(loose),
                "checks": [
                    {"category": I.category(c), "strict": s, "loose": lo}
                    for c, s, lo in zip(it["checks"], strict, loose)
                ],
            }
        )
    return rows


def summarise(plan: Plan, base: list, tuned: list, drift_result: dict | None, resamples: int, seed: int) -> dict:
    """The section's numbers (results.json's "side_effects"): base → fine-tuned on instruction
    following (strict, loose) with the paired interval, per category, the user's reference items
    by chrF, and drift. `base` and `tuned` are replies aligned with plan.items."""
    b, t = score_items(plan.items, base), score_items(plan.items, tuned)
    checked = [i for i, row in enumerate(b) if not row.get("reference")]
    out = {"prompts": len(checked), "own": plan.own, "drift": drift_result}
    for reading in ("strict", "loose"):
        bv, tv = [b[i][reading] for i in checked], [t[i][reading] for i in checked]
        d, lo, hi = stats.paired_bootstrap(tv, bv, resamples, seed)
        out[reading] = {"base": _mean(bv), "tuned": _mean(tv), "diff": d, "lo": lo, "hi": hi}
    # per category: every instruction of that kind, strict, as a share of instructions followed
    cats: dict[str, tuple[list, list]] = {}
    for i in checked:
        for cb, ct in zip(b[i]["checks"], t[i]["checks"]):
            pair = cats.setdefault(cb["category"], ([], []))
            pair[0].append(100.0 * cb["strict"])
            pair[1].append(100.0 * ct["strict"])
    out["categories"] = {}
    for name, (bv, tv) in sorted(cats.items()):
        d, lo, hi = stats.paired_bootstrap(tv, bv, resamples, seed)
        out["categories"][name] = {
            "n": len(bv),
            "base": _mean(bv),
            "tuned": _mean(tv),
            "diff": d,
            "lo": lo,
            "hi": hi,
            "lost": len(bv) >= MIN_CATEGORY_CHECKS and hi < 0,
        }
    refs = [i for i, row in enumerate(b) if row.get("reference")]
    if refs:
        bv, tv = [b[i]["chrf"] for i in refs], [t[i]["chrf"] for i in refs]
        d, lo, hi = stats.paired_bootstrap(tv, bv, resamples, seed)
        out["references"] = {"n": len(refs), "base": _mean(bv), "tuned": _mean(tv), "diff": d, "lo": lo, "hi": hi}
    out["lost"] = [n for n, c in out["categories"].items() if c["lost"]]
    out["clear_loss"] = out["strict"]["hi"] < 0
    out["sentence"] = sentence(out)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# -------------------------------------------------------------------------------------- words


def sentence(s: dict) -> str:
    """The section in one paragraph; its first clause is what the recommendation borrows."""
    st, lo = s["strict"], s["loose"]
    if not s["prompts"]:
        head = "No verifiable instructions were run."
    else:
        head = (
            f"On {s['prompts']} general instructions the fine-tuned model follows "
            f"{st['tuned']:.0f} % against the base model's {st['base']:.0f} % "
            f"(strict; {st['diff']:+.0f} points, 95 % interval {st['lo']:+.0f} to {st['hi']:+.0f}; "
            f"loose {lo['base']:.0f} % → {lo['tuned']:.0f} %)"
        )
        head += (
            ": it follows general instructions less well"
            if s["clear_loss"]
            else ": it follows them better"
            if st["lo"] > 0
            else ": no clear change"
        )
        head += "."
    if s["lost"]:
        head += (
            " Lost: "
            + ", ".join(
                f"{n} ({c['base']:.0f} % → {c['tuned']:.0f} %)" for n, c in s["categories"].items() if c["lost"]
            )
            + "."
        )
    r = s.get("references")
    if r:
        head += (
            f" Your own {r['n']} reference answers: chrF {r['base']:.1f} → {r['tuned']:.1f} "
            f"({r['diff']:+.1f}, 95 % interval {r['lo']:+.1f} to {r['hi']:+.1f})."
        )
    d = s.get("drift")
    if d and not d.get("tokens"):
        head += " Drift: not measured — the base model's replies to the general prompts were empty."
    if d and d.get("tokens"):
        head += (
            f" Drift: KL(base ‖ fine-tuned) {d['kl']:.3f} nats per token "
            f"(95 % interval {d['lo']:.3f} to {d['hi']:.3f}) on the base model's own replies to "
            f"{d['replies']} general prompts."
        )
    return head


def recommendation_clause(s: dict | None) -> str:
    """The sentence the recommendation gains when the loss is clear, else nothing."""
    if not s or not s.get("clear_loss"):
        return ""
    st = s["strict"]
    lost = f" (lost: {', '.join(s['lost'])})" if s["lost"] else ""
    return (
        f" But the fine-tune follows general instructions less well: {st['base']:.0f} % → {st['tuned']:.0f} %, "
        f"{st['diff']:+.0f} [{st['lo']:+.0f}, {st['hi']:+.0f}]{lost}; see the side effects."
    )


def decide(verdict: dict, s: dict) -> None:
    """compare.decide_on names instructions: a fine-tune that clearly follows general instructions
    less well is not recommended, whatever it gains on the task (the cheaper arm the rule would
    otherwise pick is). A veto only: following them better never makes the case for fine-tuning."""
    verdict["instructions_veto"] = bool(verdict.get("fine_tune") and s.get("clear_loss"))
    if not verdict["instructions_veto"] or not verdict.get("cheapest"):
        return
    verdict["fine_tune"], verdict["recommend"] = False, verdict["cheapest"]
    verdict["paragraph"] = (
        f"Recommendation: {verdict['cheapest']}. The fine-tune wins on the task, but compare.decide_on names "
        f"instructions and it clearly follows general instructions less well, so it is not recommended. "
        f"{verdict['choice']} (Without the side effects: {verdict['paragraph']})"
    )


def markdown(s: dict | None) -> list[str]:
    """The report's block (report.md, and report.html through it)."""
    if not s:
        return []
    if s.get("status") == "skipped":
        return ["", "## Side effects: what the fine-tune broke", "", s["reason"]]
    out = [
        "",
        "## Side effects: what the fine-tune broke",
        "",
        s["sentence"],
        "",
        "General instructions answered by the base model and by the fine-tuned one (the same replies serve both "
        "fine-tuned arms: the instructions carry no retrieved passages). Strict: the reply as it is; loose: also "
        "without its first or last line and markdown asterisks (IFEval's readings). A category is lost when the "
        f"95 % interval of its change lies below zero, over at least {MIN_CATEGORY_CHECKS} checks of that kind.",
        "",
        "| instructions | base | fine-tuned | change (points) | 95 % interval |",
        "|---|---|---|---|---|",
    ]
    for reading in ("strict", "loose"):
        r = s[reading]
        out.append(
            f"| all, {reading} ({s['prompts']} prompts) | {r['base']:.0f} % | {r['tuned']:.0f} % | {r['diff']:+.0f} "
            f"| {r['lo']:+.0f} to {r['hi']:+.0f} |"
        )
    for name, c in s["categories"].items():
        label = f"**{name} (lost)**" if c["lost"] else name
        out.append(
            f"| {label} ({c['n']}) | {c['base']:.0f} % | {c['tuned']:.0f} % | {c['diff']:+.0f} "
            f"| {c['lo']:+.0f} to {c['hi']:+.0f} |"
        )
    d = s.get("drift")
    if d and d.get("tokens"):
        out += [
            "",
            f"Drift: KL(base ‖ fine-tuned) = {d['kl']:.4f} nats per token (95 % interval {d['lo']:.4f} to "
            f"{d['hi']:.4f}, resampling replies), teacher-forced on {d['tokens']:,} tokens of the base model's own "
            f"replies to {d['replies']} general prompts. 0 is the base model itself; train.replay can lower it.",
        ]
    return out
