"""Tiny random models for tests and benchmarks: the embedded model's architecture and tokenizer,
2 layers, hidden 64, so a forward pass takes milliseconds.

    from tunesmith.testing import make_tiny_model
    path = make_tiny_model("/tmp/tiny")        # an HF directory any spec-taking verb accepts
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunesmith import rundir

# family -> (config class, model class, what sets it apart from Llama). Small windows (8) and caps
# that bite on a random model's small logits make the features matter in a tiny test.
WINDOW = 8
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        {"head_dim": 128},
    ),  # Qwen 3's own: transformers' GGUF reader assumes it
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": WINDOW}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention"],
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "final_logit_softcapping": 0.5,
            "attn_logit_softcapping": 0.5,
        },
    ),
    # Gemma 3's own pattern (five local layers to one global) and head size: llama.cpp and
    # transformers' GGUF reader assume both
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"sliding_window": WINDOW, "num_hidden_layers": 6, "head_dim": 256, "query_pre_attn_scalar": 256},
    ),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "granite": (
        "GraniteConfig",
        "GraniteForCausalLM",
        {"logits_scaling": 0.25, "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "attention_multiplier": 0.25},
    ),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {"no_rope_layer_interval": 2}),
    "cohere2": (
        "Cohere2Config",
        "Cohere2ForCausalLM",
        {"sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"], "logit_scale": 4.0},
    ),
}


def make_sentencepiece_tokenizer(path: str | Path, tokenizer_class: str = "LlamaTokenizer"):
    """A 300-piece sentencepiece tokenizer (BPE with byte fallback, ChatML's markers as pieces), as
    Gemma and Phi-3 ship one: tokenizer.model beside the transformers files. Returns it loaded."""
    import io
    import json

    import sentencepiece
    from transformers import AutoTokenizer

    from tunesmith.models import CHATML_TEMPLATE

    words = (
        "what did participants say about planning weeknight meals they plan two or three cook nights and "
        "improvise the rest of week a cheaper item in place one answer house style name pantry habit buying "
        "staples bulk swap basket budget nudge household leftover user assistant system"
    ).split()
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(words[i:] + words[:i]) for i in range(len(words))),
        model_writer=model,
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": tokenizer_class,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "chat_template": CHATML_TEMPLATE,
            }
        )
    )
    return AutoTokenizer.from_pretrained(path)


def make_tiny_model(
    path: str | Path,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    tokenizer=None,
    chat_template: bool = True,
    family: str = "llama",
) -> Path:
    """Write a random model of `family` (FAMILIES) with the embedded model's tokenizer into `path`."""
    import torch
    import transformers

    from tunesmith.models import DEFAULT_MODEL, load_tokenizer

    tok = tokenizer if tokenizer is not None else load_tokenizer(DEFAULT_MODEL)
    config_class, model_class, extra = FAMILIES[family]
    settings = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = getattr(transformers, config_class)(**{**settings, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    path = Path(path)
    model.save_pretrained(path)
    saved_template = tok.chat_template
    if not chat_template:
        tok.chat_template = None
    try:
        tok.save_pretrained(path)
    finally:
        tok.chat_template = saved_template
    spm = getattr(tok, "vocab_file", None)  # transformers 5 saves no tokenizer.model; a hub repo has one
    if spm and Path(spm).name == "tokenizer.model" and Path(spm).is_file():
        shutil.copy2(spm, path / "tokenizer.model")
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
    model = get_peft_model(
        model,
        LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    final = Path(run) / rundir.FINAL
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
            f.write(
                json.dumps(
                    {
                        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                        "meta": {"id": f"ex{i}", "group": f"g{i % 8}"},
                    }
                )
                + "\n"
            )
    return path
