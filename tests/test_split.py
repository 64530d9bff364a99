"""One held-out split: import, train and compare see the same examples on each side."""

import json

from tunesmith.config import load_config
from tunesmith.data.split import filter_tasks, load_split, select_examples, split_heldout


def _chats(path, n=40):
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                        "meta": {"group": f"g{i // 4}", "task": "qa" if i % 2 else "summary"},
                    }
                )
                + "\n"
            )
    return path


def test_train_and_compare_see_the_same_split(tmp_path, monkeypatch):
    import tunesmith.compare.run as compare_run
    import tunesmith.train.loop as loop

    cfg = load_config(None, [f"data.train={_chats(tmp_path / 'train.jsonl')}", "data.heldout_fraction=0.25"])
    seen = {}
    # what each stage receives from the one loader
    monkeypatch.setattr(loop, "load_split", lambda c: seen.setdefault("train", load_split(c)))
    monkeypatch.setattr(compare_run, "load_split", lambda c, **kw: seen.setdefault("compare", load_split(c, **kw)))
    train, held, info = loop.load_split(cfg)
    c_train, c_held, _ = compare_run.load_split(cfg, need_train=False)
    assert (train, held) == (c_train, c_held)
    assert info["heldout"]["examples"] == len(held) >= 10
    assert not {e["meta"]["group"] for e in train} & {e["meta"]["group"] for e in held}


def test_heldout_file_wins_over_the_fraction(tmp_path):
    cfg = load_config(
        None, [f"data.train={_chats(tmp_path / 't.jsonl')}", f"data.heldout={_chats(tmp_path / 'h.jsonl', 6)}"]
    )
    train, held, info = load_split(cfg)
    assert len(train) == 40 and len(held) == 6 and info["heldout"]["source"] == "file"


def test_select_examples_keeps_every_task_and_file_order(tmp_path):
    examples = [json.loads(line) for line in _chats(tmp_path / "t.jsonl").read_text().splitlines()]
    chosen = select_examples(examples, 5, seed=0)
    assert len(chosen) == 5 and {e["meta"]["task"] for e in chosen} == {"qa", "summary"}
    assert chosen == [e for e in examples if e in chosen]
    assert filter_tasks(examples, "qa") == [e for e in examples if e["meta"]["task"] == "qa"]
    assert split_heldout(examples, 0.25, 1) != split_heldout(examples, 0.25, 2)


def test_pinned_examples_stay_on_their_side():
    examples = [{"meta": {"group": f"g{i % 10}"}} for i in range(100)]
    examples += [{"meta": {"id": f"t{i}", "split": "train"}} for i in range(20)] + [
        {"meta": {"id": "h", "split": "heldout"}}
    ]
    for seed in range(5):
        train, held = split_heldout(examples, 0.2, seed)
        assert all(e in train for e in examples if e["meta"].get("split") == "train")
        assert examples[-1] in held and 0.2 * len(examples) <= len(held)
