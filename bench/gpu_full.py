"""Full fine-tuning speed on a GPU: tunesmith's loop, bf16, on random-weight models of real shapes.

    PYTHONPATH=src python3 bench/gpu_full.py --shape 135m        # SmolLM2-135M shape
    PYTHONPATH=src python3 bench/gpu_full.py --shape 1b          # Llama-3.2-1B shape
    PYTHONPATH=src python3 bench/gpu_full.py --check             # packed == alone on this GPU, then exit

Needs only torch, transformers, peft, accelerate, safetensors, tokenizers (no model download, no
TRL): the tokenizer is a word-level one built here with a ChatML template, the data synthetic chats
of 128 to 2048 tokens. Loss on every token (train.train_on_prompt=true), as in a plain dense
training step, so the MFU below counts the LM head for every token.

Reports real tokens/s over the timed steps and MFU = tokens/s x (6 N + 12 L d T) / 989e12, with
N the parameters that multiply (the tied embedding counted once, as the LM head), L layers,
d hidden size and T the mean example length (each example attends only to itself).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # name -> LlamaConfig fields
    "135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        max_position_embeddings=8192,
    ),
    "1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "tiny": dict(
        vocab_size=4006,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,  # a smoke test on CPU
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    ),
}
PEAK_FLOPS = 989e12  # H100/H200 dense bf16
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(out: Path, words: int = 4000):
    """A word-level tokenizer: one token per word, so example lengths are exact."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "\n", "user", "assistant"])}
    for i in range(words):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return tok


def make_model(out: Path, shape: str, tok) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SHAPES[shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())  # tied: the embedding counted once


def make_data(path: Path, n: int, lo: int, hi: int, words: int = 4000) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            total = rng.randint(lo, hi)
            q = rng.randint(8, total // 2)
            a = total - q - 10  # ChatML wrapping adds ~10 tokens
            chat = [
                {"role": "user", "content": " ".join(f"w{rng.randrange(words)}" for _ in range(q))},
                {"role": "assistant", "content": " ".join(f"w{rng.randrange(words)}" for _ in range(a))},
            ]
            f.write(json.dumps({"messages": chat}) + "\n")


def check_packing(work: Path) -> None:
    """On this GPU: a packed example's logits equal its logits alone (fp32 per-example SDPA path;
    bf16 through the fused varlen kernel when torch has it)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.data.batches import collate
    from tunesmith.testing import make_tiny_model
    from tunesmith.train.loss import _cuda_varlen, use_varlen

    tok = make_tokenizer(work / "tok")
    path = make_tiny_model(work / "tiny", tokenizer=tok)
    rng = random.Random(1)
    examples = [
        {"ids": [rng.randrange(6, 4000) for _ in range(n)], "targets": [1] * n, "index": i}
        for i, n in enumerate((37, 200, 5, 90))
    ]
    batch = collate(examples, packing=True)
    print(f"torch varlen kernel: {_cuda_varlen()}")
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).cuda().eval()
        use_varlen(model)
        with torch.no_grad():
            packed = (
                model(
                    input_ids=batch["input_ids"].cuda(),
                    position_ids=batch["position_ids"].cuda(),
                    cu_seqlens=batch["cu_seqlens"],
                )
                .logits[0]
                .float()
            )
            worst = 0.0
            for e, start in zip(examples, batch["cu_seqlens"]):
                alone = model(input_ids=torch.tensor([e["ids"]]).cuda(), cu_seqlens=None).logits[0].float()
                worst = max(worst, (packed[start : start + len(e["ids"])] - alone).abs().max().item())
        print(
            f"packed vs alone, {str(dtype)[6:]}: max |diff| {worst:.2e} (tolerance {tol:g}) "
            f"{'OK' if worst < tol else 'FAIL'}"
        )
        if worst >= tol:
            sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="135m")
    p.add_argument("--steps", type=int, default=12, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="examples per micro-batch (default by shape)")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--min-len", type=int, default=128)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--json", default="")
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunesmith-gpu-"))
    if args.check:
        return check_packing(work)

    from tunesmith.config import load_config
    from tunesmith.train import train

    batch = args.batch or {"135m": 48, "1b": 16, "tiny": 4}[args.shape]
    tok = make_tokenizer(work / "tok")
    n_params = make_model(work / "model", args.shape, tok)
    steps = args.warmup + args.steps
    make_data(work / "train.jsonl", batch * args.accum * steps, args.min_len, args.max_len)
    cfg = load_config(
        None,
        [
            f"model.name={work / 'model'}",
            "model.dtype=bfloat16",
            f"data.train={work / 'train.jsonl'}",
            "data.heldout_fraction=0",
            f"data.max_len={args.max_len + 16}",
            f"train.output_dir={work / 'run'}",
            "train.method=full",
            f"train.max_steps={steps}",
            f"train.batch_size={batch}",
            f"train.grad_accum={args.accum}",
            "train.lr=1e-4",
            "train.warmup_steps=2",
            "train.train_on_prompt=true",
            "train.save_every=-1",
        ],
    )
    t0 = time.time()
    run = train(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.warmup :]
    tokens = timed[-1]["tokens"] - rows[args.warmup - 1]["tokens"]
    seconds = sum((r["tokens"] - prev["tokens"]) / r["tokens_per_s"] for prev, r in zip(rows[args.warmup - 1 :], timed))
    tps = tokens / seconds
    report = json.loads((run / "data.json").read_text())["train_report"]
    mean_len = report["tokens"] / report["kept"]
    s = SHAPES[args.shape]
    flops_per_token = 6 * n_params + 12 * s["num_hidden_layers"] * s["hidden_size"] * mean_len
    summary = json.loads((run / "summary.json").read_text())
    result = {
        "shape": args.shape,
        "params": n_params,
        "examples_per_step": batch * args.accum,
        "mean_example_tokens": round(mean_len),
        "tokens_per_step": round(tokens / len(timed)),
        "tokens_per_s": round(tps),
        "mfu": round(tps * flops_per_token / PEAK_FLOPS, 4),
        "peak_memory_gb": round(summary["peak_memory_mb"] / 1024, 1),
        "loss_first": rows[0]["loss"],
        "loss_last": rows[-1]["loss"],
        "wall_s": round(time.time() - t0),
    }
    print("RESULT " + json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
