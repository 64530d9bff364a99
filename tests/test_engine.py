"""The engine against transformers' own `generate`, one prompt at a time: greedy replies equal token
for token, with prompts of mixed lengths, rows finishing at different steps, newcomers joining a
running batch, chunked prefill and a shared prefix. Then cancelling, sampling and the serving thread."""

import contextlib
import threading
from pathlib import Path

import pytest
import torch

from tunesmith.generation.api import encode_prompts
from tunesmith.generation.draft import PromptLookup
from tunesmith.generation.engine import Engine, EngineConfig, Request
from tunesmith.generation.stopping import stop_ids

STYLE = (Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "examples" / "pantry" / "style.md").read_text()
QUESTIONS = [
    "hi",
    "What is a cook night, and why do households plan one?",
    "ok then",
    "Summarise why households drift from their weekly plan in two sentences.",
    "why?",
]


def conversations():
    """Mixed lengths; three share a long system prompt (the style guide), two have none."""
    return [[{"role": "system", "content": STYLE}, {"role": "user", "content": q}] for q in QUESTIONS[:3]] + [
        [{"role": "user", "content": q}] for q in QUESTIONS[3:]
    ]


def alone(model, tok, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' generate for this prompt alone, greedy: the new ids, up to and with the stop id."""
    out = model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stop_ids(tok),
        pad_token_id=tok.pad_token_id,
    )
    new = out[0, len(prompt) :].tolist()
    stop = next((j for j, t in enumerate(new) if t in stop_ids(tok)), None)
    return new if stop is None else new[: stop + 1]


@pytest.fixture(scope="module")
def lively(tiny_model_dir):
    """The tiny model with its weights scaled x4, so that greedy replies vary token to token."""
    from test_serve import lively_copy

    return lively_copy(tiny_model_dir)


def check_exact(model, tok, lengths: list[int], max_rows: int, prefill_tokens: int, shared_attention: int = 256):
    prompts = encode_prompts(tok, conversations())
    config = EngineConfig(
        max_rows=max_rows, prefill_tokens=prefill_tokens, min_prefix=32, shared_attention=shared_attention
    )
    engine = Engine(model, tok, config)
    reqs = engine.run([Request(p, max_new_tokens=n, stop_on_repeat=False) for p, n in zip(prompts, lengths)])
    for req, prompt, n in zip(reqs, prompts, lengths):
        assert req.tokens == alone(model, tok, prompt, n), f"prompt of {len(prompt)} tokens"
        assert req.finish_reason in ("stop", "length") and req.spent == req.kept <= n
    shared = min(len(p) for p in prompts[:3]) // 2
    assert engine.stats["reused_tokens"] >= 2 * shared  # the style guide was prefilled once, not three times
    assert engine.stats["prefill_tokens"] == sum(map(len, prompts)) - engine.stats["reused_tokens"]
    assert engine.rows == [] and engine.kv.rows == 0
    # the style guide stayed out of the rows that share it, and decode read it once per step for them
    assert engine.stats["shared_rows"] == (3 if shared_attention else 0)
    return reqs


@pytest.mark.parametrize("shared_attention", [256, 0], ids=["prefix-read-once", "prefix-in-every-row"])
def test_greedy_replies_equal_generate_alone(lively, shared_attention):
    model, tok = lively
    # 5 prompts, 2 rows: three newcomers join a running batch; 7-token chunks split every prompt;
    # each reply has its own length, so rows leave at different steps
    reqs = check_exact(
        model, tok, lengths=[9, 3, 14, 6, 11], max_rows=2, prefill_tokens=7, shared_attention=shared_attention
    )
    assert len({len(r.tokens) for r in reqs}) >= 4


