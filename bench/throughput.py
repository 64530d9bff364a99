"""tunesmith's training loop against TRL's SFTTrainer, side by side, on the same data and model.

    python bench/throughput.py                    # embedded model, LoRA r16 all-linear, batch 4, max_length 512
    python bench/throughput.py --threads 1        # every system on one CPU thread (compares the work done)
    python bench/throughput.py --steps 6 --rounds 1 --model /path/to/hf-model

Each measurement runs in its own process (so peak memory is that run's alone), interleaved:
TRL padded, TRL packed, tunesmith, then again for every round — the machine may be shared, and
interleaving exposes all three to the same noise. Both systems are timed by the same instrument,
a hook after every optimizer step. Reported per system: real (non-padding) tokens per second of
wall time and per second of the process's own CPU time (steadier on a shared machine) over the
timed steps (the first --warmup steps are not timed), peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on a GPU), and the ratios against TRL padded.

Each system runs as it ships: TRL with its defaults (gradient checkpointing on, torch's thread
count), tunesmith with its own (threads from the cores other processes leave free). --threads N
gives every system N threads instead.

Data: the training split `tunesmith import` makes of the bundled Pantry research repository
(insights from highlights or drafts, titles, recommendations, report sections, definitions): a
realistic spread of lengths, about 80 to 1,200 tokens, median ~260; longer ones are truncated to
max_length by both systems. The loss is on the assistant reply in both (TRL gets prompt-completion
records, so it masks the prompt too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PANTRY = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "examples" / "pantry"


# ------------------------------------------------------------------------------------------- data


def pantry_examples(out: Path) -> list[dict]:
    """The bundled example repository through `tunesmith import`: its training split."""
    from tunesmith.data import load_examples
    from tunesmith.data.repository import import_repository

    import_repository([PANTRY], out)
    return load_examples(out / "train.jsonl")


# ---------------------------------------------------------------------------------------- workers


def peak_memory_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_clock() -> list:
    """(wall, CPU) time after every optimizer step, in either system: the same instrument for both."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    marks = []

    def mark(*_):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks.append((time.perf_counter(), time.process_time()))

    register_optimizer_step_post_hook(mark)
    return marks


def timed(marks: list, step_tokens: list, warmup: int) -> dict:
    """Totals over the steps after the first `warmup` (step i runs from mark i-1 to mark i)."""
    return {
        "tokens": sum(step_tokens[warmup : len(marks)]),
        "steps": len(marks) - warmup,
        "seconds": marks[-1][0] - marks[warmup - 1][0],
        "cpu_seconds": marks[-1][1] - marks[warmup - 1][1],
    }


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
            f"train.max_steps={args.warmup + args.steps}",
            f"train.batch_size={args.batch}",
            "train.lr=2e-4",
            f"lora.r={args.rank}",
            f"lora.alpha={2 * args.rank}",
            "lora.target_modules=all-linear",
            "train.save_every=-1",
        ],
    )
    marks = step_clock()
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_tokens = [r["tokens"] - prev for r, prev in zip(rows, [0] + [r["tokens"] for r in rows])]
    return timed(marks, step_tokens, args.warmup)


