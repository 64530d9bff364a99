"""Validation against the checked-in malformed corpus: every bad record reported with its line and
code, the good ones kept, no crash. (Too-long needs a tokenizer: see test_check.py.)"""

import json
from collections import Counter
from pathlib import Path

import pytest

from tunesmith import UserError
from tunesmith.data import load_examples
from tunesmith.data.validate import CODES, check_messages, dataset_issues, overlap_issues, read_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "data"
MALFORMED = FIXTURES / "malformed.jsonl"


def expected():
    """(line, code) pairs and the good lines, as make_fixtures.py wrote them."""
    text = (FIXTURES / "malformed.expected").read_text().splitlines()
    good = [int(n) for n in text[0].split("good lines: ")[1].split(",")]
    pairs = Counter()
    for row in text[1:]:
        line, codes = row.split("\t")
        for code in codes.split(","):
            pairs[(int(line), code)] += 1
    return pairs, good


def test_corpus_is_big_and_covers_every_record_code():
    pairs, _ = expected()
    bad_lines = {line for (line, code) in pairs if code not in ("duplicate", "no-trainable", "extra-key")}
    assert len(bad_lines) >= 100
    record_codes = set(CODES) - {"overlap", "too-few"}  # those two are about a pair of files / a whole file
    record_codes -= {"same-reply", "prompts-disagree", "pair-shape"}  # a preference file's: test_preference.py
    assert {code for _, code in pairs} == record_codes


def test_every_bad_record_reported_with_line_and_code_and_good_ones_kept():
    pairs, good = expected()
    ds = read_dataset(MALFORMED)
    issues = ds.issues + dataset_issues(ds)
    got = Counter((i.line, i.code) for i in issues)
    want = Counter({k: v for k, v in pairs.items() if k[1] != "too-long"})
    assert got == want
    too_long = [line for (line, code) in pairs if code == "too-long"]
    assert len(too_long) == 3
    assert ds.lines == sorted(good + too_long)  # duplicates and the weight-0 example are valid records too
    assert ds.records == 143  # every non-blank line, good or bad


def test_weights_survive_and_are_integers():
    ds = read_dataset(MALFORMED)
    weighted = [ex for ex in ds.examples if any("weight" in m for m in ex["messages"])]
    assert [m.get("weight") for m in weighted[0]["messages"]] == [None, None, None, 0]
    assert all(type(m["weight"]) is int for ex in weighted for m in ex["messages"] if "weight" in m)


def test_load_examples_raises_naming_file_line_and_code_for_every_bad_record():
    with pytest.raises(UserError) as err:
        load_examples(MALFORMED)
    msg = str(err.value)
    assert f"{MALFORMED}: 97 of 143 records are bad (104 problems)" in msg
    assert f"{MALFORMED}:2: bad-encoding" in msg  # the first one
    assert "… and 84 more" in msg and "tunesmith check" in msg


def test_load_examples_accepts_a_clean_file_and_keeps_duplicates(tmp_path):
    lines = [line for line in MALFORMED.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")]
    _, good = expected()
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join(lines[n - 1] for n in good) + b"\n")
    examples = load_examples(clean)
    assert len(examples) == len(good) == 43


def test_overlap_between_train_and_heldout_is_found_case_and_space_insensitively():
    issues = overlap_issues(read_dataset(MALFORMED), read_dataset(FIXTURES / "heldout_overlap.jsonl"))
    assert [(i.line, i.code) for i in issues] == [(1, "overlap"), (2, "overlap"), (3, "overlap")]
    assert issues[0].message.endswith("malformed.jsonl:9")  # good(2) is on line 9


def test_too_few_examples():
    ds = read_dataset(FIXTURES / "few.jsonl")
    assert [(i.line, i.code, i.severity) for i in dataset_issues(ds)] == [(None, "too-few", "error")]


def test_a_file_of_nothing_but_garbage_reports_every_line(tmp_path):
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(b"\x00\xff\xfe\n\x89PNG\n\n\xc3\x28")
    ds = read_dataset(path)
    assert [(i.line, i.code) for i in ds.issues] == [(1, "bad-encoding"), (2, "bad-encoding"), (4, "bad-encoding")]
    assert ds.examples == []


def test_truncated_only_when_the_last_line_has_no_newline(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"messages": [\n{"messages": [')
    assert [(i.line, i.code) for i in read_dataset(path).issues] == [(1, "invalid-json"), (2, "truncated")]
    path.write_text('{"messages": [\n')
    assert [(i.line, i.code) for i in read_dataset(path).issues] == [(1, "invalid-json")]


@pytest.mark.parametrize(
    "roles,codes",
    [
        (["user", "assistant"], []),
        (["system", "user", "assistant", "user", "assistant"], []),
        (["assistant"], []),  # a reply with no prompt is odd but trainable
        (["user", "user"], ["same-role-twice", "no-assistant"]),
        (["user", "assistant", "system"], ["system-not-first"]),
    ],
)
def test_check_messages(roles, codes):
    msgs = [{"role": r, "content": "x"} for r in roles]
    assert [c for c, _ in check_messages(msgs)] == codes


def test_every_code_has_a_severity_and_a_fix():
    for code, (severity, fix) in CODES.items():
        assert severity in ("error", "warning") and fix, code
    assert json.dumps(CODES)  # plain data
