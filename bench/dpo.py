"""tunesmith's DPO against TRL's DPOTrainer, side by side, on the same pairs, model and LoRA settings.

    python bench/dpo.py                           # embedded model, LoRA r16 all-linear, 4 pairs a step, max_length 512
    python bench/dpo.py --steps 6 --rounds 1 --threads 2
    python bench/dpo.py --gradient-checkpointing off  # both systems without it (default: both with it)

Each measurement runs in its own process (peak memory is that run's alone), the systems interleaved
round by round as in bench/throughput.py, timed by the same hook after every optimizer step. Both
start DPO from the base model with a fresh adapter, so both take the reference with the adapter
switched off (no second copy of the weights); beta 0.1, the sigmoid loss. Reported per system: real
(non-padding) tokens per second, chosen and rejected sides together, per second of wall time and of
the process's own CPU time, peak memory (RSS on CPU, torch.cuda.max_memory_allocated on a GPU), and
the ratios against TRL. Gradient checkpointing is the same on both sides (--gradient-checkpointing,
on by default as TRL ships it; tunesmith's own default is off): it trades a forward pass for most of
the activations, so a comparison across settings measures the setting. Otherwise each runs with its
own defaults; --threads N gives both N threads.

Pairs: the glossary pairs of the bundled Pantry repository (glossary_pairs below): every training
example whose reply uses a preferred term, chosen as written, rejected with the term swapped for
its first rejected variant. One measurable property separates the two sides; bench/dpo_property.py
trains on the same construction and measures whether DPO moves it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import PANTRY, peak_memory_mb, step_clock, timed  # noqa: E402  (one instrument for both benches)

# ------------------------------------------------------------------------------------------- data


def glossary_pairs(examples: list[dict], glossary) -> list[dict]:
    """TRL conversational pairs from chat examples: where the reply uses a preferred term, chosen is
    the reply as written and rejected the same reply with the term (each use of it) replaced by its
    first rejected variant. Examples with no such term make no pair; meta (the split group) is kept."""
    pairs = []
    for ex in examples:
        reply = ex["messages"][-1]["content"]
        for term in glossary:
            if not term.rejected:
                continue
            pattern = re.compile(rf"(?<![\w-]){re.escape(term.term)}(?![\w-])", re.IGNORECASE)
            if pattern.search(reply):
                pairs.append(
                    {
                        "prompt": ex["messages"][:-1],
                        "chosen": [{"role": "assistant", "content": reply}],
                        "rejected": [{"role": "assistant", "content": pattern.sub(term.rejected[0], reply)}],
                        "meta": {**(ex.get("meta") or {}), "term": term.term, "variant": term.rejected[0]},
                    }
                )
                break  # one property per pair
    return pairs


def pantry_pairs(out: Path) -> tuple[Path, Path]:
    """The bundled repository through `tunesmith import`, then glossary pairs of its training and
    held-out splits: (pairs.jsonl, heldout-pairs.jsonl) in `out`."""
    from tunesmith.compare.metrics import load_glossary
    from tunesmith.data import load_examples
    from tunesmith.data.formats import write_jsonl
    from tunesmith.data.repository import import_repository

    import_repository([PANTRY], out)
    glossary = load_glossary(out / "glossary.yaml")
    paths = out / "pairs.jsonl", out / "heldout-pairs.jsonl"
    for split, path in zip(("train", "heldout"), paths):
        write_jsonl(path, glossary_pairs(load_examples(out / f"{split}.jsonl"), glossary))
    return paths


# ---------------------------------------------------------------------------------------- workers


def run_tunesmith(args, data: Path, out: Path) -> dict:
    from tunesmith.config import load_config
    from tunesmith.train import train

    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            f"data.train={data}",
            "data.heldout_fraction=0",
            f"data.max_len={args.max_length}",
            "data.too_long=truncate",
            f"train.output_dir={out}",
            "train.objective=dpo",
            "train.beta=0.1",
            f"train.max_steps={args.warmup + args.steps}",
            f"train.batch_size={args.batch}",
            "train.lr=5e-5",
            f"lora.r={args.rank}",
            f"lora.alpha={2 * args.rank}",
            "lora.target_modules=all-linear",
            "train.save_every=-1",
            f"train.gradient_checkpointing={args.gradient_checkpointing == 'on'}",
        ],
    )
    marks = step_clock()
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_tokens = [r["tokens"] - prev for r, prev in zip(rows, [0] + [r["tokens"] for r in rows])]
    return {**timed(marks, step_tokens, args.warmup), "final_loss": rows[-1]["loss"]}


def run_trl(args, data: Path, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from tunesmith.models import converted_dir, load_tokenizer, resolve

    tok = load_tokenizer(args.model)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        converted_dir(resolve(args.model)), dtype=torch.bfloat16 if cuda else torch.float32
    )
    config = DPOConfig(  # TRL's defaults otherwise
        output_dir=str(out),
        gradient_checkpointing=args.gradient_checkpointing == "on",
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_length=args.max_length,
        beta=0.1,
        loss_type=["sigmoid"],
        max_steps=args.warmup + args.steps,
        learning_rate=5e-5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    collate, step_tokens = trainer.data_collator, []

    def counting(features):  # real tokens of both sides, as the collator truncates them, before padding
        step_tokens.append(
            sum(
                min(len(f["prompt_ids"]) + len(f[side]), args.max_length)
                for f in features
                for side in ("chosen_ids", "rejected_ids")
            )
        )
        return collate(features)

    trainer.data_collator = counting
    marks = step_clock()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        **timed(marks, step_tokens, args.warmup),
        "gradient_checkpointing": config.gradient_checkpointing,
        "final_loss": losses[-1] if losses else None,
    }


SYSTEMS = {"trl": run_trl, "tunesmith": run_tunesmith}


def worker(args) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        result = SYSTEMS[args.worker](args, Path(args.data), Path(tmp) / "run")
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    result["tokens_per_cpu_s"] = result["tokens"] / result["cpu_seconds"]
    result["peak_memory_mb"] = peak_memory_mb()
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------ driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of both systems")
    p.add_argument("--batch", type=int, default=4, help="pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument(
        "--gradient-checkpointing", choices=("on", "off"), default="on", help="both systems (on: as TRL ships)"
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both systems (default: each its own)")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.warmup = max(1, args.warmup)
    if args.worker:
        return worker(args)

    import tunesmith  # noqa: F401  (its OpenMP settings, inherited by both workers; see bench/throughput.py)

    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = pantry_pairs(Path(tmp) / "pantry")
        n = len(data.read_text().splitlines())
        print(
            f"data: {n} Pantry glossary pairs; setup: {args.model}, LoRA r{args.rank} all-linear, {args.batch} pairs a "
            f"step, max_length {args.max_length}, {args.warmup} warmup + {args.steps} timed steps, {args.rounds} "
            f"round(s), threads: {args.threads or 'each system its own'}, gradient checkpointing "
            f"{args.gradient_checkpointing} in both"
        )
        results = {s: [] for s in SYSTEMS}
        for r in range(args.rounds):
            for s in SYSTEMS:
                cmd = [sys.executable, __file__, "--worker", s, "--data", str(data), *_passthrough(args)]
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{s} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                res = json.loads(line[7:])
                results[s].append(res)
                print(
                    f"round {r + 1} {s:9s} {res['tokens_per_s']:6.1f} real tok/s {res['tokens_per_cpu_s']:6.1f} per "
                    f"CPU-s  peak {res['peak_memory_mb']:5.0f} MB  ({res['tokens']} tokens, {res['steps']} steps, "
                    f"{res['seconds']:.0f} s, {res['threads']} threads; last loss {res['final_loss']:.4f}; run "
                    f"{time.time() - t0:.0f} s; load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    _report(args, results)


def _passthrough(args) -> list[str]:
    flags = ("--model", "--steps", "--warmup", "--batch", "--max-length", "--rank", "--gradient-checkpointing")
    return [x for f in flags for x in (f, str(getattr(args, f[2:].replace("-", "_"))))]


def _report(args, results: dict) -> None:
    """Medians per system, and the median over rounds of each round's ratio to TRL."""
    keys = ("tokens_per_s", "tokens_per_cpu_s", "peak_memory_mb")
    med = {s: {k: statistics.median(r[k] for r in rs) for k in keys} for s, rs in results.items()}
    ratio = lambda k: statistics.median(a[k] / b[k] for a, b in zip(results["tunesmith"], results["trl"]))  # noqa: E731
    print("\n| system | real tokens/s | per CPU-second | peak memory MB |")
    print("| --- | ---: | ---: | ---: |")
    for s, m in med.items():
        print(f"| {s} | {m['tokens_per_s']:.1f} | {m['tokens_per_cpu_s']:.1f} | {m['peak_memory_mb']:.0f} |")
    print(
        f"tunesmith / TRL: speed {ratio('tokens_per_s'):.2f}x (per CPU-second {ratio('tokens_per_cpu_s'):.2f}x), "
        f"peak memory {ratio('peak_memory_mb'):.2f}x (medians of the per-round ratios)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "median": med}, indent=2))


if __name__ == "__main__":
    main()
