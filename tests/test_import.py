"""`tunesmith import`: the bundled repository's counts, the split by study, provenance, determinism,
and the errors a broken repository gets."""

import json
import re
from pathlib import Path

import pytest
import yaml

from tunesmith import UserError
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.data import load_examples
from tunesmith.data.formats import split_front_matter
from tunesmith.data.repository import import_repository
from tunesmith.data.split import split_heldout

PANTRY = Path(__file__).parents[1] / "src" / "tunesmith" / "examples" / "pantry"


@pytest.fixture(scope="module")
def pantry(tmp_path_factory):
    out = tmp_path_factory.mktemp("pantry-import")
    summary = import_repository([PANTRY], out)
    return out, summary


def test_bundled_repository_gives_the_promised_counts(pantry):
    out, summary = pantry
    train, heldout = load_examples(out / "train.jsonl"), load_examples(out / "heldout.jsonl")
    assert len(train) >= 400 and len(heldout) >= 60
    assert (summary["train"], summary["heldout"]) == (len(train), len(heldout))
    read = summary["read"]
    assert read["studies"] >= 12 and read["highlights"] >= 150 and read["insights"] >= 50
    assert read["recommendations"] >= 30 and read["terms"] >= 25 and read["templates"] == 3
    tasks = {ex["meta"]["task"] for ex in train}
    assert tasks == {
        "insight",
        "insight-from-draft",
        "insight-title",
        "recommendation",
        "recommendation-from-draft",
        "report-section",
        "definition",
    }


def test_no_study_on_both_sides(pantry):
    out, summary = pantry
    train, heldout = load_examples(out / "train.jsonl"), load_examples(out / "heldout.jsonl")
    train_groups = {ex["meta"]["group"] for ex in train} - {None}  # definitions: each its own group (meta.id)
    held_groups = {ex["meta"]["group"] for ex in heldout} - {None}
    assert not train_groups & held_groups
    assert held_groups == set(summary["heldout_groups"]) and len(held_groups) >= 2
    assert 0.15 * (len(train) + len(heldout)) <= len(heldout) <= 0.3 * (len(train) + len(heldout))
    assert not [ex for ex in heldout if ex["meta"]["task"] == "definition"]  # the glossary always trains
    # the retrieval corpus holds training-side studies only
    corpus = "\n".join(p.read_text() for p in (out / "corpus").glob("*.md"))
    for study in held_groups:
        assert f"Study {study}:" not in corpus
    assert "Study S01:" in corpus or "S01" in held_groups


def test_every_example_has_provenance_and_the_teams_own_text_as_response(pantry):
    out, _ = pantry
    examples = load_examples(out / "train.jsonl") + load_examples(out / "heldout.jsonl")
    ids = [ex["meta"]["id"] for ex in examples]
    assert len(ids) == len(set(ids))
    for ex in examples:
        meta = ex["meta"]
        assert set(meta) - {"split"} == {"source", "id", "group", "task"} and meta.get("split", "train") == "train"
        source = PANTRY.parent / meta["source"]
        assert source.is_file(), meta
        fm, body, _ = split_front_matter(source.read_text())
        reply = ex["messages"][-1]["content"]
        if meta["task"] == "insight-title":
            assert reply == fm["title"]
        elif meta["task"] == "report-section":
            assert reply in body
        else:  # the whole body of the file it came from
            assert reply == body.strip(), meta
        assert [m["role"] for m in ex["messages"]] == ["user", "assistant"]


