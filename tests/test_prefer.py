"""Closing the loop on the tiny model: a collection samples two replies of the SFT run to its
training prompts only; `tunesmith prefer` trains DPO from the SFT run on pairs and compares the two
(compare.against_run), the verdict saying whether it helped with the paired interval."""

import json

import pytest

from tunesmith import UserError
from tunesmith.cli import main
from tunesmith.config import load_config, save_config
from tunesmith.testing import make_chats, make_tiny_lora_run


@pytest.fixture
def sft(tmp_path, tiny_model_dir, tokenizer):
    """A LoRA 'SFT run' on the tiny model with its saved config: 12 training and 4 held-out chats."""
    run = make_tiny_lora_run(tmp_path / "sft", tiny_model_dir, tokenizer)
    train = make_chats(tmp_path / "train.jsonl", n=12)
    held = make_chats(tmp_path / "held.jsonl", n=4, seed=1)
    cfg = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={train}",
            f"data.heldout={held}",
            "data.max_len=256",
            "train.threads=1",
            "train.batch_size=2",
            "train.lr=1e-3",
        ],
    )
    save_config(cfg, run / "config.yaml")
    return run


def _prompts(path) -> set[str]:
    from tunesmith.workbench.collect import prompt_key

    return {prompt_key(json.loads(x)["messages"][:-1]) for x in path.read_text().splitlines()}


def test_a_collection_samples_training_prompts_only_and_prefer_closes_the_loop(
    tmp_path, sft, one_thread, tiny_model_dir, tokenizer
):
    from tunesmith.workbench import collect, review

    out = tmp_path / "collection.jsonl"
    assert collect.sample(str(sft), str(sft / "config.yaml"), str(out), 5, 1.0, 6) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    keys = {collect.prompt_key(r["prompt"]) for r in rows}
    assert len(rows) == 5 and keys <= _prompts(tmp_path / "train.jsonl")
    assert not keys & _prompts(tmp_path / "held.jsonl")
    assert any(r["outputs"]["reply-1"]["text"] != r["outputs"]["reply-2"]["text"] for r in rows)  # two draws
    # or one reply of the run and one of another run: the same first replies, other second ones
    other = make_tiny_lora_run(tmp_path / "other", tiny_model_dir, tokenizer, seed=1)
    both = tmp_path / "two-runs.jsonl"
    assert collect.sample(str(sft), str(sft / "config.yaml"), str(both), 5, 1.0, 6, other_run_dir=str(other)) == 0
    mixed = [json.loads(x) for x in both.read_text().splitlines()]
    assert [r["outputs"]["reply-1"] for r in mixed] == [r["outputs"]["reply-1"] for r in rows]
    assert [r["outputs"]["reply-2"] for r in mixed] != [r["outputs"]["reply-2"] for r in rows]

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": r["prompt"],
                    "chosen": [{"role": "assistant", "content": "They leave room for one swap in the basket."}],
                    "rejected": [{"role": "assistant", "content": r["outputs"]["reply-2"]["text"] or "no"}],
                }
            )
            + "\n"
            for r in rows
        )
    )
    dpo = tmp_path / "dpo"
    args = ["train.max_steps=2", "compare.arms=zero-shot,fine-tuned", "compare.max_examples=3"]
    args += ["generate.max_new_tokens=4", "generate.temperature=1", "compare.side_effects=false"]
    assert main(["prefer", str(sft), str(pairs), *args, "compare.bootstrap=200", "--out", str(dpo)]) == 0

    summary = json.loads((dpo / "summary.json").read_text())
    assert summary["objective"] == "dpo"
    results = json.loads((dpo / "compare" / "results.json").read_text())
    a = results["against_run"]
    assert a["arm"] == "run:sft" and results["arms"]["run:sft"]["status"] == "ok"
    assert results["arms"]["run:sft"]["tuned"] and set(results["arms"]) == {"zero-shot", "fine-tuned", "run:sft"}
    assert results["verdict"]["reference"] == "zero-shot"  # the other run is shown, never recommended
    primary = results["primary_metric"]
    # the difference is fine-tuned minus the SFT run, example by example, on the same held-out examples
    samples = [json.loads(x) for x in (dpo / "compare" / "samples.jsonl").read_text().splitlines()]
    diffs = [
        s["outputs"]["fine-tuned"]["metrics"][primary] - s["outputs"]["run:sft"]["metrics"][primary] for s in samples
    ]
    m = a["metrics"][primary]
    assert m["n"] == 3 and m["diff"] == pytest.approx(sum(diffs) / 3, abs=1e-5) and m["lo"] <= m["diff"] <= m["hi"]
    assert a["sentence"].startswith("Against run:sft") and a["sentence"] in results["verdict"]["paragraph"]
    assert "paired 95 % interval" in a["sentence"]
    assert review.review_arms(results)[:2] == ["fine-tuned", "run:sft"]  # the blind review sets them side by side
    assert "run:sft" in (dpo / "compare" / "report.html").read_text()


def test_prefer_and_against_run_refuse_what_cannot_work(tmp_path, sft, capsys):
    from tunesmith.prefer import prepare

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["prefer", str(sft), str(empty)]) == 2
    assert "no preference pairs there. fix: export a collection's pairs" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a finished training run"):
        prepare(tmp_path, empty)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(UserError, match="compare.against_run needs the fine-tuned arm"):
        prepare(sft, pairs, ["compare.arms=zero-shot"])  # refused before any training
    with pytest.raises(UserError, match="prefer trains on preference pairs"):
        prepare(sft, pairs, ["train.objective=sft"])
    train_cfg, compare_cfg = prepare(sft, pairs, ["train.max_steps=3", "data.max_len=128"])
    assert (train_cfg.train.objective, train_cfg.train.init_from, train_cfg.data.format) == (
        "dpo",
        str(sft),
        "preference",
    )
    assert train_cfg.data.heldout == "" and train_cfg.train.max_steps == 3 and train_cfg.data.max_len == 128
    assert compare_cfg.data.heldout.endswith("held.jsonl") and compare_cfg.compare.against_run == str(sft)
    assert compare_cfg.data.max_len == 256  # data.* overrides reach the training only
    assert main(["compare", str(sft / "config.yaml"), f"compare.against_run={tmp_path}", "--run", str(sft)]) == 2
    assert f"compare.against_run={tmp_path}: no finished run there" in capsys.readouterr().err
