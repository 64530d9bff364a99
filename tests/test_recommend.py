"""`tunesmith models --recommend`: the shapes table is true to a real model, and the estimates scale
from the measurement the way the docs say."""

import pytest

from tunesmith import recommend

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
MEASURED = {"device": "cpu", "train_tokens_per_s": 200.0, "decode_tokens_per_s": 20.0}


def test_the_shapes_table_counts_the_embedded_models_parameters(tokenizer):
    from tunesmith.data.check import count_params

    # the embedded model is SmolLM2-135M-Instruct: its real config and our table must agree
    assert recommend.count(recommend.shape_config(BASE))["params"] == count_params("smollm2-135m-instruct")


def test_every_model_builds_and_sizes_run_from_135m_to_8b():
    sizes = {name: recommend.count(recommend.shape_config(name))["params"] for name in recommend.MODELS}
    assert 130e6 < sizes[BASE] < 140e6
    assert 7.9e9 < sizes["meta-llama/Llama-3.1-8B-Instruct"] < 8.1e9
    assert 7.5e9 < sizes["Qwen/Qwen2.5-7B-Instruct"] < 7.7e9  # Qwen2's q/k/v biases counted


def test_estimates_scale_from_the_measurement():
    rows = {r["model"]: r for r in recommend.recommend(MEASURED, here_bytes=1e15)}
    base, big = rows[BASE], rows["meta-llama/Llama-3.1-8B-Instruct"]
    assert base["train_s_per_million_tokens_here"] == pytest.approx(1e6 / 200.0)  # the anchor is the measurement
    assert base["decode_tokens_per_s_here"] == pytest.approx(20.0)
    # decoding reads every weight once per token: speed falls with the parameter count
    assert big["decode_tokens_per_s_here"] == pytest.approx(20.0 * base["params"] / big["params"])
    assert big["train_s_per_million_tokens_here"] > 40 * base["train_s_per_million_tokens_here"]
    # bf16 on the GPU: weights take half the bytes they take in fp32 here
    assert big["generate_bytes_reference"] < 0.6 * big["generate_bytes_here"]
    assert all(r["fits_here"] for r in rows.values())


def test_fits_here_follows_the_memory_here():
    rows = recommend.recommend(MEASURED, here_bytes=8e9)
    fits = {r["model"]: r["fits_here"] for r in rows}
    assert fits[BASE] and not fits["meta-llama/Llama-3.1-8B-Instruct"]
    assert all(r["train_bytes_here"] <= 8e9 for r in rows if r["fits_here"])
    assert all(r["train_bytes_here"] > 8e9 for r in rows if not r["fits_here"])


def test_the_table_names_every_model_and_what_fits():
    rows = recommend.recommend(MEASURED, here_bytes=8e9)
    text = recommend.format_table(rows, MEASURED, "RAM available", 8e9)
    assert all(name in text for name in recommend.MODELS)
    assert "train + generate" in text and "no" in text.split()


def test_the_measurement_runs_the_probe_and_the_decoder(tiny_model_dir):
    # the anchor every row scales from: a real training probe and a real decode on a (tiny) model
    m = recommend.measure(str(tiny_model_dir))
    assert m["device"] == "cpu" and m["train_tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0
