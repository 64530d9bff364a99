"""Batched and streamed generation on a tiny model; the CLI verbs that use them."""

import json
import subprocess
import sys

import torch

from tunesmith.generate import encode_prompts, generate, stream


def conv(text):
    return [{"role": "user", "content": text}]


def test_batched_equals_one_by_one(tiny_model):
    model, tok = tiny_model
    convs = [conv("hi"), conv("a much longer question about personas and journeys"), conv("ok then")]
    batched = generate(model, tok, convs, max_new_tokens=12, batch_size=3)
    single = [generate(model, tok, [c], max_new_tokens=12, batch_size=1)[0] for c in convs]
    assert [b.text for b in batched] == [s.text for s in single]  # left padding changes nothing
    for out, c in zip(batched, convs):
        assert out.prompt_tokens == len(encode_prompts(tok, [c])[0])
        assert 0 < out.completion_tokens <= 12 and out.latency_s > 0
        assert out.finish_reason in ("stop", "length")


def test_stops_at_eos(tiny_model):
    model, tok = tiny_model
    # make EOS the most likely next token everywhere: generation must stop after 0 tokens
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 1e4
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        out = generate(model, tok, [conv("hi")], max_new_tokens=10)[0]
    finally:
        handle.remove()
    assert out.completion_tokens == 0 and out.finish_reason == "stop" and out.text == ""


def test_stream_matches_batched_text(tiny_model):
    model, tok = tiny_model
    pieces = list(stream(model, tok, conv("tell me about baskets"), max_new_tokens=10))
    whole = generate(model, tok, [conv("tell me about baskets")], max_new_tokens=10)[0]
    assert "".join(pieces).strip() == whole.text


def test_generate_cli_reads_stdin_and_prints_json(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "tunesmith.cli", "generate", str(tiny_model_dir), "--json",
                           "--max-new-tokens", "5"], input="What is a persona?", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["completion_tokens"] <= 5 and out["prompt_tokens"] > 5


def test_cli_user_error_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "tunesmith.cli", "generate", "no-such-model", "--prompt", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model 'no-such-model'") and "Traceback" not in proc.stderr


def test_chat_session_through_stdin(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "tunesmith.cli", "chat", str(tiny_model_dir), "--max-new-tokens", "4"],
                          input="hello\n/reset\n/system be brief\nagain\n/exit\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2
    assert "(conversation cleared)" in proc.stdout and "(system prompt set" in proc.stdout
