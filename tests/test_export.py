"""Exports of a LoRA run on the tiny model: each format written, loaded back by its consumer's own
loader (peft, plain transformers, transformers' GGUF reader), and compared on logits."""

import json
import re

import pytest
import torch

from tunesmith import UserError
from tunesmith.export import GGUF_TOLERANCE, PROBE, VerificationError, chat_wrapper, export, modelfile, probe_ids
from tunesmith.models import render


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir, tokenizer):
    """RUN/final as the trainer writes it: a peft LoRA whose B matrices are not zero, plus the tokenizer."""
    from tunesmith.testing import make_tiny_lora_run

    return make_tiny_lora_run(tmp_path_factory.mktemp("export") / "pantry-run", tiny_model_dir, tokenizer)


@pytest.fixture(scope="module")
def reference(run_dir, tiny_model_dir, tokenizer):
    """(base logits, base + adapter logits) on the probe, computed with peft directly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = probe_ids(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, run_dir / "final").eval()
        tuned_logits = tuned(input_ids=ids).logits
    # The adapter really changes the model, or the comparisons below would prove nothing.
    assert (tuned_logits - base_logits).abs().max() > 1e-2
    return base_logits, tuned_logits


def test_adapter_export_is_peft_format_and_loads_on_its_base(run_dir, reference, tiny_model_dir, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.models import resolve

    out = export(run_dir, "adapter")
    assert out == run_dir / "export-adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "export.json"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    report = json.loads((out / "export.json").read_text())
    assert (
        report["verify"]["max_abs_logit_diff_vs_run"] <= 1e-6
        and report["verify"]["adapter_effect_max_abs_logit"] > 1e-2
    )

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, out).eval()(input_ids=probe_ids(tokenizer)).logits
    assert torch.allclose(got, reference[1], atol=1e-6, rtol=0)
    assert resolve(out).kind == "adapter"


def test_merged_export_equals_base_plus_adapter(run_dir, reference, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = export(run_dir, "merged")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not any(n.startswith("adapter") for n in names)  # a plain model: no peft needed to load it

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(input_ids=probe_ids(tokenizer)).logits
    base_logits, want = reference
    assert (got - want).abs().max() <= 1e-5
    assert (got - base_logits).abs().max() > 1e-2
    report = json.loads((out / "export.json").read_text())
    assert (
        report["verify"]["max_abs_logit_diff_vs_base_plus_adapter"] <= 1e-5 and report["verify"]["saved_tensors_equal"]
    )

    tok = AutoTokenizer.from_pretrained(out)
    assert render(tok, PROBE) == render(tokenizer, PROBE)  # the chat template travelled with the weights
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


def test_a_wrong_merge_fails_verification(run_dir, monkeypatch, tmp_path):
    from peft.tuners.tuners_utils import BaseTuner

    # unload() drops the adapter instead of merging it: the merged model is then just the base.
    monkeypatch.setattr(BaseTuner, "merge_and_unload", lambda self, *a, **k: self.unload())
    with pytest.raises(VerificationError, match="away from base \\+ adapter"):
        export(run_dir, "merged", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written is left behind


def check_gguf(run_dir, tokenizer, quant):
    out = export(run_dir, "gguf", quant=quant)
    report = json.loads((out / "export.json").read_text())
    gguf = out / f"pantry-run-{quant}.gguf"
    assert report["gguf"] == gguf.name and gguf.stat().st_size > 1_000_000
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert not (out / ".merged").exists()
    v = report["verify"]
    assert v["relative_diff"] <= GGUF_TOLERANCE[quant] == v["tolerance_relative"]
    assert report["merged_verify"]["max_abs_logit_diff_vs_base_plus_adapter"] <= 1e-5

    text = (out / "Modelfile").read_text()
    assert f"FROM ./{gguf.name}\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    return out, v


def test_gguf_f16_export_loads_back_within_tolerance(run_dir, tokenizer):
    out, v = check_gguf(run_dir, tokenizer, "f16")
    assert v["top1_agreement"] >= 0.95
    # The fine-tune survived conversion: the GGUF sits far closer to the merged model than to the base.
    effect = json.loads((out / "export.json").read_text())["merged_verify"]["adapter_effect_max_abs_logit"]
    assert v["max_abs_logit_diff_vs_merged"] < effect / 20


@pytest.mark.slow
def test_gguf_q8_0_export_loads_back_within_tolerance(run_dir, tokenizer):
    _, v = check_gguf(run_dir, tokenizer, "q8_0")
    # 8-bit weights do move logits: the error is real, and bounded.
    assert 1e-4 < v["relative_diff"] <= GGUF_TOLERANCE["q8_0"]


@pytest.mark.slow
def test_gguf_verification_fails_on_a_tolerance_it_cannot_meet(run_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(GGUF_TOLERANCE, "f16", 1e-9)  # f16 rounding alone is far above this
    with pytest.raises(VerificationError, match="f16 limit"):
        export(run_dir, "gguf", quant="f16", out=tmp_path / "gguf")


# ------------------------------------------------------------------------------- Modelfile


def go_template(template: str, messages: list[dict]) -> str:
    """Execute the only Go-template shape modelfile() writes: head{{ range .Messages }}…{{ end }}tail."""
    head, body, tail = re.fullmatch(r"(.*)\{\{ range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template, re.S).groups()
    return (
        head
        + "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"]) for m in messages)
        + tail
    )


CONVERSATION = [
    {"role": "system", "content": "Use the house style."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Summarise S03."},
]


def test_modelfile_template_renders_what_the_chat_template_renders(tokenizer):
    text = modelfile(tokenizer, "m.gguf")
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    assert go_template(template, CONVERSATION) == render(tokenizer, CONVERSATION)
    # Without a system message Ollama puts the Modelfile's SYSTEM first: same text as the HF template's default.
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S).group(1)
    assert go_template(template, [{"role": "system", "content": system}] + CONVERSATION[1:]) == render(
        tokenizer, CONVERSATION[1:]
    )


def test_chat_wrapper_reads_llama3_style_templates_and_refuses_odd_ones(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    assert chat_wrapper(tok) == ("", "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", "")
    text = modelfile(tok, "m.gguf")
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    assert tok.bos_token + go_template(template, CONVERSATION) == render(tok, CONVERSATION)  # llama.cpp adds BOS
    assert 'PARAMETER stop "<|eot_id|>"' in text

    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    assert chat_wrapper(tok) is None
    assert "TEMPLATE" not in modelfile(tok, "m.gguf")


# ------------------------------------------------------------------------------ errors, CLI


def test_user_errors_name_the_fix(run_dir, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="--format merged"):
        export(tiny_model_dir, "adapter", out=tmp_path / "a")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a tunesmith export"):
        export(run_dir, "adapter", out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="q8_0"):
        export(run_dir, "gguf", quant="q4_k", out=tmp_path / "g")


def test_cli_export_prints_what_it_verified(run_dir, tmp_path, capsys):
    from tunesmith.cli import main

    assert main(["export", str(run_dir), "--format", "adapter", "-o", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "verified: peft loads the copy" in printed and "adapter_model.safetensors" in printed
    assert main(["export", str(run_dir), "--format", "adapter", "-o", str(tmp_path / "cli")]) == 0  # replaces its own