def run_trl(args, data: Path, out: Path, packing: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models import converted_dir, load_tokenizer, resolve

    tok = load_tokenizer(args.model)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        converted_dir(resolve(args.model)), dtype=torch.bfloat16 if cuda else torch.float32
    )
    config = SFTConfig(  # TRL's defaults otherwise (gradient checkpointing on, as TRL ships it)
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_length=args.max_length,
        packing=packing,
        max_steps=args.warmup + args.steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        use_cpu=not cuda,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    collate, step_tokens = trainer.data_collator, []

    def counting(features):  # real tokens: the examples' own lengths, before any padding
        step_tokens.append(sum(len(f["input_ids"]) for f in features))
        return collate(features)

    trainer.data_collator = counting
    marks = step_clock()
    trainer.train()
    return {**timed(marks, step_tokens, args.warmup), "gradient_checkpointing": config.gradient_checkpointing}


SYSTEMS = {
    "trl-padded": lambda a, d, o: run_trl(a, d, o, packing=False),
    "trl-packed": lambda a, d, o: run_trl(a, d, o, packing=True),
    "tunesmith": run_tunesmith,
}


def worker(args) -> None:
    import torch

    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        result = SYSTEMS[args.worker](args, data, Path(tmp) / "run")
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
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of all systems")
    p.add_argument("--batch", type=int, default=4, help="examples (TRL packed: rows) per optimizer step")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for every system (default: each its own)")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.warmup = max(1, args.warmup)
    if args.worker:
        return worker(args)

    # The same OpenMP settings for every system: tunesmith bounds how long idle threads spin when it
    # is imported (GOMP_SPINCOUNT, tunesmith/__init__.py); TRL's worker imports torch first.
    import tunesmith  # noqa: F401  (sets them in this process's environment, which the workers inherit)

    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    systems = args.systems.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        examples = pantry_examples(Path(tmp) / "pantry")
        data = Path(tmp) / "pantry" / "train.jsonl"
        _describe_data(args, examples)
        results = {s: [] for s in systems}
        for r in range(args.rounds):
            for s in systems:
                cmd = [sys.executable, __file__, "--worker", s, "--data", str(data), *_passthrough(args)]
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{s} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
                res = json.loads(line[7:])
                results[s].append(res)
                print(
                    f"round {r + 1} {s:11s} {res['tokens_per_s']:6.1f} real tok/s "
                    f"{res['tokens_per_cpu_s']:6.1f} per CPU-s"
                    f"  peak {res['peak_memory_mb']:5.0f} MB  ({res['tokens']} tokens, {res['steps']} steps, "
                    f"{res['seconds']:.0f} s, {res['threads']} threads; run {time.time() - t0:.0f} s; "
                    f"load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    _report(args, results)


def _passthrough(args) -> list[str]:
    return [
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--max-length",
        str(args.max_length),
        "--rank",
        str(args.rank),
    ]


def _describe_data(args, examples) -> None:
    from tunesmith.data.batches import encode
    from tunesmith.models import load_tokenizer

    tok = load_tokenizer(args.model)
    lengths = sorted(len(encode(tok, e["messages"])[0]) for e in examples)
    q = lambda f: lengths[int(f * (len(lengths) - 1))]  # noqa: E731
    print(
        f"data: {len(lengths)} Pantry chat examples (tunesmith import), tokens min {lengths[0]} / median {q(0.5)} / "
        f"p90 {q(0.9)} / max {lengths[-1]}; {sum(n > args.max_length for n in lengths)} longer than {args.max_length} "
        f"(truncated)"
    )
    print(
        f"setup: {args.model}, LoRA r{args.rank} all-linear, batch {args.batch}, max_length {args.max_length}, "
        f"{args.warmup} warmup + {args.steps} timed steps per run, {args.rounds} interleaved round(s), "
        f"threads: {args.threads or 'each system its own'}"
    )


def _report(args, results: dict) -> None:
    """Medians per system, and the median over rounds of each round's ratio to TRL padded (the
    systems of one round ran minutes apart, under about the same load)."""
    keys = ("tokens_per_s", "tokens_per_cpu_s", "peak_memory_mb")
    med = {s: {k: statistics.median(r[k] for r in rs) for k in keys} for s, rs in results.items() if rs}
    base = results.get("trl-padded")
    ratio = lambda s, k: statistics.median(a[k] / b[k] for a, b in zip(results[s], base))  # noqa: E731
    print(
        "\n| system | real tokens/s | per CPU-second | peak memory MB | speed vs TRL padded (wall / CPU) "
        "| memory vs TRL padded |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s, m in med.items():
        speed = f"{ratio(s, 'tokens_per_s'):.2f}x / {ratio(s, 'tokens_per_cpu_s'):.2f}x" if base else "-"
        mem = f"{ratio(s, 'peak_memory_mb'):.2f}x" if base else "-"
        print(
            f"| {s} | {m['tokens_per_s']:.1f} | {m['tokens_per_cpu_s']:.1f} | {m['peak_memory_mb']:.0f} | {speed} "
            f"| {mem} |"
        )
    print("(medians over rounds; ratios: median of the per-round ratios)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results, "median": med}, indent=2))


if __name__ == "__main__":
    main()
