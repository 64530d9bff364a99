"""Tiny random models for tests and benchmarks: the embedded model's architecture and tokenizer,
2 layers, hidden 64, so a forward pass takes milliseconds.

    from tunesmith.testing import make_tiny_model
    path = make_tiny_model("/tmp/tiny")        # an HF directory any spec-taking verb accepts
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_model(path: str | Path, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                    seed: int = 0, tokenizer=None, chat_template: bool = True) -> Path:
    """Write a random Llama model with the embedded model's tokenizer into `path` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunesmith.models import DEFAULT_MODEL, load_tokenizer

    tok = tokenizer if tokenizer is not None else load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path = Path(path)
    model.save_pretrained(path)
    saved_template = tok.chat_template
    if not chat_template:
        tok.chat_template = None
    try:
        tok.save_pretrained(path)
    finally:
        tok.chat_template = saved_template
    return path


def make_tiny_lora_run(run: str | Path, base_dir: str | Path, tokenizer, r: int = 4, seed: int = 0) -> Path:
    """Write RUN/final as the trainer does for LoRA: a peft adapter on `base_dir` (its B matrices random,
    not zero, so it changes the logits) plus the tokenizer. Returns RUN."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    final = Path(run) / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    cfg = json.loads((final / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (final / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return Path(run)


WORDS = "pantry basket planner budget ceiling swap nudge cook night weekly plan household leftover loop signal".split()


def make_chats(path, n: int = 40, seed: int = 0):
    """Chat JSONL at `path` with a spread of lengths, groups for the held-out split, and ids."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 25)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                "meta": {"id": f"ex{i}", "group": f"g{i % 8}"}}) + "\n")
    return path
