"""Check `tunesmith models --recommend` against a measured run of a second model size.

    python bench/recommend_check.py                                   # SmolLM2-360M's shapes
    python bench/recommend_check.py --model Qwen/Qwen2.5-0.5B-Instruct --rounds 3

A random model with the second model's shapes (recommend.MODELS; the embedded tokenizer) is written to
a temporary directory; then the trainer's speed probe (tunesmith check's) and the decode timer run on it
and on the embedded model, in alternation, `--rounds` times each, so that load on a shared machine falls
on both alike. Printed: each model's median rates, the ratio measured, and the ratio recommend predicts
from FLOPs (training) and weight bytes (decoding).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-360M-Instruct", help="a key of recommend.MODELS")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith import recommend
    from tunesmith.models import DEFAULT_MODEL, load, load_tokenizer
    from tunesmith.train.probe import probe

    tok = load_tokenizer(DEFAULT_MODEL)
    base_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    examples = [
        {
            "messages": [
                {"role": "user", "content": f"Summarise note {i}: the pantry shelf ran out of rice twice this week."},
                {"role": "assistant", "content": "Staples run out mid-week; shoppers plan around one big trip."},
            ]
        }
        for i in range(16)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        config = recommend.shape_config(args.model)
        config.vocab_size = len(tok)
        config.bos_token_id, config.eos_token_id, config.pad_token_id = (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
        torch.manual_seed(0)
        second = Path(tmp) / "second"
        AutoModelForCausalLM.from_config(config).save_pretrained(second)
        tok.save_pretrained(second)
        specs = {base_name: DEFAULT_MODEL, args.model: str(second)}
        rates = {name: {"train": [], "decode": []} for name in specs}
        for _ in range(args.rounds):
            for name, spec in specs.items():
                rates[name]["train"].append(probe(spec, tok, examples, recommend.WORKLOAD["row"])["tokens_per_s"])
                model, _ = load(spec, device="cpu")
                rates[name]["decode"].append(recommend.decode_rate(model, tok)["decode_tokens_per_s"])
                del model
                print(
                    f"{name}: training {rates[name]['train'][-1]} tokens/s, decoding {rates[name]['decode'][-1]}",
                    flush=True,
                )

    sizes = {name: recommend.count(recommend.shape_config(name)) for name in specs}
    flops = {
        name: recommend.train_flops_per_token(recommend.shape_config(name), sizes[name]["params"]) for name in specs
    }
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in rates.items()}
    for name in specs:
        print(f"{name:38} training {med[name]['train']:8.1f} tokens/s   decoding {med[name]['decode']:6.1f} tokens/s")
    train_measured = med[base_name]["train"] / med[args.model]["train"]
    train_predicted = flops[args.model] / flops[base_name]
    decode_measured = med[base_name]["decode"] / med[args.model]["decode"]
    decode_predicted = sizes[args.model]["params"] / sizes[base_name]["params"]
    print(f"training: {args.model} slower by {train_measured:.2f}x measured, {train_predicted:.2f}x predicted")
    print(f"decoding: {args.model} slower by {decode_measured:.2f}x measured, {decode_predicted:.2f}x predicted")


if __name__ == "__main__":
    main()