def test_a_row_that_ends_at_eos_leaves_while_others_run(lively):
    model, tok = lively
    prompts = encode_prompts(tok, conversations())
    eos = tok.eos_token_id
    # EOS wins wherever the previous token was the third prompt's first reply token: that row stops there
    first = alone(model, tok, prompts[2], 1)[0]
    bias = torch.zeros(len(tok))
    bias[eos] = 1e4

    def hook(module, args, out):
        ids = hook.ids
        # the logits after each input token the model keeps them for (prefill: its last; decode: every one)
        return out + (ids[:, -out.shape[1] :, None] == first).float() * bias if ids is not None else out

    hook.ids = None
    pre = model.model.register_forward_pre_hook(
        lambda m, a, kw: setattr(hook, "ids", kw.get("input_ids")), with_kwargs=True
    )
    post = model.lm_head.register_forward_hook(hook)
    try:
        engine = Engine(model, tok, EngineConfig(max_rows=3))
        reqs = engine.run([Request(p, max_new_tokens=8, stop_on_repeat=False) for p in prompts])
        for req, prompt in zip(reqs, prompts):
            assert req.tokens == alone(model, tok, prompt, 8)
    finally:
        pre.remove()
        post.remove()
    assert reqs[2].tokens == [first, eos] and reqs[2].finish_reason == "stop" and reqs[2].spent == 1
    assert [r.finish_reason for r in reqs].count("length") >= 3


@contextlib.contextmanager
def steered_to_count(model, tok, words: str, break_every: int | None):
    """The model steered to repeat the cycle of `words` (one token each), except that every
    `break_every`-th position (if any) says " zero" instead."""
    cycle = tok.encode(words, add_special_tokens=False)
    other = tok.encode(" zero", add_special_tokens=False)[0]
    follow = torch.full((model.lm_head.out_features,), cycle[0])
    for i, t in enumerate(cycle):
        follow[t] = cycle[(i + 1) % len(cycle)]
    follow[other] = cycle[2]
    seen = {}

    def steer(module, args, out):
        ids, pos = seen["ids"][:, -out.shape[1] :], seen["pos"][:, -out.shape[1] :]
        target = (
            follow[ids]
            if break_every is None
            else torch.where(pos % break_every == break_every - 1, torch.full_like(ids, other), follow[ids])
        )
        return out + 1e4 * torch.nn.functional.one_hot(target, out.shape[-1])

    pre = model.model.register_forward_pre_hook(
        lambda m, a, kw: seen.update(ids=kw["input_ids"], pos=kw["position_ids"]), with_kwargs=True
    )
    post = model.lm_head.register_forward_hook(steer)
    try:
        yield
    finally:
        pre.remove()
        post.remove()


def count_along(model, tok, words: str, draft_tokens: int, lengths: list[int]) -> tuple[Engine, list[Request]]:
    """Prompts that count `words` three times, answered by the engine; every reply checked against
    `generate`'s."""
    convs = [[{"role": "user", "content": "Count with me:" + words * 3 + q}] for q in QUESTIONS]
    prompts = encode_prompts(tok, convs)
    engine = Engine(model, tok, EngineConfig(max_rows=3, draft_tokens=draft_tokens))
    reqs = engine.run([Request(p, max_new_tokens=n, stop_on_repeat=False) for p, n in zip(prompts, lengths)])
    for req, prompt in zip(reqs, prompts):
        assert req.tokens == alone(model, tok, prompt, len(req.tokens))
        assert req.finish_reason == "length"
    # a row's first token comes from its prefill; each decode step of a row gives one token more than it kept
    assert engine.stats["decode_rows"] == sum(len(r.tokens) for r in reqs) - len(reqs) - engine.stats["accepted"]
    assert engine.kv.rows == 0
    return engine, reqs


def test_drafts_from_the_prompt_are_verified_and_replies_stay_exact(lively):
    """Every seventh position breaks the cycle the prompts contain: prompt lookup drafts the cycle,
    decode keeps the drafted tokens greedy would pick and drops the rest, and every reply still
    equals `generate`'s (and the bookkeeping identity in count_along fails if a wrong draft is kept)."""
    model, tok = lively
    words = " one two three four"
    with steered_to_count(model, tok, words, break_every=7):
        engine, _ = count_along(model, tok, words, draft_tokens=4, lengths=[30, 17, 25, 9, 30])
    assert 0 < engine.stats["accepted"] < engine.stats["drafted"]  # drafts were kept, and some were dropped


