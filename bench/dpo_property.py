"""Does DPO from an SFT run move the one property its pairs teach, on held-out prompts?

    python bench/dpo_property.py --sft RUN                # DPO from RUN (`tunesmith demo`'s run/), both scored
    python bench/dpo_property.py                          # first trains that SFT run, as the demo does
    python bench/dpo_property.py --sft RUN --dpo-steps 24 --dpo-lr 1e-4 --json out.json

The pairs are bench/dpo.py's glossary pairs of the bundled Pantry repository: chosen is a reply as
the team wrote it, rejected the same reply with one preferred term (e.g. "signal") swapped for its
rejected variant ("data point"); nothing else differs. The held-out pairs come from the held-out
studies, so their prompts were never trained on, by SFT or DPO. Pairs of at most --max-tokens
tokens a side, so that the whole run fits in minutes on a shared CPU.

1. SFT: --sft RUN, or LoRA on the repository's training split with `tunesmith demo`'s settings
   (tunesmith.demo.PROFILES, its data and train keys).
2. DPO from that run (train.init_from): the reference is the SFT adapter, held frozen beside the
   trained one.
3. Both runs on the held-out pairs, paired per prompt, with 95 % paired-bootstrap intervals
   (tunesmith.compare.stats.paired_bootstrap):
   - the preference margin, log p(chosen) - log p(rejected) of the whole reply (teacher-forced,
     exact: the property itself, in nats);
   - greedy replies to the held-out prompts: whether they use the preferred term, whether they use
     its rejected variant, and chrF against the team's reply (the SFT task metric, which should not
     fall by more than its interval).
The defaults are the setting docs/train.md reports: large enough a move to settle the margin,
small enough not to cost chrF (at a learning rate 2.5x higher the replies repeat the term).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo import pantry_pairs  # noqa: E402  (the same pairs as the speed bench)


def train_runs(args, root: Path) -> tuple[Path, Path, Path]:
    from tunesmith.config import load_config
    from tunesmith.train import train

    pantry = root / "pantry"
    pairs, held_pairs = pantry_pairs(pantry)
    if args.max_tokens:  # short pairs only: minutes, not hours, on a shared CPU
        pairs, held_pairs = (shortest(path, args.model, args.max_tokens) for path in (pairs, held_pairs))
    sft = Path(args.sft) if args.sft else root / "sft"
    t0 = time.time()
    if not args.sft:  # as `tunesmith demo` trains it: the demo's data and train settings, its training split
        from tunesmith.demo import PROFILES

        demo = [o for o in PROFILES["full"] if o.split(".")[0] in ("data", "train")]
        overrides = [f"data.train={pantry / 'train.jsonl'}", "data.heldout_fraction=0", f"train.output_dir={sft}"]
        train(load_config(None, [f"model.name={args.model}", *demo, *overrides]))
        print(f"SFT: {time.time() - t0:.0f} s", flush=True)
    dpo = root / "dpo"
    t0 = time.time()
    train(
        load_config(
            None,
            [
                f"model.name={args.model}",
                f"data.max_len={args.max_length}",
                "data.too_long=truncate",
                f"train.batch_size={args.batch}",
                "train.save_every=-1",
                f"data.train={pairs}",
                "data.heldout_fraction=0",  # the held-out pairs are scored below, for both runs alike
                "train.objective=dpo",
                f"train.beta={args.beta}",
                f"train.init_from={sft}",
                f"train.max_steps={args.dpo_steps}",
                f"train.lr={args.dpo_lr}",
                f"train.output_dir={dpo}",
            ],
        )
    )
    print(f"DPO: {args.dpo_steps} steps in {time.time() - t0:.0f} s", flush=True)
    return sft, dpo, held_pairs


def shortest(path: Path, model: str, max_tokens: int) -> Path:
    """The records of a chat or pairs JSONL file whose conversation (with the longer reply) fits
    max_tokens under the chat template, written beside it as NAME-short.jsonl."""
    from tunesmith.data.batches import encode
    from tunesmith.data.formats import FORMATS
    from tunesmith.models import load_tokenizer

    tok = load_tokenizer(model)
    keep = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        ex = FORMATS["preference" if "chosen" in rec else "chat"](rec)[0]
        sides = [ex["messages"]] + ([[*ex["messages"][:-1], ex["rejected"]]] if "rejected" in ex else [])
        if max(len(encode(tok, msgs)[0]) for msgs in sides) <= max_tokens:
            keep.append(line)
    out = path.with_name(f"{path.stem}-short.jsonl")
    out.write_text("".join(line + "\n" for line in keep))
    print(f"{path.name}: {len(keep)} records of at most {max_tokens} tokens", flush=True)
    return out


def margins(run: Path, pairs: list[dict], max_len: int) -> list[float]:
    """log p(chosen) - log p(rejected) of each pair under a run's final model (reply tokens, summed)."""
    import torch

    from tunesmith.data.formats import FORMATS
    from tunesmith.models import load
    from tunesmith.train.loss import CausalLMLoss
    from tunesmith.train.preference import encode_pairs, pair_batch, sequence_logps

    model, tok = load(str(run), device="cpu")
    examples = [FORMATS["preference"](p)[0] for p in pairs]
    encoded, _ = encode_pairs(tok, examples, max_len, "truncate")
    lm, out = CausalLMLoss(model).eval(), []
    with torch.no_grad():
        for a in range(0, len(encoded), 4):
            batch = pair_batch(encoded[a : a + 4], packing=False, pad_id=tok.pad_token_id or 0)
            lp = sequence_logps(lm(**batch, reduce=False), batch, len(encoded[a : a + 4]))
            out += (lp.chosen - lp.rejected).tolist()
    return out


