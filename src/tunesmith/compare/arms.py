"""The arms of the comparison: how each one turns a held-out example into the conversation the
model sees. Same base model and decoding for all; only the prompt (and, for the fine-tuned arms,
the weights) differ.

    from tunesmith.compare.arms import ARMS, TUNED, Context, build_prompts
    messages = ARMS["few-shot-retrieved"](example, ctx)
    convs = build_prompts("rag", examples, ctx)   # and ctx.prompt_stats["rag"]: what went in

An arm that cannot run here (no corpus, no style guide, no training examples) raises `Skipped`
with the reason and the fix; compare reports it as skipped instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Callable

from tunesmith.compare.metrics import Term
from tunesmith.data.split import task_of


class Skipped(Exception):
    """This arm cannot run with what the config provides; the message says why and how to fix it."""


@dataclass
class Context:
    """What the arms draw on; everything comes from the training side of the split."""

    train: list[dict] = field(default_factory=list)  # training examples (chat records)
    style: str = ""  # the house style guide
    prompt: str = ""  # the team's own engineered system prompt (data.prompt)
    glossary: list[Term] = field(default_factory=list)
    passages: list = field(default_factory=list)  # retrieval.Passage list from the corpus
    k_shots: int = 3
    rag_k: int = 3
    seed: int = 0
    fits: Callable[[list[dict]], bool] = lambda messages: True  # prompt within the token budget?
    prompt_stats: dict = field(default_factory=dict)  # arm -> what went into its prompts (build_prompts)
    _added: tuple[int, int] = (0, 0)  # (added, offered) by the last arm call
    _cache: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ example parts


def prompt_of(example: dict) -> list[dict]:
    """The conversation up to the reply being evaluated (the last assistant message)."""
    msgs = example["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return [{"role": m["role"], "content": m["content"]} for m in msgs[:last]]


def reference_of(example: dict) -> str:
    return [m for m in example["messages"] if m["role"] == "assistant"][-1]["content"]


def query_of(example: dict) -> str:
    """What retrieval searches with: the user turns of the prompt."""
    return "\n".join(m["content"] for m in prompt_of(example) if m["role"] == "user")


def _with_system(messages: list[dict], text: str) -> list[dict]:
    """Put `text` in front of the conversation's system message (or make one)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": text + "\n\n" + messages[0]["content"]}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def _add_while_fits(ctx: Context, build: Callable[[list], list[dict]], candidates: list) -> list[dict]:
    """The conversation with as many candidates (best first) as the prompt budget allows."""
    chosen: list = []
    for c in candidates:
        if not ctx.fits(build(chosen + [c])):
            break
        chosen.append(c)
    ctx._added = (len(chosen), len(candidates))
    return build(chosen)


# ------------------------------------------------------------------------------------- arms


def zero_shot(example: dict, ctx: Context) -> list[dict]:
    """The example's own prompt, nothing added."""
    return prompt_of(example)


def engineered_prompt(example: dict, ctx: Context) -> list[dict]:
    """The team's own prompt (data.prompt), the house style guide and the glossary in the system prompt."""
    if not ctx.prompt and not ctx.style and not ctx.glossary:
        raise Skipped(
            "no prompt, style guide or glossary. fix: set data.prompt to a file with your own system prompt, "
            "and/or data.style and data.glossary (tunesmith import writes both)."
        )
    ctx._added = (1, 1)
    parts = [
        ctx.prompt.strip()
        if ctx.prompt.strip()
        else "Write the way this team writes. Follow its house style guide and glossary exactly."
    ]
    if ctx.style:
        parts.append("# House style guide\n\n" + ctx.style.strip())
    if ctx.glossary:
        lines = [f"- {t.term}" + (f" (never: {', '.join(t.rejected)})" if t.rejected else "") for t in ctx.glossary]
        parts.append("# Glossary: always use the preferred term, never the retired variants\n\n" + "\n".join(lines))
    return _with_system(prompt_of(example), "\n\n".join(parts))


def _shots_conversation(example: dict, shots: list[dict]) -> list[dict]:
    """Shots as earlier user/assistant turns, the most relevant one last (nearest the question)."""
    prompt = prompt_of(example)
    head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    turns = []
    for shot in reversed(shots):
        turns += [m for m in prompt_of(shot) if m["role"] != "system"]
        turns.append({"role": "assistant", "content": reference_of(shot)})
    return head + turns + prompt[len(head) :]


def _same_task(ctx: Context, task: str) -> list[int]:
    """Positions of training examples of the same task (all of them when none share it)."""
    key = ("task", task)
    if key not in ctx._cache:
        same = [i for i, ex in enumerate(ctx.train) if task_of(ex) == task]
        ctx._cache[key] = same or list(range(len(ctx.train)))
    return ctx._cache[key]


