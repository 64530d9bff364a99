"""Which model for which machine: memory and time of LoRA training and generation, here and on a
reference GPU, for popular instruction models from 135M to 8B parameters.

    tunesmith models --recommend
    tunesmith models --recommend --json

Nothing is downloaded: each model is described by its architecture's shapes (`MODELS`, from the
models' published config.json), and transformers builds it on the meta device to count parameters.
Time here comes from one measurement: the speed probe of `tunesmith check` (the trainer's own step on
packed rows) and a few timed decode steps, both on the embedded model, then scaled by training FLOPs per
token (`FLOPS_PER_PARAM_TOKEN`·N plus attention) and, for decoding, which reads every weight once per
token, by weight bytes. The reference GPU's figures are its peak throughput at the same utilisation
`tunesmith check` assumes, and its memory bandwidth for decoding. docs/train.md has the table and the
check against a measured run of a second model size.
"""

from __future__ import annotations

import json
import os

# hub id -> (transformers model_type, layers, hidden, intermediate, heads, kv heads, vocab, tied embeddings).
# Phi-3.5 and Mistral are counted as Llama-shaped: the same matrices (Phi fuses q, k, v into one).
MODELS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llama", 30, 576, 1536, 9, 3, 49152, True),
    "HuggingFaceTB/SmolLM2-360M-Instruct": ("llama", 32, 960, 2560, 15, 5, 49152, True),
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2", 24, 896, 4864, 14, 2, 151936, True),
    "meta-llama/Llama-3.2-1B-Instruct": ("llama", 16, 2048, 8192, 32, 8, 128256, True),
    "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2", 28, 1536, 8960, 12, 2, 151936, True),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": ("llama", 24, 2048, 8192, 32, 32, 49152, True),
    "Qwen/Qwen2.5-3B-Instruct": ("qwen2", 36, 2048, 11008, 16, 2, 151936, True),
    "meta-llama/Llama-3.2-3B-Instruct": ("llama", 28, 3072, 8192, 24, 8, 128256, True),
    "microsoft/Phi-3.5-mini-instruct": ("llama", 32, 3072, 8192, 32, 32, 32064, False),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2", 28, 3584, 18944, 28, 4, 152064, False),
    "mistralai/Mistral-7B-Instruct-v0.3": ("llama", 32, 4096, 14336, 32, 8, 32768, False),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama", 32, 4096, 14336, 32, 8, 128256, False),
}
# The reference GPU's memory: capacity and bandwidth (decoding reads every weight once per token, so
# its speed is bandwidth over weight bytes), at the share of peak a decode loop reaches.
REFERENCE_MEMORY = {"bytes": 80e9, "bandwidth": 3.35e12, "efficiency": 0.6}
WORKLOAD = {"row": 1024, "batch": 4, "lora_r": 16, "context": 2048}  # a training step and a reply's context
# Activations kept for the backward pass per token, per layer, in units of `hidden` values (the
# attention and MLP inputs and intermediates of a pre-norm block, with a fused attention kernel).
ACTIVATION_VALUES_PER_HIDDEN = 17


def shape_config(name: str):
    """A transformers config with the model's shapes (no download)."""
    from transformers import AutoConfig

    kind, layers, hidden, inter, heads, kv, vocab, tied = MODELS[name]
    return AutoConfig.for_model(
        kind,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tied,
    )


def count(config) -> dict:
    """Parameters of a config's model (meta device: no memory) and of its LoRA adapters on every linear."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    lora = sum(
        WORKLOAD["lora_r"] * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    )
    return {"params": params, "lora_params": lora}


def train_flops_per_token(config, params: int) -> float:
    """LoRA training FLOPs per token: 4·N for the weights (no weight gradients for frozen weights), and
    attention over the row's earlier tokens: 2·2·layers·hidden·row/2 forward, twice that backward."""
    from tunesmith.data.check import FLOPS_PER_PARAM_TOKEN

    attention = 3 * 2 * config.num_hidden_layers * config.hidden_size * WORKLOAD["row"]
    return FLOPS_PER_PARAM_TOKEN["lora"] * params + attention


def memory(config, sizes: dict, weight_bytes: int) -> dict:
    """Bytes for LoRA training (weights, adapters with their gradients and AdamW moments in fp32,
    activations of one micro-batch) and for generation (weights and the KV cache of one context)."""
    activations = (
        (WORKLOAD["row"] * WORKLOAD["batch"] * config.num_hidden_layers * config.hidden_size)
        * ACTIVATION_VALUES_PER_HIDDEN
        * weight_bytes
    )
    head_dim = config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * WORKLOAD["context"] * weight_bytes
    weights = sizes["params"] * weight_bytes
    return {"train": weights + sizes["lora_params"] * 16 + activations, "generate": weights + kv}


# ------------------------------------------------------------------------------------- measure


def measure(spec: str | None = None) -> dict:
    """A model here (the embedded one by default, the anchor every estimate scales from): training
    tokens/s from check's probe (rows of WORKLOAD['row']), and single-stream decode tokens/s."""
    from tunesmith.models import DEFAULT_MODEL, load
    from tunesmith.train.probe import probe

    spec = spec or DEFAULT_MODEL
    model, tok = load(spec, device="cpu")
    examples = [
        {
            "messages": [
                {"role": "user", "content": f"Summarise note {i}: the pantry shelf ran out of rice twice this week."},
                {"role": "assistant", "content": "Staples run out mid-week; shoppers plan around one big trip."},
            ]
        }
        for i in range(16)
    ]
    trained = probe(spec, tok, examples, WORKLOAD["row"], "lora")
    return {"device": trained["device"], "train_tokens_per_s": trained["tokens_per_s"], **decode_rate(model, tok)}


