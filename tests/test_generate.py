"""Batched and streamed generation on a tiny model; the CLI verbs that use them."""

import io
import json
import sys

import pytest
import torch

from tunesmith.cli import main
from tunesmith.generation.api import encode_prompts, generate, stream
from tunesmith.generation.stopping import newline_ids, repeat_start


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
    for out, s in zip(batched, single):
        assert 0 < out.completion_tokens <= 12 and out.latency_s > 0
        assert (out.finish_reason, out.completion_tokens) == (s.finish_reason, s.completion_tokens)
        assert (out.finish_reason == "length") == (out.completion_tokens == 12)  # a short reply stopped for a reason


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


def test_generate_cli_reads_stdin_and_prints_json(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is a persona?"))
    assert main(["generate", str(tiny_model_dir), "--json", "--max-new-tokens", "5"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["completion_tokens"] <= 5 and out["prompt_tokens"] > 5


def test_cli_user_error_exits_2_without_traceback(capsys):
    assert main(["generate", "no-such-model", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'no-such-model'") and "Traceback" not in err


def test_chat_session_through_stdin(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/reset\n/system be brief\nagain\n/exit\n"))
    assert main(["chat", str(tiny_model_dir), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2
    assert "(conversation cleared)" in out and "(system prompt set" in out


NL = 10  # a stand-in newline id for the pure tests


def test_repeat_start_finds_a_repeated_line_and_keeps_its_first_copy():
    line = [1, 2, 3, 4, 5, NL]
    new = line + [7, NL] + line
    assert repeat_start(new, {NL}) == 8  # the second copy starts at 8; everything before stays
    assert repeat_start(new[:-1], {NL}) is None  # the line has not ended yet
    short = [1, 2, 3, NL]  # under five tokens: a short line may well repeat ("- yes")
    assert repeat_start(short + short, {NL}) is None


def test_repeat_start_finds_a_periodic_tail():
    unit = [21, 22, 23, 24, 25, 26]
    assert repeat_start([9, 9] + unit * 3, {NL}) == 8  # three copies: keep the first
    assert repeat_start([9, 9] + unit * 5, {NL}) == 8  # however many there were
    assert repeat_start([9, 9] + unit * 2, {NL}) is None
    assert repeat_start([30] * 15, {NL}) is None  # a one-token unit must cover 16 tokens
    assert repeat_start([31] + [30] * 16, {NL}) == 2
    assert repeat_start(list(range(40, 100)), {NL}) is None


def _force_cycle(model, cycle):
    """Make the model's next token a function of its last one: cycle[i] -> cycle[i + 1]."""
    nxt = torch.full((model.config.vocab_size,), cycle[0])
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        nxt[a] = b

    def hook(module, args, kwargs, output):  # at every position with logits, as a model would
        ids = kwargs["input_ids"][:, -output.logits.shape[1] :]
        logits = torch.full_like(output.logits, -1e4)
        logits.scatter_(-1, nxt[ids][..., None], 0.0)
        output.logits[:] = logits
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def test_a_looping_reply_stops_at_the_repeat_and_loses_it(tiny_model):
    model, tok = tiny_model
    newline = min(newline_ids(tok))
    words = tok(" alpha beta gamma delta epsilon", add_special_tokens=False)["input_ids"]
    cycle = words + [newline]
    handle = _force_cycle(model, cycle)
    try:
        guarded = generate(model, tok, [conv("hi")], max_new_tokens=40)[0]
        unguarded = generate(model, tok, [conv("hi")], max_new_tokens=40, stop_on_repeat=False)[0]
        streamed_usage = {}
        streamed = "".join(stream(model, tok, conv("hi"), max_new_tokens=40, usage=streamed_usage))
        assert guarded.text.startswith(streamed.strip()[:10])  # the same reply, streamed
    finally:
        handle.remove()
    assert unguarded.finish_reason == "length" and unguarded.completion_tokens == 40
    assert guarded.finish_reason == "repeat"
    assert unguarded.text.startswith(guarded.text) and len(guarded.text) < len(unguarded.text)
    assert guarded.text.count(tok.decode(words[-1:]).strip()) == 1  # the repeat is gone
    assert guarded.completion_tokens < 3 * len(cycle)  # stopped at the second copy, not at 40
    assert (
        streamed_usage["finish_reason"] == "repeat" and streamed_usage["completion_tokens"] == guarded.completion_tokens
    )


def test_cli_rejects_a_reply_length_below_one(capsys):
    for value, message in (("0", "must be at least 1, got 0"), ("many", "expected a whole number, got 'many'")):
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "--prompt", "hi", "--max-new-tokens", value])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "Traceback" not in err