def few_shot_fixed(example: dict, ctx: Context) -> list[dict]:
    """The same k training examples for every held-out example of a task (drawn once, seeded)."""
    if not ctx.train:
        raise Skipped("no training examples. fix: set data.train.")
    task = task_of(example)
    key = ("fixed", task)
    if key not in ctx._cache:
        pool = _same_task(ctx, task)
        ctx._cache[key] = random.Random(f"{ctx.seed}:{task}").sample(pool, min(ctx.k_shots, len(pool)))
    shots = [ctx.train[i] for i in ctx._cache[key]]
    return _add_while_fits(ctx, lambda chosen: _shots_conversation(example, chosen), shots)


def few_shot_retrieved(example: dict, ctx: Context) -> list[dict]:
    """The k training examples of the same task whose prompts BM25 ranks closest to this one."""
    if not ctx.train:
        raise Skipped("no training examples. fix: set data.train.")
    from tunesmith.compare.retrieval import BM25Index

    if "train_index" not in ctx._cache:
        ctx._cache["train_index"] = BM25Index([query_of(ex) for ex in ctx.train])
    hits = ctx._cache["train_index"].search(query_of(example), ctx.k_shots, allowed=_same_task(ctx, task_of(example)))
    shots = [ctx.train[i] for i, _ in hits]
    return _add_while_fits(ctx, lambda chosen: _shots_conversation(example, chosen), shots)


def rag(example: dict, ctx: Context) -> list[dict]:
    """The k corpus passages BM25 ranks closest to the prompt, as background in the system prompt."""
    if not ctx.passages:
        raise Skipped(
            "no retrieval corpus. fix: set data.corpus to a directory of .md/.txt files "
            "(tunesmith import writes OUT/corpus)."
        )
    from tunesmith.compare.retrieval import BM25Index

    if "corpus_index" not in ctx._cache:
        ctx._cache["corpus_index"] = BM25Index([p.text for p in ctx.passages])
    hits = ctx._cache["corpus_index"].search(query_of(example), ctx.rag_k)
    passages = [ctx.passages[i] for i, _ in hits]

    def build(chosen):
        if not chosen:
            return prompt_of(example)
        background = "\n\n".join(f"[{n}] ({p.source})\n{p.text}" for n, p in enumerate(chosen, 1))
        return _with_system(
            prompt_of(example),
            "Background from the team's research repository; use it where it helps:\n\n" + background,
        )

    return _add_while_fits(ctx, build, passages)


# name -> conversation builder. The fine-tuned arms see exactly the prompts of their base twins.
ARMS = {
    "zero-shot": zero_shot,
    "engineered-prompt": engineered_prompt,
    "few-shot-fixed": few_shot_fixed,
    "few-shot-retrieved": few_shot_retrieved,
    "rag": rag,
    "fine-tuned": zero_shot,
    "fine-tuned+rag": rag,
}
TUNED = ("fine-tuned", "fine-tuned+rag")

# what an arm adds to its base arm's prompt, and that base: an arm that adds nothing *is* its base
ADDS = {
    "engineered-prompt": ("system prompt", "zero-shot"),
    "few-shot-fixed": ("examples", "zero-shot"),
    "few-shot-retrieved": ("examples", "zero-shot"),
    "rag": ("passages", "zero-shot"),
    "fine-tuned+rag": ("passages", "fine-tuned"),
}


def build_prompts(name: str, examples: list[dict], ctx: Context) -> list[list[dict]]:
    """Every example's conversation for one arm; what went in lands in ctx.prompt_stats[name]:
    the mean number added, the prompts where none fit, and a fingerprint of all the prompts (two
    arms on the same weights with equal fingerprints are one arm, whatever their names)."""
    convs, added, offered = [], [], []
    for ex in examples:
        ctx._added = (0, 0)
        convs.append(ARMS[name](ex, ctx))
        added.append(ctx._added[0])
        offered.append(ctx._added[1])
    kind, base = ADDS.get(name, (None, None))
    n = max(1, len(examples))
    ctx.prompt_stats[name] = {
        "adds": kind,
        "base": base,
        "mean_added": sum(added) / n,
        "none_fit": sum(a == 0 and o > 0 for a, o in zip(added, offered)),  # there were some, none fitted
        "none_found": sum(o == 0 for o in offered) if kind else 0,
        "prompts": len(examples),
        "fingerprint": hashlib.sha256(json.dumps(convs, sort_keys=True).encode()).hexdigest()[:16],
    }
    return convs