def test_instructions_name_the_task_and_carry_the_context(pantry):
    out, _ = pantry
    by_id = {ex["meta"]["id"]: ex for ex in load_examples(out / "train.jsonl") + load_examples(out / "heldout.jsonl")}
    ins = by_id["insight:INS-017"]["messages"][0]["content"]
    assert ins.startswith("Write an insight in our house template from these highlights.")
    assert "8 participants" in ins and "- H-03-04 (P4): " in ins  # the Signal count needs the study size
    rec = by_id["recommendation-from-draft:REC-009"]["messages"][0]["content"]
    assert "INS-017" in rec and "INS-023" in rec and "Draft:\nPin the running total" in rec
    section = by_id["report-section:RPT-S03#what-we-saw"]["messages"][0]["content"]
    assert section.startswith('Write the "What we saw" section') and "- INS-024:" in section
    term = by_id["definition:friction point"]["messages"][0]["content"]
    assert "Variants we do not use: pain point, pain-point, issue." in term


def test_glossary_style_and_config(pantry):
    out, _ = pantry
    terms = yaml.safe_load((out / "glossary.yaml").read_text())["terms"]
    assert len(terms) == 30 and all(t["rejected"] and t["definition"] for t in terms)
    assert {"term": "friction point", "rejected": ["pain point", "pain-point", "issue"]}.items() <= next(
        t for t in terms if t["term"] == "friction point"
    ).items()
    style = (out / "style.md").read_text()
    assert style.startswith("# Pantry Research house style")
    for label in ("**We saw**", "**Do:**", "## What we recommend"):
        assert label in style
    cfg = load_config(out / "config.yaml")
    for name in ("train", "heldout", "corpus", "glossary", "style"):
        assert Path(getattr(cfg.data, name)).exists(), name
    assert cfg.data.max_len >= 1024 and cfg.train.method == "lora"


def test_import_is_deterministic(pantry, tmp_path):
    out, _ = pantry
    import_repository([PANTRY], tmp_path / "again")
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_split_heldout_takes_whole_groups():
    examples = [{"meta": {"group": f"S{i % 10}", "n": i}} for i in range(100)] + [
        {"meta": {"n": 100 + i}} for i in range(5)
    ]
    groups = lambda exs: {e["meta"].get("group") for e in exs}  # noqa: E731
    train, held = split_heldout(examples, 0.2, seed=0)
    assert len(held) + len(train) == 105 and 0.2 * 105 <= len(held) < 0.2 * 105 + 10  # at most one group over
    assert not (groups(train) & groups(held)) - {None}  # a group is never on both sides
    assert split_heldout(examples, 0.2, seed=0) == (train, held)
    assert any(groups(split_heldout(examples, 0.2, seed=s)[1]) != groups(held) for s in range(1, 5))
    assert split_heldout(examples, 0.0, seed=0) == (examples, [])
    assert split_heldout(list(reversed(examples)), 0.2, seed=0)[1] == list(reversed(held))  # not order-dependent


# ------------------------------------------------------------------------------ small repositories


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def tiny_repo(root: Path) -> None:
    for n in (1, 2, 3):
        d = f"studies/S0{n}"
        write(
            root, f"{d}/study.md", f"---\ntype: study\nid: S0{n}\ntitle: Study {n}\nparticipants: 5\n---\nnotes {n}\n"
        )
        write(
            root,
            f"{d}/highlights.csv",
            f'Highlight ID,Participant,Note,Tags,Created\nH-{n}-1,P1,"said, {n}",a;b,2026-01-01\n',
        )
        write(
            root,
            f"{d}/INS-{n}.md",
            f"---\ntype: insight\nid: INS-{n}\nstudy: S0{n}\ntitle: T{n}\nhighlights: [H-{n}-1]\n"
            f"draft: plain draft {n}\n---\n**We saw** {n}\n",
        )
    write(
        root, "terms/basket.md", "---\ntype: glossary term\nterm: basket\nrejected: [cart]\n---\nWhat a planner buys.\n"
    )