def replies(run: Path, pairs: list[dict], max_new_tokens: int) -> list[str]:
    from tunesmith.generation.api import generate
    from tunesmith.models import load

    model, tok = load(str(run), device="cpu", merge_adapter=True)
    return [c.text for c in generate(model, tok, [p["prompt"] for p in pairs], max_new_tokens=max_new_tokens)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--sft", default="", help="an SFT run of this model on the Pantry training split to start from")
    p.add_argument("--dpo-steps", type=int, default=16)
    p.add_argument("--dpo-lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=4, help="DPO pairs per step")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=256, help="only pairs this short a side (0: all)")
    p.add_argument("--prompts", type=int, default=48, help="held-out pairs scored (the first N)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()

    from tunesmith.compare.metrics import chrf, uses
    from tunesmith.compare.stats import paired_bootstrap

    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        sft, dpo, held_path = train_runs(args, Path(tmp))
        held = [json.loads(line) for line in held_path.read_text().splitlines()][: args.prompts]
        result = {"args": vars(args), "pairs": len(held), "metrics": {}}
        t0 = time.time()
        m_sft, m_dpo = margins(sft, held, args.max_length), margins(dpo, held, args.max_length)
        outs = {name: replies(run, held, args.max_new_tokens) for name, run in (("sft", sft), ("dpo", dpo))}
        result.update(seconds=round(time.time() - start), cpu_seconds=round(time.process_time()))
        print(
            f"scoring: {time.time() - t0:.0f} s; in all {result['seconds']} s of wall time, {result['cpu_seconds']} s "
            f"of this process's CPU time",
            flush=True,
        )
        result["dpo_run_last"] = json.loads((dpo / "metrics.jsonl").read_text().splitlines()[-1])
    scores = {
        "preference margin, nats": (m_sft, m_dpo),
        "uses the preferred term": tuple(
            [float(uses(o, p["meta"]["term"])) for o, p in zip(outs[s], held)] for s in outs
        ),
        "uses the rejected variant": tuple(
            [float(uses(o, p["meta"]["variant"])) for o, p in zip(outs[s], held)] for s in outs
        ),
        "chrF against the team's reply": tuple(
            [chrf(o, p["chosen"][0]["content"]) for o, p in zip(outs[s], held)] for s in outs
        ),
    }
    print(f"\n{len(held)} held-out pairs (prompts from held-out studies); DPO - SFT, paired, 95 % bootstrap interval")
    print("| measure | SFT | DPO | DPO - SFT [95 % interval] |\n| --- | ---: | ---: | ---: |")
    for name, (a, b) in scores.items():
        diff, lo, hi = paired_bootstrap(b, a)
        mean = lambda x: sum(x) / len(x)  # noqa: E731
        result["metrics"][name] = {"sft": mean(a), "dpo": mean(b), "diff": diff, "low": lo, "high": hi}
        print(f"| {name} | {mean(a):.3f} | {mean(b):.3f} | {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    margin, quality = (result["metrics"][k] for k in ("preference margin, nats", "chrF against the team's reply"))
    print(
        f"the property moved (margin interval clear of zero): {'yes' if margin['low'] > 0 else 'no'}; "
        f"chrF fell by more than its interval: {'yes' if quality['high'] < 0 else 'no'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "replies": outs}, indent=2))


if __name__ == "__main__":
    main()
