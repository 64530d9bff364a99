"""Readers and writers of every dataset format: round trips, BOM/CRLF, line numbers, front matter, corpus."""

import json
from pathlib import Path

import pytest

from tunesmith import UserError
from tunesmith.data import load_examples
from tunesmith.data.formats import split_front_matter, to_record, write_csv, write_jsonl
from tunesmith.data.validate import read_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def single_turn(n=12, system=False):
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": "Write in house style."}] if system else []
        msgs += [
            {"role": "user", "content": f'Define term {i}, with a comma, a "quote" and ünïcödé.'},
            {"role": "assistant", "content": f"Term {i} is\na two-line answer."},
        ]
        out.append({"messages": msgs, "meta": {"id": f"ex-{i}", "group": f"S{i % 3}"}})
    return out


@pytest.mark.parametrize("fmt", ["chat", "prompt-completion", "alpaca", "sharegpt"])
@pytest.mark.parametrize("system", [False, True])
def test_jsonl_round_trip(tmp_path, fmt, system):
    examples = single_turn(system=system)
    path = tmp_path / f"{fmt}.jsonl"
    write_jsonl(path, [to_record(ex, fmt) for ex in examples])
    ds = read_dataset(path)  # auto-detected
    assert ds.format == fmt
    assert ds.issues == []
    assert load_examples(path) == examples


def test_multi_turn_with_weights_round_trips_through_chat_and_sharegpt(tmp_path):
    ex = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d", "weight": 1},
        ],
        "meta": {},
    }
    for fmt in ("chat", "sharegpt"):
        path = tmp_path / f"{fmt}.jsonl"
        write_jsonl(path, [to_record(ex, fmt)] * 2)
        got = load_examples(path)
        assert got[0] == ex
        assert [m.get("weight") for m in got[1]["messages"]] == [None, None, 0, None, 1]
    with pytest.raises(ValueError, match="one user and one assistant"):
        to_record(ex, "alpaca")


def test_csv_round_trip(tmp_path):
    examples = [{"messages": ex["messages"], "meta": {}} for ex in single_turn(system=True)]
    write_csv(tmp_path / "d.csv", examples)
    assert load_examples(tmp_path / "d.csv") == examples


def test_csv_with_a_column_map_keeps_groups_and_multiline_cells():
    path = FIXTURES / "sample_qa.csv"  # BOM, CRLF, a quoted cell over two lines
    got = load_examples(path, "csv:user=Question,assistant=Answer,group=Study")
    assert len(got) == 12
    assert got[4]["messages"][1]["content"].endswith("case 4.\nA second line, inside quotes.")
    assert [ex["meta"]["group"] for ex in got[:4]] == ["S01", "S02", "S03", "S01"]
    # without a map the usual header names are recognised (question/answer), and rows keep their lines
    ds = read_dataset(path)
    assert len(ds.examples) == 12 and ds.lines[:6] == [2, 3, 4, 5, 6, 8]


def test_csv_map_naming_a_missing_column_is_an_error_on_the_header_line(tmp_path):
    with pytest.raises(UserError, match=r"sample_qa.csv:1: no column 'Reply'"):
        load_examples(FIXTURES / "sample_qa.csv", "csv:user=Question,assistant=Reply")


def test_prompt_completion_with_bom_and_crlf():
    got = load_examples(FIXTURES / "sample_prompt_completion.jsonl")
    assert len(got) == 12
    assert got[0]["messages"] == [
        {"role": "user", "content": "What is a quiet week, case 0?"},
        {"role": "assistant", "content": "A week with no weekly plan, case 0."},
    ]


def test_alpaca_json_array_joins_input_and_numbers_lines():
    got = load_examples(FIXTURES / "sample_alpaca.json")
    assert got[0]["messages"][0]["content"] == "What is a quiet week, case 0?"
    assert got[1]["messages"][0]["content"] == "What is a quiet week, case 1?\n\nAnswer in one sentence."
    ds = read_dataset(FIXTURES / "sample_alpaca.json")
    assert ds.format == "alpaca" and ds.lines[:3] == [2, 7, 12]  # where each object starts


def test_json_array_error_names_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": }\n]\n')
    ds = read_dataset(path)
    assert [(i.line, i.code) for i in ds.issues] == [(3, "invalid-json")]
    assert len(ds.examples) == 1


def test_sharegpt_roles_and_system():
    got = load_examples(FIXTURES / "sample_sharegpt.jsonl")
    assert [m["role"] for m in got[0]["messages"]] == ["system", "user", "assistant"]


def test_trl_conversational_prompt_completion(tmp_path):
    rec = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "completion": [{"role": "assistant", "content": "A"}],
    }
    write_jsonl(tmp_path / "pc.jsonl", [rec] * 3)
    assert load_examples(tmp_path / "pc.jsonl")[0]["messages"] == rec["prompt"] + rec["completion"]


def test_top_level_system_and_id_become_message_and_meta(tmp_path):
    rec = {
        "id": 7,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    }
    write_jsonl(tmp_path / "c.jsonl", [rec])
    ex = load_examples(tmp_path / "c.jsonl")[0]
    assert ex["messages"][0] == {"role": "system", "content": "Be brief."} and ex["meta"] == {"id": 7}


def test_unknown_format_and_undetectable_files_are_user_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(UserError, match="cannot tell the format.*question, answer"):
        load_examples(path)
    with pytest.raises(UserError, match="unknown format 'yaml'"):
        load_examples(path, "yaml")
    (tmp_path / "notes.md").write_text("# notes")
    with pytest.raises(UserError, match="retrieval corpus"):
        load_examples(tmp_path / "notes.md")


def test_front_matter_body_line_and_errors():
    meta, body, line = split_front_matter("\ufeff---\r\ntype: insight\r\nid: INS-1\r\n---\r\n\r\n**We saw** x\r\n")
    assert meta == {"type": "insight", "id": "INS-1"} and body == "**We saw** x\n" and line == 6
    assert split_front_matter("no front matter") == (None, "no front matter", 1)
    with pytest.raises(UserError, match=r"f.md:3: front matter is not valid YAML"):
        split_front_matter("---\nid: 1\ntitle: a: b\n---\nbody", "f.md")
    with pytest.raises(UserError, match=r"f.md:1: front matter .* never closed"):
        split_front_matter("---\nid: 1\nbody", "f.md")


def test_written_jsonl_is_utf8_lf_and_stable(tmp_path):
    recs = [to_record(ex, "chat") for ex in single_turn(2)]
    write_jsonl(tmp_path / "a.jsonl", recs)
    write_jsonl(tmp_path / "b.jsonl", json.loads(json.dumps(recs)))
    raw = (tmp_path / "a.jsonl").read_bytes()
    assert raw == (tmp_path / "b.jsonl").read_bytes()
    assert b"\r" not in raw and "ünïcödé".encode() in raw