def test_csv_highlights_take_their_study_from_the_folder(tmp_path):
    tiny_repo(tmp_path / "repo")
    write(tmp_path / "repo", "tool-settings.json", '{"theme": "dark"}')  # not a dataset: skipped inside a folder
    s = import_repository([tmp_path / "repo"], tmp_path / "out", heldout_fraction=0.3)
    assert [label for label, _, _ in s["skipped"]] == ["repo/tool-settings.json"]
    assert s["read"]["highlights"] == 3 and s["heldout"] + s["train"] == 10 and s["heldout"] >= 0.3 * 10
    by_id = {
        e["meta"]["id"]: e for name in ("train", "heldout") for e in load_examples(tmp_path / "out" / f"{name}.jsonl")
    }
    assert (
        "Study S02: Study 2\nMethod: 5 participants\n\nHighlights:\n- H-2-1 (P1): said, 2"
        in by_id["insight:INS-2"]["messages"][0]["content"]
    )


def test_generic_csv_map_and_jsonl_sources(tmp_path):
    tiny_repo(tmp_path / "repo")
    for csv_file in (tmp_path / "repo").rglob("*.csv"):
        csv_file.unlink()
    write(
        tmp_path, "export.csv", "ID,Text,Study\n" + "".join(f"H-{n}-1,from the export {n},S0{n}\n" for n in (1, 2, 3))
    )
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                    "meta": {"group": "G"},
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    s = import_repository(
        [tmp_path / "repo", tmp_path / "export.csv", extra],
        tmp_path / "out",
        heldout_fraction=0.0,
        csv_preset="generic",
        csv_map="id=ID,text=Text,group=Study",
    )
    assert s["read"]["highlights"] == 3 and s["heldout"] == 0 and s["train"] == 3 * 3 + 1 + 4
    examples = load_examples(tmp_path / "out" / "train.jsonl")
    assert [e["meta"]["source"] for e in examples if e["meta"]["task"] == "example"] == ["extra.jsonl"] * 4
    insight = next(e for e in examples if e["meta"]["id"] == "insight:INS-2")
    assert "- H-2-1: from the export 2" in insight["messages"][0]["content"]
    # a CSV that lacks the mapped columns is an error on its header line
    write(tmp_path, "other.csv", "Highlight ID,Note\nH-1-1,x\n")
    with pytest.raises(UserError, match=r"other.csv:1: no column 'ID', 'Text', 'Study'"):
        import_repository([tmp_path / "other.csv"], tmp_path / "out2", csv_map="id=ID,text=Text,group=Study")


def test_repository_errors_name_file_and_line(tmp_path):
    tiny_repo(tmp_path / "repo")
    write(
        tmp_path / "repo",
        "studies/S01/INS-9.md",
        "---\ntype: insight\nid: INS-9\nstudy: S09\nhighlights: [H-9-9]\n---\nx\n",
    )
    write(tmp_path / "repo", "studies/S01/odd.md", "---\ntype: insigth\n---\nx\n")  # a typo, not another tool's
    write(tmp_path / "repo", "studies/S01/dup.md", "---\ntype: insight\nid: INS-1\nstudy: S01\n---\nx\n")
    with pytest.raises(UserError) as err:
        import_repository([tmp_path / "repo"], tmp_path / "out")
    msg = str(err.value)
    assert "repo/studies/S01/INS-9.md:4: study S09 is not in the repository" in msg
    assert "repo/studies/S01/INS-9.md:5: highlights not found: H-9-9" in msg
    assert "repo/studies/S01/odd.md:2: unknown type 'insigth'. fix: insight?" in msg
    assert "repo/studies/S01/dup.md:3: id INS-1 is also used by repo/studies/S01/INS-1.md" in msg


def test_cli_import_prints_the_split(tmp_path, capsys):
    tiny_repo(tmp_path / "repo")
    assert main(["import", str(tmp_path / "repo"), "-o", str(tmp_path / "out"), "--heldout-fraction", "0.3"]) == 0
    text = capsys.readouterr().out
    assert "read 3 studies, 3 highlights, 3 insights, 1 terms" in text
    assert re.search(r"examples: \d+ train, \d+ held out \(held-out groups: S0\d\)", text)
    assert (tmp_path / "out" / "config.yaml").exists()
    assert main(["import", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