def test_a_draft_kept_whole_grows_and_one_dropped_shrinks(lively):
    model, tok = lively
    words = " one two three four five six seven eight nine ten eleven twelve"  # a draft of 8 fits in a cycle
    with steered_to_count(model, tok, words, break_every=None):
        engine, _ = count_along(model, tok, words, draft_tokens=8, lengths=[40, 33, 40, 25, 40])
    # the first draft of a row is 4 tokens; more than 4 kept per row and step means drafts grew
    assert engine.stats["accepted"] > 4 * engine.stats["decode_rows"]
    lookup = PromptLookup(engine.draft_tokens)
    assert lookup.length == 4
    for kept, expected in [(4, 8), (8, 8), (3, 8), (0, 4), (0, 2), (0, 1), (0, 1), (1, 2)]:
        lookup.adapt(drafted=kept if kept else 5, kept=kept)
        assert lookup.length == expected


@pytest.mark.slow
def test_embedded_model_replies_equal_generate_alone():
    """The embedded SmolLM2-135M on prompts of the demo's kind: shared style guide, mixed lengths."""
    from tunesmith.models import DEFAULT_MODEL, load

    model, tok = load(DEFAULT_MODEL)
    check_exact(model, tok, lengths=[24, 8, 32, 16, 40], max_rows=3, prefill_tokens=96)
    check_exact(model, tok, lengths=[24, 8, 32, 16, 40], max_rows=5, prefill_tokens=4096, shared_attention=0)


def test_cancel_frees_the_row_for_the_next_prompt(lively):
    model, tok = lively
    prompts = encode_prompts(tok, conversations())
    engine = Engine(model, tok, EngineConfig(max_rows=1))
    first = engine.submit(Request(prompts[3], max_new_tokens=1000, stop_on_repeat=False))
    second = engine.submit(Request(prompts[4], max_new_tokens=5, stop_on_repeat=False))
    queued_then_cancelled = engine.submit(Request(prompts[0], max_new_tokens=5))
    queued_then_cancelled.cancel()
    for _ in range(4):
        engine.step()
    assert engine.running == 1 and engine.queued == 1 and queued_then_cancelled.finish_reason == "cancelled"
    first.cancel()
    while not second.done.is_set():
        engine.step()
    assert first.finish_reason == "cancelled" and 3 <= first.spent < 10
    assert second.tokens == alone(model, tok, prompts[4], 5)


def test_sampling_follows_its_seed(lively):
    model, tok = lively
    prompt = encode_prompts(tok, conversations()[3:4])[0]

    def reply(seed, temperature=1.0):
        engine = Engine(model, tok)
        return engine.run(
            [Request(prompt, max_new_tokens=12, temperature=temperature, top_p=0.9, seed=seed, stop_on_repeat=False)]
        )[0].tokens

    assert reply(1) == reply(1)
    greedy = alone(model, tok, prompt, 12)
    assert any(reply(seed) != greedy for seed in range(2, 6))


def test_the_serving_thread_streams_concurrent_requests(lively):
    model, tok = lively
    prompts = encode_prompts(tok, conversations())
    engine = Engine(model, tok, EngineConfig(max_rows=4, prefill_tokens=16))
    engine.start()
    pieces = {i: [] for i in range(len(prompts))}
    reqs = [
        engine.submit(Request(p, max_new_tokens=10, stop_on_repeat=False, on_text=pieces[i].append))
        for i, p in enumerate(prompts)
    ]
    for req in reqs:
        assert req.done.wait(60)
    for i, (req, prompt) in enumerate(zip(reqs, prompts)):
        assert req.tokens == alone(model, tok, prompt, 10)
        assert "".join(pieces[i]).strip() == req.text(tok) and len(pieces[i]) > 1
    assert engine.running == 0 and engine.queued == 0
    assert isinstance(engine.thread, threading.Thread) and engine.thread.daemon