def decode_rate(model, tok, new_tokens: int = 32) -> dict:
    """Single-stream decoding through tunesmith's own engine (what chat and serve run): tokens per second
    of one reply, after a first reply that warms it up."""
    from tunesmith.generation.api import generate

    prompt = [[{"role": "user", "content": "Describe a persona in one paragraph."}]]
    generate(model, tok, prompt, max_new_tokens=4, stop_on_repeat=False)
    out = generate(model, tok, prompt, max_new_tokens=new_tokens, stop_on_repeat=False)[0]
    return {"decode_tokens_per_s": round(out.completion_tokens / out.latency_s, 1)}


def machine_memory() -> tuple[str, float]:
    """(what, bytes) a model must fit in here: free GPU memory, else the RAM available."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return torch.cuda.get_device_name(), float(free)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return "RAM available", float(info["MemAvailable"])
    except (OSError, KeyError, ValueError):
        return "RAM", float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


# ---------------------------------------------------------------------------------------- table


def recommend(measured: dict, here_bytes: float, on_gpu: bool = False) -> list[dict]:
    """One row per model: its sizes, memory and time here and on the reference GPU."""
    from tunesmith.data.check import REFERENCE_GPU

    base = shape_config("HuggingFaceTB/SmolLM2-135M-Instruct")
    base_sizes = count(base)
    base_flops = train_flops_per_token(base, base_sizes["params"])
    here_bytes_per_weight = 2 if on_gpu else 4  # bf16 on a GPU, fp32 on a CPU (as training picks)
    rows = []
    for name in MODELS:
        config = shape_config(name)
        sizes = count(config)
        flops = train_flops_per_token(config, sizes["params"])
        here = memory(config, sizes, here_bytes_per_weight)
        gpu = memory(config, sizes, 2)
        train_here = measured["train_tokens_per_s"] * base_flops / flops
        decode_here = measured["decode_tokens_per_s"] * base_sizes["params"] / sizes["params"]
        ref_train = REFERENCE_GPU["peak_flops"] * REFERENCE_GPU["mfu"] / flops
        ref_decode = REFERENCE_MEMORY["bandwidth"] * REFERENCE_MEMORY["efficiency"] / (sizes["params"] * 2)
        rows.append(
            {
                "model": name,
                "params": sizes["params"],
                "train_bytes_here": here["train"],
                "generate_bytes_here": here["generate"],
                "fits_here": here["train"] <= here_bytes,
                "generates_here": here["generate"] <= here_bytes,
                "train_s_per_million_tokens_here": 1e6 / train_here,
                "decode_tokens_per_s_here": decode_here,
                "train_bytes_reference": gpu["train"],
                "generate_bytes_reference": gpu["generate"],
                "train_s_per_million_tokens_reference": 1e6 / ref_train,
                "decode_tokens_per_s_reference": ref_decode,
            }
        )
    return rows


def format_table(rows: list[dict], measured: dict, where: str, here_bytes: float) -> str:
    from tunesmith.data.check import REFERENCE_GPU

    ref = REFERENCE_GPU["name"]
    head = (
        f"{'model':38} {'params':>7}  {'LoRA mem':>9} {'1M tok':>8} {'gen tok/s':>9}  "
        f"{ref + ' mem':>12} {'1M tok':>7} {'gen tok/s':>9}  fits here"
    )
    lines = [
        f"LoRA r={WORKLOAD['lora_r']}, {WORKLOAD['batch']} rows of {WORKLOAD['row']} tokens per step; replies in a "
        f"{WORKLOAD['context']}-token context, one stream",
        f"here: {measured['device']}, {where} {_bytes(here_bytes)}; measured on the embedded model: "
        f"{measured['train_tokens_per_s']:.0f} training tokens/s, {measured['decode_tokens_per_s']:.1f} decode "
        f"tokens/s",
        "",
        head,
        "-" * len(head),
    ]
    for r in rows:
        fits = "train + generate" if r["fits_here"] else ("generate only" if r["generates_here"] else "no")
        lines.append(
            f"{r['model']:38} {_count(r['params']):>7}  {_bytes(r['train_bytes_here']):>9} "
            f"{_duration(r['train_s_per_million_tokens_here']):>8} {_rate(r['decode_tokens_per_s_here']):>9}  "
            f"{_bytes(r['train_bytes_reference']):>12} {_duration(r['train_s_per_million_tokens_reference']):>7} "
            f"{r['decode_tokens_per_s_reference']:>9.0f}  {fits}"
        )
    lines.append(
        f"\n1M tok: LoRA training time per million tokens. {ref}: {REFERENCE_GPU['mfu']:.0%} of "
        f"{REFERENCE_GPU['peak_flops'] / 1e12:.0f} TFLOP/s, decoding at {REFERENCE_MEMORY['efficiency']:.0%} of "
        f"{REFERENCE_MEMORY['bandwidth'] / 1e12:.2f} TB/s. A hub id downloads on first use: "
        f"tunesmith train config.yaml model.name=ORG/NAME"
    )
    return "\n".join(lines)


def _bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 48 * 3600 else f"{s / 86400:.0f} d"


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def cli_recommend(args) -> int:
    """tunesmith models --recommend [--json]"""
    import torch

    measured = measure()
    where, here_bytes = machine_memory()
    rows = recommend(measured, here_bytes, on_gpu=torch.cuda.is_available())
    if getattr(args, "json", False):
        print(json.dumps({"measured": measured, "memory_here": here_bytes, "models": rows}, indent=2))
    else:
        print(format_table(rows, measured, where, here_bytes))
    return 0
