"""The held-out split, and the choice of which held-out examples compare scores.

    from tunesmith.data.split import load_split, split_heldout
    train, heldout, info = load_split(cfg)          # what `train` trains on and `compare` scores
    train, heldout = split_heldout(examples, 0.15, seed=0)

One algorithm, used by `import` (heldout.jsonl), `train` and `compare` (when no held-out file is
given): whole groups at a time, so one study's examples never sit on both sides. An example's
group is meta.group, else meta.id, else its position. Groups are ranked by a seeded hash (the
choice does not depend on Python's RNG or on the order of the file) and taken in that order until
at least `fraction` of the examples are held out; never every group. An example with
meta.split = "train" or "heldout" is pinned to that side (import pins glossary definitions to
train: the model must learn the glossary, not be tested on terms it never saw).
"""

from __future__ import annotations

import hashlib
import random

from tunesmith import UserError


def group_of(example: dict, index: int) -> str:
    meta = example.get("meta") or {}
    return str(meta.get("group") or meta.get("id") or f"#{index}")


def task_of(example: dict) -> str:
    return str((example.get("meta") or {}).get("task") or "")


def split_heldout(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): about `fraction` of the examples, whole groups at a time."""
    pinned = {i: (ex.get("meta") or {}).get("split") for i, ex in enumerate(examples)}
    held: set[int] = {i for i, side in pinned.items() if side == "heldout"}
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        if pinned[i] not in ("train", "heldout"):
            groups.setdefault(group_of(ex, i), []).append(i)
    if fraction <= 0 or len(groups) < 2:
        return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    for g in ranked[:-1]:  # never everything
        if len(held) >= fraction * len(examples):
            break
        held.update(groups[g])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def load_split(cfg, need_train: bool = True) -> tuple[list[dict], list[dict], dict]:
    """(train, held-out, info) as the config says: data.heldout if given, else the split above of
    data.train. `info` is what a run's data.json records (paths, hashes, sizes, the source).
    need_train=False (compare without a fine-tuned arm) accepts a config with only data.heldout."""
    from tunesmith.data import load_examples
    from tunesmith.data.batches import examples_hash

    d = cfg.data
    if not d.train and (need_train or not d.heldout):
        raise UserError(
            "data.train is not set. fix: data.train=path/to/train.jsonl (`tunesmith import` writes "
            "train.jsonl and heldout.jsonl; point data.train and data.heldout at them)."
        )
    examples = load_examples(d.train, d.format) if d.train else []
    info = {"train": {"path": str(d.train), "hash": examples_hash(examples)}}
    if d.heldout:
        heldout = load_examples(d.heldout, d.format)
        info["heldout"] = {"path": str(d.heldout), "hash": examples_hash(heldout), "source": "file"}
    else:
        examples, heldout = split_heldout(examples, d.heldout_fraction, d.seed)
        info["heldout"] = {"source": f"{d.heldout_fraction:g} of train by meta.group", "hash": examples_hash(heldout)}
    info["train"]["examples"], info["heldout"]["examples"] = len(examples), len(heldout)
    return examples, heldout, info


def has_reply(example: dict) -> bool:
    return any(m.get("role") == "assistant" for m in example["messages"])


def filter_tasks(examples: list[dict], tasks: str) -> list[dict]:
    """Only the examples whose meta.task is in the comma-separated list (all when it is empty)."""
    wanted = {t.strip() for t in tasks.split(",") if t.strip()}
    if not wanted:
        return examples
    present = {task_of(ex) for ex in examples}
    if not wanted & present:
        raise UserError(
            f"compare.tasks={tasks}: no held-out example has one of these tasks. "
            f"fix: use some of {', '.join(sorted(present))}, or leave it empty for all."
        )
    return [ex for ex in examples if task_of(ex) in wanted]


def select_examples(heldout: list[dict], limit: int, seed: int) -> list[dict]:
    """A fixed subset of at most `limit` examples (0: all), every task represented: a seeded
    shuffle within each task, then one from each task in turn. Returned in file order."""
    if not limit or limit >= len(heldout):
        return list(heldout)
    by_task: dict[str, list[int]] = {}
    for i, ex in enumerate(heldout):
        by_task.setdefault(task_of(ex), []).append(i)
    queues = []
    for task in sorted(by_task):
        idx = by_task[task][:]
        random.Random(f"{seed}:{task}").shuffle(idx)
        queues.append(idx)
    chosen: list[int] = []
    while len(chosen) < limit:
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return [heldout[i] for i in sorted(chosen)]
