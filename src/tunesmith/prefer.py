"""Close the loop: preference-tune an SFT run on the experts' pairs, then compare it with that run.

    tunesmith prefer SFT_RUN PAIRS.jsonl [key=value ...] [--out RUN] [--resume]
    tunesmith prefer runs/sft prefs.jsonl train.max_steps=60 compare.max_examples=40

Two stages, each the CLI's own: `tunesmith train` with the SFT run's saved config and
train.objective=dpo (or orpo), train.init_from=SFT_RUN (so the reference is the SFT model) and
data.train=PAIRS in data.format=preference; then `tunesmith compare` of the new run with the SFT
run's held-out split and compare.against_run=SFT_RUN, so the verdict says whether preference tuning
helped, with the paired interval. The overrides reach both stages (train.* the first, compare.* and
generate.* the second); data.* overrides reach training only. Pairs for it: the workbench's
collection export (training-side prompts only), or any file `tunesmith check` reads as pairs.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith import UserError, rundir


def cli_prefer(args) -> int:
    run = prefer(args.run, args.pairs, args.overrides, out=args.out, resume=args.resume)
    print(f"\npreference run: {run}\nreport: {run / rundir.COMPARE / rundir.REPORT_HTML}")
    return 0


def prepare(sft_run: str | Path, pairs: str | Path, overrides=(), out: str | Path | None = None):
    """(the preference run's config, the compare's config), both checked before anything runs."""
    from tunesmith.compare.run import arm_names, check_settings
    from tunesmith.config import load_config

    sft = Path(sft_run)
    config = sft / rundir.CONFIG
    if not config.exists() or not (sft / rundir.FINAL).is_dir():
        raise UserError(
            f"{sft}: not a finished training run (no {rundir.CONFIG} and {rundir.FINAL}/ there). "
            f"fix: name the run directory `tunesmith train` wrote, e.g. runs/run."
        )
    pairs = Path(pairs)
    if not pairs.is_file() or not pairs.read_text(encoding="utf-8-sig").strip():
        raise UserError(
            f"{pairs}: no preference pairs there. fix: export a collection's pairs from the workbench "
            f"(results page of Collect preferences) after rating some, or write TRL preference JSONL."
        )
    out = Path(out) if out else sft.with_name(sft.name + "-prefer")
    overrides = list(overrides)
    train_cfg = load_config(
        config,
        [
            "train.objective=dpo",
            f"train.init_from={sft}",
            "train.replay=0",  # replay mixes chat examples in: not with a preference objective
            f"data.train={pairs}",
            "data.format=preference",
            "data.heldout=",  # the SFT run's held-out chat examples are not pairs; they judge in the compare
            "data.heldout_fraction=0",
            f"train.output_dir={out}",
            *overrides,
        ],
    )
    if train_cfg.train.objective not in ("dpo", "orpo"):
        raise UserError(
            f"train.objective={train_cfg.train.objective}: prefer trains on preference pairs. fix: dpo or orpo."
        )
    compare_cfg = load_config(
        config,
        [
            *(o for o in overrides if not o.startswith("data.")),
            f"compare.against_run={sft}",
            f"compare.output_dir={out / rundir.COMPARE}",
        ],
    )
    check_settings(compare_cfg, arm_names(compare_cfg.compare.arms))  # a typo must not cost the training
    return train_cfg, compare_cfg


def prefer(sft_run, pairs, overrides=(), out=None, resume: bool = False) -> Path:
    """Train the preference run, compare it with the SFT run; returns the new run's directory."""
    from tunesmith.compare.run import compare
    from tunesmith.train import train

    train_cfg, compare_cfg = prepare(sft_run, pairs, overrides, out)
    print(f"prefer: {train_cfg.train.objective} from {sft_run} on {pairs}", flush=True)
    run = train(train_cfg, resume=resume)
    print(f"prefer: comparing {run} with {sft_run} on the held-out split", flush=True)
    compare(compare_cfg, run=run)
    return Path(run)
