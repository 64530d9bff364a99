"""The whole pipeline on the bundled example repository and the embedded model.

    tunesmith demo               # import → check → train LoRA → compare every arm → report (~10 min, 2 CPU cores)
    tunesmith demo --quick       # the same, smaller (a few minutes)
    tunesmith demo -o out --steps 120

Each stage is the same function its own verb calls; the demo only picks settings that fit the
time budget on a small CPU machine, and says what it picked.
"""

from __future__ import annotations

import time
from pathlib import Path

from tunesmith import UserError, rundir

PANTRY = Path(__file__).resolve().parent / "examples" / "pantry"

# The template-bound tasks and titles. Report sections are left out of the demo: their prompts are
# long field notes, and on a small CPU they alone would double the time. Training drops them too
# (data.max_len=768), so every training step is spent on the tasks that are scored.
DEMO_TASKS = "insight,insight-from-draft,insight-title,recommendation,recommendation-from-draft"

# Settings per profile, as config overrides, sized for a 10-minute demo on 2 CPU cores (timings in
# docs/compare.md): training takes a fixed share; every held-out example costs one reply per arm,
# 24 generated at once. Replies keep room for the longest reference (127 tokens).
PROFILES = {
    "full": [
        "data.max_len=768",
        "train.max_steps=28",
        "train.batch_size=4",
        "train.lr=1e-3",
        "train.warmup_steps=3",
        "train.schedule=cosine",
        "train.eval_every=0",
        "train.save_every=0",
        "train.log_every=1",
        f"compare.tasks={DEMO_TASKS}",
        "compare.max_examples=32",
        "compare.max_prompt_tokens=768",
        "generate.max_new_tokens=128",
        "generate.batch_size=24",
    ],
    "quick": [
        "data.max_len=768",
        "train.max_steps=10",
        "train.batch_size=4",
        "train.lr=1e-3",
        "train.warmup_steps=2",
        "train.schedule=cosine",
        "train.eval_every=0",
        "train.save_every=0",
        "train.log_every=1",
        f"compare.tasks={DEMO_TASKS}",
        "compare.max_examples=8",
        "compare.max_prompt_tokens=768",
        "generate.max_new_tokens=96",
        "generate.batch_size=8",
        "compare.bootstrap=1000",
    ],
}


def cli_demo(args) -> int:
    from tunesmith.cli import main as cli

    out = Path(args.out).resolve()
    profile = "quick" if args.quick else "full"
    overrides = PROFILES[profile] + [f"train.output_dir={out / 'run'}", f"compare.output_dir={out / 'report'}"]
    if args.steps is not None:
        overrides.append(f"train.max_steps={args.steps}")
    clock = _Clock()
    data = out / "data"

    clock.stage("1/4 import", f"the bundled example repository {PANTRY.name} → {data}")
    if cli(["import", str(PANTRY), "-o", str(data)]) != 0:
        raise UserError("import of the bundled example failed (see above). This is a tunesmith bug; please report it.")

    clock.stage(
        "2/4 check", "validate the examples and count tokens (no speed probe: the demo measures training for real)"
    )
    if cli(["check", str(data / "config.yaml"), "--no-probe"]) not in (0,):
        raise UserError(
            "`tunesmith check` found errors in the bundled example (see above). "
            "This is a tunesmith bug; please report it."
        )

    import copy

    from tunesmith.config import load_config, save_config
    from tunesmith.data import load_examples
    from tunesmith.data.formats import write_jsonl
    from tunesmith.data.split import filter_tasks, select_examples

    cfg = load_config(data / "config.yaml", overrides)
    save_config(cfg, out / "demo-config.yaml")
    # The trainer measures held-out loss on the examples compare will score, not on all of them:
    # on a small CPU, a loss pass over every held-out example costs minutes and tells no more.
    train_cfg = copy.deepcopy(cfg)
    scored = select_examples(
        filter_tasks(load_examples(cfg.data.heldout), cfg.compare.tasks), cfg.compare.max_examples, cfg.data.seed
    )
    train_cfg.data.heldout = str(data / "heldout-scored.jsonl")
    write_jsonl(train_cfg.data.heldout, scored)
    clock.stage(
        "3/4 train",
        f"LoRA r={cfg.lora.r} on {cfg.model.name}, {cfg.train.max_steps} steps of "
        f"{cfg.train.batch_size} examples (up to {cfg.data.max_len} tokens each)",
    )
    from tunesmith.train import train

    run = train(train_cfg)

    clock.stage(
        "4/4 compare",
        f"{cfg.compare.max_examples} held-out examples × every arm, "
        f"up to {cfg.generate.max_new_tokens} new tokens each",
    )
    from tunesmith.compare.run import compare

    report = compare(cfg, run=run)

    print(f"\ndone in {clock.elapsed()}.")
    print(f"  report:  {report / 'report.html'}   (and report.md, results.json, samples.jsonl)")
    print(f"  model:   {run / rundir.FINAL}")
    print(
        f"  config:  {out / 'demo-config.yaml'}   "
        f"(rerun any stage with it, e.g. tunesmith compare {out / 'demo-config.yaml'} --run {run})"
    )
    print(f"  serve:   tunesmith serve {run}      (OpenAI-compatible API and web UI on http://127.0.0.1:8000)")
    print(f"  chat:    tunesmith chat {run}")
    print(f"  export:  tunesmith export {run} --format gguf")
    return 0


class _Clock:
    """Stage headers with the time since the demo started."""

    def __init__(self):
        self.t0 = time.time()

    def elapsed(self) -> str:
        s = int(time.time() - self.t0)
        return f"{s // 60}:{s % 60:02d}"

    def stage(self, name: str, what: str) -> None:
        print(f"\n=== {name} [{self.elapsed()}] {what}", flush=True)
