"""Collect preferences: pairs the experts rate blind that may train the model.

    python -m tunesmith.workbench.worker JOB_DIR     # job.json {"collect": {...}} -> sample(...)
    store_train_pairs(con, collection, samples, heldout_keys(config))   # the one writer of "train" pairs
    text = review.to_dpo(con, collection, samples, kind="train")         # what `tunesmith prefer` reads

A collection is a job of kind "collect" on a finished training run: for prompts of the run's
*training* split, the fine-tune answers twice (the same temperature, two seeds) — or once, and
another run of the project once — through the engine (tunesmith.generation). Its pairs sit beside
the evaluation pairs in workbench.db with kind "train"; reviewers rate them on the same blind
screen. Evaluation pairs answer held-out prompts and never train: the held-out split must stay
unseen by the model it judges. So the one function that writes training pairs refuses any pair
whose prompt is a held-out prompt (compared as normalised text: case and white space aside),
whatever produced it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from tunesmith import UserError
from tunesmith.workbench import db

SAMPLES = "samples.jsonl"  # in the collection's job directory: what the job sampled, read by the pages
REPLIES = ("reply-1", "reply-2")  # a collection's two "arms": the same fine-tune, two samples
# The collection form's settings: prompts drawn from the run's training split, and how they are answered.
DEFAULTS = {"prompts": "20", "temperature": "0.9", "max_new_tokens": "256"}
LIMITS = {"prompts": (1, 2000), "temperature": (0.05, 2.0), "max_new_tokens": (1, 2048)}


def prompt_key(messages: list[dict]) -> str:
    """A prompt as normalised text: its non-system messages, case-folded, white space collapsed.
    A system prompt is the arm's, not the example's, so it does not make a held-out prompt new."""
    text = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages if m.get("role") != "system")
    return " ".join(text.split()).casefold()


def training_split(config: str | Path) -> tuple[list[dict], list[dict]]:
    """(training examples with a reply, held-out examples) of the run's config, as training split them."""
    from tunesmith.config import load_config
    from tunesmith.data.split import has_reply, load_split

    train, heldout, _ = load_split(load_config(config))
    return [ex for ex in train if has_reply(ex)], heldout


def heldout_keys(config: str | Path) -> set[str]:
    from tunesmith.compare.arms import prompt_of

    return {
        prompt_key(prompt_of(ex))
        for ex in training_split(config)[1]
        if any(m["role"] != "system" for m in ex["messages"])
    }


def check_can_collect(config: str | Path) -> int:
    """How many training prompts the run offers; refuses a run without a training split."""
    try:
        train, _ = training_split(config)
    except UserError as exc:
        raise UserError(f"this run's training data cannot be read ({exc}); a collection samples its prompts.") from None
    if not train:
        raise UserError(
            "this run has no training split with replies to draw prompts from (a collection uses training-side "
            "prompts only, never held-out ones). fix: collect on a run trained on chat examples."
        )
    return len(train)


def store_train_pairs(con, collection: int, samples: list[dict], heldout: set[str]) -> list[dict]:
    """Write the collection's pairs (kind "train") once; returns them. The one writer of training
    pairs: a sample whose prompt is a held-out prompt is refused, and nothing is written."""
    leaked = [s for s in samples if prompt_key(s["prompt"]) in heldout]
    if leaked:
        first = leaked[0]
        name = (first.get("meta") or {}).get("id", f"#{first['index']}")
        raise UserError(
            f"collection {collection}: {len(leaked)} pair(s) answer a held-out prompt (first: example {name}); "
            f"held-out prompts judge the model and must never train it, so no pair of this collection was "
            f"stored. fix: collect again from the run's training split."
        )
    rows = [(collection, s["index"], *REPLIES, "train") for s in samples]
    con.executemany("INSERT OR IGNORE INTO pairs (run_job, example, arm_x, arm_y, kind) VALUES (?,?,?,?,?)", rows)
    return db.all_(con, "SELECT * FROM pairs WHERE run_job=? AND kind='train' ORDER BY id", collection)


def read_samples(job_dir: Path) -> list[dict]:
    path = Path(job_dir) / SAMPLES
    if not path.exists():
        raise UserError("this collection has no replies yet: its job has not finished.")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summary(con, collection: int) -> dict:
    """What the collection's results page shows: pairs, ratings, decided pairs, agreement."""
    from tunesmith.workbench import review

    rows = [r for r in review.ratings(con, collection) if r["kind"] == "train"]
    pairs = db.one(con, "SELECT COUNT(*) AS n FROM pairs WHERE run_job=? AND kind='train'", collection)["n"]
    votes: dict[int, list[int]] = {}
    for r in rows:
        v = votes.setdefault(r["pair"], [0, 0])
        if r["winner"]:
            v[REPLIES.index(r["winner"])] += 1
    cohen, fleiss = review.agreement(rows)
    return {
        "pairs": pairs,
        "ratings": len(rows),
        "rated_pairs": len(votes),
        "decided": sum(a != b for a, b in votes.values()),
        "ties": sum(r["choice"] == "tie" for r in rows),
        "both_bad": sum(r["choice"] == "both_bad" for r in rows),
        "reviewers": {name: sum(r["reviewer"] == name for r in rows) for name in sorted({r["reviewer"] for r in rows})},
        "cohen": cohen,
        "fleiss": fleiss,
    }


# ------------------------------------------------------------------------------------ the job


def sample(
    run_dir: str,
    config: str,
    out: str,
    prompts: int,
    temperature: float,
    max_new_tokens: int,
    other_run_dir: str | None = None,
) -> int:
    """The collection job: two sampled replies of the run's fine-tune to `prompts` training prompts
    (or one of it and one of `other_run_dir`, another run on the same data), written to `out`
    (samples.jsonl rows as compare writes them, the two replies as its arms)."""
    from tunesmith.compare.arms import prompt_of
    from tunesmith.compare.run import load_model
    from tunesmith.config import load_config
    from tunesmith.generation.api import generate

    cfg = load_config(config)
    train, heldout = training_split(config)
    check_can_collect(config)
    held = {prompt_key(prompt_of(ex)) for ex in heldout}
    train = [ex for ex in train if prompt_key(prompt_of(ex)) not in held]  # an example in both splits stays out
    picked = sorted(random.Random(cfg.data.seed).sample(range(len(train)), min(prompts, len(train))))
    examples = [train[i] for i in picked]
    convs = [prompt_of(ex) for ex in examples]
    print(f"collect: {len(convs)} training prompts of {len(train)}, two replies each, temperature {temperature}")
    replies = []
    for k, run in enumerate([run_dir, other_run_dir or run_dir]):
        if k == 0 or other_run_dir:  # one model in memory at a time
            model, tok = load_model(cfg, run, tuned=True)
        replies.append(
            generate(
                model,
                tok,
                convs,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=cfg.generate.top_p,
                batch_size=cfg.generate.batch_size,
                seed=cfg.data.seed + k,  # the same temperature, another seed: two draws, never one twice
                stop_on_repeat=cfg.generate.stop_on_repeat,
            )
        )
    del model
    rows = [
        {
            "index": i,
            "meta": ex.get("meta") or {},
            "split": "train",
            "prompt": conv,
            "outputs": {name: {"text": outs[i].text} for name, outs in zip(REPLIES, replies)},
        }
        for i, (ex, conv) in enumerate(zip(examples, convs))
    ]
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, out)
    print(f"collect: wrote {len(rows)} pairs to {Path(out).name}")
    return 0
