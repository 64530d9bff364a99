"""Data fuzzing: Hypothesis writes dataset files (random JSON, records shaped like each format with
wrong types inside, random bytes, deep nesting, huge strings, odd Unicode, CRLF, BOM, cut-off last
lines, CSV with quotes and newlines in cells, markdown with hostile front matter) and every reader,
`check` and `import` take them: nothing crashes, every bad record has a known code and its line.

    pytest -q tests/reliability/test_fuzz_data.py -s        # prints the records tried
"""

import csv
import io
import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunesmith import UserError
from tunesmith.compare.retrieval import read_corpus
from tunesmith.data import load_examples
from tunesmith.data.formats import FORMATS
from tunesmith.data.validate import CODES, ROLES, dataset_issues, read_dataset

TRIED = {"jsonl records": 0, "csv rows": 0, "markdown files": 0, "files through check": 0}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# Text with what breaks naive code: lone surrogates, NUL, RTL marks, combining marks, emoji, CR.
odd_text = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(
    ["", " ", "\u202e\u0301", "\ud800", "a\x00b", "\r\n", "\ufeff", "🧑‍🍳", "---", "\\", '"']
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(odd_text, kids, max_size=4), max_leaves=12
)
roles = st.sampled_from([*ROLES, "human", "gpt", "tool", "", "User"]) | odd_text | json_values
message = st.fixed_dictionaries(
    {},
    optional={
        "role": roles,
        "content": odd_text | json_values,
        "weight": json_values,
        "name": odd_text,
        "extra": json_values,
    },
)
turn = st.fixed_dictionaries({}, optional={"from": roles, "value": odd_text | json_values, "weight": json_values})
shaped = st.one_of(
    st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=4) | json_values},
        optional={"system": odd_text | json_values, "meta": json_values, "id": json_values},
    ),
    st.fixed_dictionaries(
        {
            "prompt": odd_text | st.lists(message, max_size=2) | json_values,
            "completion": odd_text | st.lists(message, max_size=2) | json_values,
        },
        optional={"system": odd_text | json_values, "meta": json_values},
    ),
    st.fixed_dictionaries(
        {"instruction": odd_text | json_values, "output": odd_text | json_values},
        optional={"input": odd_text | json_values, "system": json_values},
    ),
    st.fixed_dictionaries(
        {"conversations": st.lists(turn, max_size=4) | json_values}, optional={"system": odd_text | json_values}
    ),
)
good = st.builds(
    lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
    st.text(string.ascii_letters + " ", min_size=1, max_size=30).filter(str.strip),
    st.text(string.ascii_letters + " ", min_size=1, max_size=30).filter(str.strip),
)


def _dumps(value, ascii_only):
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


line = st.one_of(
    st.builds(_dumps, shaped | good | json_values, st.booleans()),
    st.binary(max_size=40),
    st.integers(500, 3000).map(lambda n: b"[" * n + b"]" * n),  # nesting past Python's JSON recursion limit
    st.integers(500, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.just(
        _dumps({"messages": [{"role": "user", "content": "q" * 200_000}, {"role": "assistant", "content": "a"}]}, True)
    ),
    st.just(b""),
    st.just(b"   "),
)


@st.composite
def jsonl_files(draw):
    lines = draw(st.lists(line, min_size=1, max_size=12))
    blob = b"\n".join(lines)
    if draw(st.booleans()):
        blob += b"\n"
    if draw(st.booleans()):
        blob = blob.replace(b"\n", b"\r\n")
    if draw(st.booleans()):
        blob = b"\xef\xbb\xbf" + blob
    return blob


def _check_dataset(ds, n_lines, path):
    for issue in ds.issues:
        assert issue.code in CODES, issue
        assert issue.line is None or 1 <= issue.line <= n_lines, issue
        assert str(path) in str(issue)
    bad_lines = {i.line for i in ds.issues if i.severity == "error"}
    assert not bad_lines & set(ds.lines), "a record both kept and reported bad"
    for ex in ds.examples:
        assert ex["messages"] and all(m["role"] in ROLES and isinstance(m["content"], str) for m in ex["messages"])
        assert any(m["role"] == "assistant" for m in ex["messages"])
        for m in ex["messages"]:
            m["content"].encode("utf-8")  # every kept text can be written and tokenized


@FUZZ
@given(blob=jsonl_files(), fmt=st.sampled_from(["auto", *FORMATS]))
@example(blob=b'\xef\xbb\xbf\x1c\n{"messages": []}', fmt="auto")  # a BOM, then a line of Unicode whitespace
def test_every_jsonl_reader_reports_every_bad_record_with_code_and_line(blob, fmt):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_bytes(blob)
        text_lines = blob.count(b"\n") + 1
        try:
            ds = read_dataset(path, fmt)
        except UserError as exc:  # about the whole file: no records, or a format it cannot tell
            assert fmt == "auto" and str(path) in str(exc)
            return
        TRIED["jsonl records"] += ds.records
        _check_dataset(ds, text_lines, path)
        if not blob.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):  # JSONL: every non-blank line is accounted for
            raw_lines = blob.removeprefix(b"\xef\xbb\xbf").split(b"\n")  # a BOM is not part of line 1's text
            nonblank = {n for n, raw in enumerate(raw_lines, 1) if raw.strip(b" \t\r\n\x0b\x0c")}
            seen = set(ds.lines) | {i.line for i in ds.issues if i.line}
            # lines of Unicode whitespace only (\x1c-\x1f, \x85 …) are blank to a reader too
            assert nonblank - seen <= {n for n in nonblank if not raw_lines[n - 1].decode("utf-8", "replace").strip()}
        dataset_issues(ds)
        try:
            examples = load_examples(path, fmt)
            assert len(examples) == len(ds.examples)
        except UserError as exc:
            assert "records are bad" in str(exc) or "no records" in str(exc) or "cannot tell" in str(exc)


