"""tunesmith.arch: one answer per architecture fact, for the engine, the exports and the loss alike."""

from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

from tunesmith import arch


def test_sliding_window_reads_each_familys_switch():
    # Qwen 2 keeps a window size in its config.json even where use_sliding_window turns it off
    assert arch.sliding_window({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}) is None
    assert arch.sliding_window({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": True}) == 4096
    qwen = Qwen2Config(num_hidden_layers=2, sliding_window=64, use_sliding_window=True, max_window_layers=1)
    assert arch.sliding_window(qwen) == 64  # per layer: layer_types lists one sliding layer
    assert arch.sliding_window(Gemma2Config(sliding_window=32)) == 32
    assert arch.sliding_window(MistralConfig(sliding_window=16)) == 16  # Mistral: every layer, when set
    assert arch.sliding_window(MistralConfig(sliding_window=None)) is None
    assert arch.sliding_window(LlamaConfig()) is None
    # a multimodal config.json nests the language model's settings
    assert arch.sliding_window({"model_type": "x", "text_config": {"sliding_window": 8}}) == 8


def test_logit_scales_and_softcaps_by_config_key():
    assert arch.logit_scales({"logits_scaling": 4.0, "logit_scale": 1.0}) == {"logits_scaling": 0.25}
    assert arch.logit_scales({"logit_scale": 0.5}) == {"logit_scale": 0.5}
    assert arch.final_softcap(Gemma2Config(final_logit_softcapping=30.0)) == 30.0
    assert arch.attention_softcap(Gemma2Config(attn_logit_softcapping=50.0)) == 50.0
    assert arch.attention_softcap(LlamaConfig()) is None
    assert arch.other_logit_scales({"output_multiplier": 2.0}) == ["output_multiplier"]


def test_plain_attention_is_false_for_softcaps(tiny_model):
    model, _ = tiny_model
    assert arch.plain_attention(model) and not arch.has_sinks(model)
    model.config.attn_logit_softcapping = 50.0
    try:
        assert not arch.plain_attention(model)
    finally:
        model.config.attn_logit_softcapping = None
