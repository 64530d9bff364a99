"""Architecture facts read from a model or its config, in one place: the engine, the exports and the
training loss each need to know whether a model attends over a sliding window, adds sink logits,
soft-caps its scores or rescales its logits, and must all answer the same way.

    from tunesmith import arch
    arch.sliding_window(model.config)    # None, or the window some layers attend over
"""

from __future__ import annotations

from types import SimpleNamespace


def text_config(config):
    """The language model's own config: a multimodal config nests it (`get_text_config`), a text
    model's config is it. Accepts a model, or a config.json read as a dict."""
    if isinstance(config, dict):
        return SimpleNamespace(**(config.get("text_config") or config))
    config = getattr(config, "config", config)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def n_layers(config) -> int:
    return int(text_config(config).num_hidden_layers)


def sliding_window(config) -> int | None:
    """The window of the layers that attend over the last `window` tokens only, or None where every
    layer attends over the whole sequence. Per layer where the config lists `layer_types` (Gemma 2/3,
    Cohere 2, newer Qwen); only when `use_sliding_window` is on where the config has that switch
    (Qwen 2); else every layer, whenever a window is set (Mistral)."""
    cfg = text_config(config)
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        windowed = "sliding_attention" in types
    elif hasattr(cfg, "use_sliding_window"):
        windowed = bool(cfg.use_sliding_window)
    else:
        windowed = bool(window)
    return (window or None) if windowed else None


def attention_chunk(config) -> int | None:
    """The chunk size of chunked local attention (Llama 4), or None."""
    return getattr(text_config(config), "attention_chunk_size", None) or None


def attention_softcap(config) -> float | None:
    """c where attention scores become c · tanh(scores / c) before the softmax (Gemma 2), or None."""
    return getattr(text_config(config), "attn_logit_softcapping", None) or None


def final_softcap(config) -> float | None:
    """c where the logits become c · tanh(logits / c) (Gemma 2), or None."""
    return getattr(text_config(config), "final_logit_softcapping", None) or None


# config key -> the factor the model's forward multiplies lm_head's output by.
# Cohere: logits * logit_scale; Granite: logits / logits_scaling.
LOGIT_SCALES = {"logit_scale": lambda x: x, "logits_scaling": lambda x: 1.0 / x}
# config keys that rescale the logits in a way no factor above describes
OTHER_LOGIT_SCALES = ("output_multiplier",)


def logit_scales(config) -> dict[str, float]:
    """The logit scalings the config sets to something other than 1, as factors by config key."""
    cfg = text_config(config)
    return {
        key: to_factor(getattr(cfg, key))
        for key, to_factor in LOGIT_SCALES.items()
        if getattr(cfg, key, None) not in (None, 1, 1.0)
    }


def other_logit_scales(config) -> list[str]:
    """The config keys of OTHER_LOGIT_SCALES set to something other than 1."""
    cfg = text_config(config)
    return [key for key in OTHER_LOGIT_SCALES if getattr(cfg, key, None) not in (None, 1, 1.0)]


def has_sinks(model) -> bool:
    """Whether some attention adds learned sink logits to its softmax (gpt-oss)."""
    return any(hasattr(m, "sinks") for m in model.modules())


def plain_attention(model) -> bool:
    """Whether the model's attention is softmax(q·k·scale + mask)·v and nothing more: no score
    soft-capping, no sink logits."""
    return not attention_softcap(model.config) and not has_sinks(model)