cells = st.text(st.characters(exclude_categories=("Cs",)), max_size=30) | st.sampled_from(
    ['"', '""', "a,b", "x\ny", "\r", ""]
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["user", "assistant", "system", "id", "group", "prompt", "Question", ""]) | cells, max_size=5
    ),
    rows=st.lists(st.lists(cells, max_size=6), max_size=8),
    raw=st.booleans(),
    huge=st.booleans(),
)
def test_csv_rows_are_read_or_reported_with_their_line(header, rows, raw, huge):
    buf = io.StringIO(newline="")
    if raw:  # not written by a CSV writer: stray quotes and ragged rows as they are
        buf.write("\n".join(",".join(r) for r in [header, *rows]))
    else:
        csv.writer(buf).writerows([header, *rows])
    text = buf.getvalue() + (("\nhello," + "w" * 300_000) if huge else "")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.csv"
        path.write_text(text, encoding="utf-8")
        try:
            ds = read_dataset(path)
        except UserError as exc:
            assert str(path) in str(exc)
            return
        TRIED["csv rows"] += ds.records
        _check_dataset(ds, text.count("\n") + text.count("\r") + 1, path)


front_values = (
    st.sampled_from(["insight", "study", "recommendation", "report", "term", "template", "glossary term", "nonsense"])
    | json_values
)
yaml_bits = st.sampled_from(
    [
        "a: &x [1, 2]\nb: [*x, *x, *x]",
        "key: value: other",
        "- just\n- a list",
        "!!python/object:os.system x",
        "id: [unclosed",
        "\t\tindent: tab",
        "type: insight\nid: ../../x\nstudy: S1",
        "? complex\n: key",
    ]
)


@st.composite
def markdown_files(draw):
    meta = draw(
        st.dictionaries(
            st.sampled_from(["type", "id", "study", "insights", "term", "name", "title", "rejected"]) | odd_text,
            front_values | json_values,
            max_size=5,
        )
    )
    head = draw(st.sampled_from(["json", "yaml-bits", "none", "unclosed"]))
    if head == "json":
        front = json.dumps(meta, ensure_ascii=True)  # JSON is YAML
    elif head == "yaml-bits":
        front = draw(yaml_bits)
    else:
        front = ""
    body = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=200))
    if head == "none":
        return body
    return f"---\n{front}\n" + ("" if head == "unclosed" else "---\n") + body


@settings(FUZZ, max_examples=80)
@given(files=st.lists(markdown_files(), min_size=1, max_size=5))
def test_markdown_repositories_import_or_say_what_is_wrong(files):
    from tunesmith.data.repository import import_repository, read_repository

    with tempfile.TemporaryDirectory() as d:
        repo = Path(d) / "repo"
        repo.mkdir()
        for i, text in enumerate(files):
            (repo / f"doc{i}.md").write_text(text, encoding="utf-8")
        TRIED["markdown files"] += len(files)
        try:
            read_repository([repo])
            import_repository([repo], Path(d) / "out")
        except UserError as exc:
            assert "doc" in str(exc) or "no examples could be built" in str(exc), exc
        read_corpus(repo)  # the retrieval corpus reads whatever is there
        assert not (Path(d) / "x.md").exists() and not (Path(d).parent / "x.md").exists()


@pytest.fixture(scope="module")
def tok_model(tiny_model_dir, tokenizer):
    """The tiny model's spec, with its tokenizer loaded once (check loads it per call otherwise)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tunesmith.models.load_tokenizer", lambda *a, **k: tokenizer)
        yield str(tiny_model_dir)


@settings(FUZZ, max_examples=25)
@given(blob=jsonl_files(), fmt=st.sampled_from(["auto", "chat"]))
def test_check_reports_instead_of_crashing(tok_model, blob, fmt):
    from tunesmith.data.check import run_check

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        good_first = b"".join(
            _dumps(
                {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}, True
            )
            + b"\n"
            for i in range(3)
        )
        path.write_bytes(good_first + blob)  # good records first: a JSONL file, whatever the blob is
        TRIED["files through check"] += 1
        try:
            report = run_check(str(path), model=tok_model, max_len=64, fmt=fmt)
        except UserError as exc:  # about the whole file (a JSON array of something else)
            assert str(path) in str(exc)
            return
        assert all(i["code"] in CODES and (i["line"] is None or i["line"] >= 1) for i in report["issues"])
        assert report["files"][0]["valid"] >= 3


def test_zz_print_figures():
    print(f"\ndata fuzzing, records tried: {json.dumps(TRIED)}")
    assert TRIED["jsonl records"] > 0
