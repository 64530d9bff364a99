"""`tunesmith check`: exact token counts, the length policy, the malformed corpus end to end,
the probe and the time/cost estimate."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.data import check
from tunesmith.data.check import REFERENCE_GPU, TokenCounter, estimate, run_check, token_lengths
from tunesmith.data.formats import write_jsonl
from tunesmith.models import render
from tunesmith.train import probe as train_probe

FIXTURES = Path(__file__).parent / "fixtures" / "data"

TRICKY = [
    "plain words, with punctuation; and £4.99 — a dash",
    "two  spaces,   three, trailing space ",
    "\nleading newline\n\n\nand blank lines\n  indented\tTabbed\r\nCRLF",
    "ünïcödé, 日本語のテキスト, emoji 🍝🥦, ﬁ ligature",
    "a special token inside: <|im_end|> and <|im_start|>user",
    "numbers 1234567 3.14159 H-03-07 INS-017",
    "",
    "   ",
]


def conversations():
    return [
        [{"role": "user", "content": TRICKY[0]}, {"role": "assistant", "content": TRICKY[1]}],
        [
            {"role": "system", "content": TRICKY[2]},
            {"role": "user", "content": TRICKY[3]},
            {"role": "assistant", "content": TRICKY[5]},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": TRICKY[4]},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "not learnt", "weight": 0},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "only this is learnt", "weight": 1},
            {"role": "user", "content": "and this?"},
        ],
    ]


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_token_counter_is_exact_on_tricky_text(tokenizer):
    count = TokenCounter(tokenizer)
    assert count.split is not None  # the embedded tokenizer takes the fast path
    assert count(TRICKY * 3) == [n_tokens(tokenizer, t) for t in TRICKY] * 3


def test_token_lengths_equal_the_rendered_conversation(tokenizer):
    convs = conversations()
    totals, trainable = token_lengths(tokenizer, [{"messages": m} for m in convs])
    assert totals == [n_tokens(tokenizer, render(tokenizer, m, False)) for m in convs]
    # Trainable: what each learnt assistant turn adds after its header, up to and with <|im_end|>
    # (the newline after it belongs to the next turn).
    want = []
    for msgs in convs:
        n = 0
        for k, m in enumerate(msgs):
            if m["role"] == "assistant" and m.get("weight", 1):
                head = n_tokens(tokenizer, render(tokenizer, msgs[:k], True))
                n += n_tokens(tokenizer, render(tokenizer, msgs[: k + 1], False)) - head - 1
        want.append(n)
    assert trainable == want
    assert trainable[3] == n_tokens(tokenizer, "only this is learnt") + 1


def test_a_template_that_rewrites_content_falls_back_to_rendering(tokenizer):
    convs = [[{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": " reply "}]] * 2
    saved = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    try:
        assert check._template_pieces(tokenizer, convs[0]) is None
        totals, trainable = token_lengths(tokenizer, [{"messages": m} for m in convs])
        assert totals == [n_tokens(tokenizer, render(tokenizer, convs[0], False))] * 2
        assert trainable == [n_tokens(tokenizer, " reply ") + 1] * 2
    finally:
        tokenizer.chat_template = saved


def test_malformed_corpus_end_to_end(tiny_model_dir, capsys):
    rc = main(
        [
            "check",
            str(FIXTURES / "malformed.jsonl"),
            "--model",
            str(tiny_model_dir),
            "--max-len",
            "256",
            "--too-long",
            "error",
            "--no-probe",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and not report["ok"]
    got = Counter((i["line"], i["code"]) for i in report["issues"])
    want = Counter()
    for row in (FIXTURES / "malformed.expected").read_text().splitlines()[1:]:
        line, codes = row.split("\t")
        want.update((int(line), c) for c in codes.split(","))
    assert got == want  # every code, too-long included, on its line
    f = report["files"][0]
    assert (f["records"], f["valid"], f["duplicates"], f["over_max_len"]) == (143, 46, 3, 3)
    assert all(i["fix"] for i in report["issues"])


def write_small(path, n=12, long_at=()):
    recs = []
    for i in range(n):
        answer = " ".join(["word"] * 400) if i in long_at else f"answer {i}"
        recs.append(
            {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": answer}]}
        )
    write_jsonl(path, recs)
    return path


@pytest.mark.parametrize("policy", ["drop", "truncate", "error"])
def test_too_long_policy_is_never_silent(tiny_model_dir, tmp_path, policy):
    path = write_small(tmp_path / "d.jsonl", long_at=(3,))
    r = run_check(str(path), model=str(tiny_model_dir), max_len=128, too_long=policy)
    long = [i for i in r["issues"] if i["code"] == "too-long"]
    assert [(i["line"], i["severity"]) for i in long] == [(4, "error" if policy == "error" else "warning")]
    tokens = r["files"][0]["tokens"]
    if policy == "drop":
        assert r["files"][0]["examples"] == 11 and tokens["max"] < 128
    elif policy == "truncate":
        assert r["files"][0]["examples"] == 12 and tokens["max"] == 128
    else:
        assert not r["ok"] and tokens["max"] > 400
    assert r["ok"] == (policy != "error")


def test_estimate_arithmetic():
    e = estimate(
        1_000_000,
        100_000_000,
        "lora",
        2.5,
        {"tokens_per_s": 500.0, "device": "cpu", "steps": 3, "tokens_per_step": 128, "step_s": 0.256},
    )
    assert e["reference"]["flops_per_epoch"] == 4 * 1e8 * 1e6
    seconds = 4e14 / (REFERENCE_GPU["peak_flops"] * REFERENCE_GPU["mfu"])
    assert e["reference"]["seconds_per_epoch"] == round(seconds, 2)
    assert e["reference"]["usd_per_epoch"] == round(seconds / 3600 * 2.5, 4)
    assert e["here"]["seconds_per_epoch"] == 2000.0
    assert (
        estimate(10, 10, "full", 1.0, None)["reference"]["flops_per_epoch"] == 600
        and estimate(10, 10, "full", 1.0, None)["here"] is None
    )


def test_probe_measures_the_model_on_the_data(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(train_probe.PROBE, "budget_s", 3.0)
    path = write_small(tmp_path / "d.jsonl")
    r = run_check(str(path), model=str(tiny_model_dir), max_len=256, method="full", probe=train_probe.probe)
    e = r["estimate"]
    model, _ = tiny_model
    assert e["params"] == sum(p.numel() for p in model.parameters())
    assert e["epoch_tokens"] == r["files"][0]["tokens"]["sum"]
    here = e["here"]
    assert here["device"] == "cpu" and here["steps"] >= 1 and here["tokens_per_s"] > 0
    assert here["seconds_per_epoch"] == round(e["epoch_tokens"] / here["tokens_per_s"], 1)
    assert e["reference"]["flops_per_epoch"] == 6 * e["params"] * e["epoch_tokens"]


def test_check_reads_a_config_and_reports_overlap(tiny_model_dir, tmp_path, capsys):
    train = write_small(tmp_path / "train.jsonl")
    held = tmp_path / "held.jsonl"
    write_jsonl(
        held, [{"messages": [{"role": "user", "content": "QUESTION 5"}, {"role": "assistant", "content": "x"}]}]
    )
    (tmp_path / "config.yaml").write_text("data:\n  train: train.jsonl\n  heldout: held.jsonl\n  max_len: 64\n")
    rc = main(["check", str(tmp_path / "config.yaml"), "--model", str(tiny_model_dir), "--no-probe"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "overlap (error, 1)" in out and "held.jsonl:1" in out and f"same prompt as {train}:6" in out
    assert "max length 64" in out and "too-few (error, 1)" in out  # the held-out file has one example
    assert "here: not measured (--no-probe)" in out and "reference H100 SXM" in out


def test_clean_data_passes_with_a_readable_table(tiny_model_dir, tmp_path, capsys):
    path = write_small(tmp_path / "d.jsonl")
    assert main(["check", str(path), "--model", str(tiny_model_dir), "--no-probe", "--gpu-price", "4"]) == 0
    out = capsys.readouterr().out
    assert "12 records, 12 valid, 0 duplicates, 0 over max length → 12 examples" in out
    assert "problems: none" in out and "at $4.00/h" in out and out.rstrip().endswith("OK: 0 errors, 0 warnings")


def test_probe_times_the_trainers_own_step(tiny_model_dir, tmp_path, monkeypatch):
    """The estimate must measure the path training takes: packed rows through the varlen attention
    and the loss that runs the LM head only on loss tokens — not transformers' full-logit loss."""
    import tunesmith.train.loss as loss

    monkeypatch.setitem(train_probe.PROBE, "budget_s", 2.0)
    calls = {"attention": 0, "loss_rows": []}
    real_attn, real_ce = loss.varlen_attention, loss.linear_cross_entropy

    def attention(*a, **k):
        calls["attention"] += k.get("cu_seqlens") is not None and len(k["cu_seqlens"]) > 2
        return real_attn(*a, **k)

    monkeypatch.setattr(
        loss, "linear_cross_entropy", lambda h, *a, **k: calls["loss_rows"].append(h.shape[0]) or real_ce(h, *a, **k)
    )
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, loss.VARLEN, attention)
    monkeypatch.setattr(loss, "varlen_attention", attention)
    r = run_check(
        str(write_small(tmp_path / "d.jsonl")), model=str(tiny_model_dir), max_len=256, probe=train_probe.probe
    )
    assert r["estimate"]["here"]["tokens_per_s"] > 0
    assert calls["attention"] > 0  # packed rows of several examples
    row = r["estimate"]["here"]["tokens_per_step"]
    assert calls["loss_rows"] and all(0 < n < row for n in calls["loss_rows"])  # only the loss tokens reach the head
