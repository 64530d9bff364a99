"""`tunesmith import` on a team's folder as it is: Word, PDF, slides, exported wiki pages, Notion
markdown, a research tool's CSV exports, a glossary spreadsheet and a style guide, all written here
by the libraries that write each format, from text written for these tests. Plus the broken files
a real folder holds: each gets its one line, and the rest imports."""

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from tunesmith import UserError
from tunesmith.cli import main
from tunesmith.data import load_examples
from tunesmith.data.documents import guess_columns, outline
from tunesmith.data.readers import read_docx, read_html, read_pdf
from tunesmith.data.repository import import_repository
from tunesmith.testing_docs import write_docx, write_html, write_pdf, write_pptx, write_xlsx

CHECKOUT = """# Checkout drop-off

## Summary

Shoppers left at the delivery step because the fee appeared late and the slots sat behind a second tap.

## What we saw

Seven of nine participants paused at the delivery step before they chose a slot or gave up.

- The fee appeared only after the slot was chosen
- Two participants looked for a cheaper slot and gave up

| Step | Drop-off |
| --- | --- |
| Basket | 4% |
| Delivery | 31% |

## Recommendations

Show the delivery fee on the basket page, and show every slot of the week at once on one screen.
"""

READOUT = """# Quarterly readout: returns

## Summary

Returns take three screens where one would do, and the refund date is never shown to the shopper.

## Findings

Participants could not tell when their refund would arrive, so four of them phoned support to ask.

## Next steps

Show the refund date on the confirmation screen, and cut the returns flow down to a single screen.
"""

NOTION = """# Onboarding interviews

Status: Done
Owner: Priya

## Goal

Learn what new households expect from their first week of meal plans, before they pay for a box.

## What we heard

New households wanted a sample week they could change before paying, and a way to skip a night.
"""

WIKI = """# Support escalations

## Context

The support team escalates about forty tickets a week to the product team, most of them about refunds.

## Patterns

Refund questions make up most escalations, and nearly all of them ask when the money comes back.
"""


def team_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "reports").mkdir()
    write_docx(root / "reports" / "checkout.docx", CHECKOUT)
    write_pdf(root / "reports" / "readout.pdf", READOUT, blank_pages=(2,))
    (root / "notion").mkdir()
    (root / "notion" / "Onboarding interviews 0123456789abcdef0123456789abcdef.md").write_text(NOTION)
    (root / "wiki").mkdir()
    write_html(root / "wiki" / "support-escalations.html", WIKI)
    (root / "decks").mkdir()
    write_pptx(
        root / "decks" / "kickoff.pptx",
        "Returns study kickoff",
        [
            ("Why this study", ["Refund questions are the top reason shoppers call support each week"]),
            ("Plan", ["Eight interviews with recent returners", "A diary week after each return"]),
        ],
    )
    (root / "exports").mkdir()
    (root / "exports" / "highlights.csv").write_text(
        "Highlight ID,Project title,Highlight,Participant,Tags,Created at\n"
        'HL-1,Returns,"I rang them twice, just to ask when the money comes back.",P2,refund,2026-03-01\n'
        "HL-2,Returns,There was no date anywhere on the screen.,P5,refund;clarity,2026-03-02\n"
        "HL-3,Checkout,The fee jumped up at the very end.,P1,fees,2026-03-03\n"
    )
    (root / "exports" / "insights.csv").write_text(
        "Insight ID,Insight,Description,Supporting highlights,Project\n"
        "IN-1,Shoppers cannot see when a refund lands,Without a date on screen shoppers phone support to "
        'ask when the money comes back.,"HL-1, HL-2",Returns\n'
        "IN-2,Late fees feel like a trick,A fee that appears at the last step reads as a trick.,HL-3,Checkout\n"
    )
    write_xlsx(
        root / "glossary.xlsx",
        [
            ["Term", "Definition", "Don't use"],
            ["slot", "A delivery window the shopper books for a box.", "time slot, window"],
            ["returner", "A shopper who sent at least one box back.", "refunder"],
        ],
    )
    (root / "style-guide.md").write_text("# How we write\n\nPlain words. Numbers as digits. Name the shopper.\n")
    return root


def broken_files(root: Path) -> None:
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "corrupt.docx").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    write_pdf(root / "broken" / "locked.pdf", READOUT, password="secret")
    write_pdf(root / "broken" / "scanned.pdf", "", blank_pages=(1,))
    (root / "broken" / "empty.txt").write_text("")
    (root / "broken" / "photo.bin").write_bytes(b"\x00\x01\x02")
    (root / "broken" / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 64)
    (root / "broken" / "locked.xlsx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 64)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    folder = team_folder(root / "team")
    out = root / "out"
    summary = import_repository([folder], out, heldout_fraction=0.2)
    examples = load_examples(out / "train.jsonl") + load_examples(out / "heldout.jsonl")
    return folder, out, summary, examples


def by_task(examples, source):
    return {ex["meta"]["task"]: ex for ex in examples if ex["meta"]["source"] == source}


# ------------------------------------------------------------------------------------- readers


def test_docx_keeps_headings_lists_and_tables(tmp_path):
    write_docx(tmp_path / "c.docx", CHECKOUT)
    doc = read_docx(tmp_path / "c.docx", "c.docx")
    assert doc.title == "Checkout drop-off"
    text = doc.text
    assert "- The fee appeared only after the slot was chosen" in text
    assert "| Step | Drop-off |" in text and "| Delivery | 31% |" in text
    title, _, sections = outline(doc)
    assert title == "Checkout drop-off"
    assert [s["heading"] for s in sections] == ["Summary", "What we saw", "Recommendations"]


def test_pdf_pages_and_headings_from_the_text_layer(tmp_path):
    write_pdf(tmp_path / "r.pdf", READOUT, blank_pages=(2,))
    doc = read_pdf(tmp_path / "r.pdf", "r.pdf")
    assert doc.warnings == ["page 2: no text layer (scanned?); the page is left out"]
    title, _, sections = outline(doc)
    assert title == "Quarterly readout: returns"
    assert [s["heading"] for s in sections] == ["Summary", "Findings", "Next steps"]
    # wrapped lines are one paragraph again
    assert "Participants could not tell when their refund would arrive, so four of them phoned support to ask." in (
        doc.text
    )


def test_html_export_drops_navigation_and_keeps_tables(tmp_path):
    write_html(tmp_path / "p.html", CHECKOUT)
    text = read_html(tmp_path / "p.html", "p.html").text
    assert text.startswith("# Checkout drop-off")
    assert "| Delivery | 31% |" in text and "- Two participants looked for a cheaper slot and gave up" in text
    for chrome in ("space home", "Powered by", "Search Confluence", "analytics", "Home"):
        assert chrome not in text


@pytest.mark.parametrize(
    "header, kind, fields",
    [
        (["Highlight ID", "Participant", "Note", "Tags", "Created"], "highlights", {"id", "participant", "text"}),
        (["Highlight", "Tags", "Project", "Created at", "Participant"], "highlights", {"text", "group", "tags"}),
        (["Quote", "Customer", "Document", "Tags"], "highlights", {"text", "participant", "tags"}),
        (["Insight", "Description", "Linked highlights", "Study"], "insights", {"title", "text", "links", "group"}),
        (["Term", "Definition", "Don't use"], "glossary", {"term", "definition", "rejected"}),
        (["Preferred term", "Avoid"], "glossary", {"term", "rejected"}),
        (["Question", "Answer"], "examples", {"user", "assistant"}),
        (["Colour", "Size"], None, set()),
    ],
)
def test_exports_are_recognised_by_their_columns(header, kind, fields):
    got, columns = guess_columns(header)
    assert got == kind and set(columns) >= fields
    assert all(columns[f] in header for f in columns)


# ------------------------------------------------------------------------------------- a folder


def test_every_file_of_the_folder_becomes_examples_with_provenance(imported):
    folder, out, summary, examples = imported
    sources = {ex["meta"]["source"] for ex in examples}
    for name in (
        "team/reports/checkout.docx",
        "team/reports/readout.pdf",
        "team/notion/Onboarding interviews 0123456789abcdef0123456789abcdef.md",
        "team/wiki/support-escalations.html",
        "team/decks/kickoff.pptx",
        "team/exports/insights.csv",
        "team/glossary.xlsx",
    ):
        assert name in sources, name
    assert summary["read"]["documents"] == 5 and summary["read"]["terms"] == 2
    assert summary["skipped"] == [] and summary["warnings"] == [
        "team/reports/readout.pdf: page 2: no text layer (scanned?); the page is left out"
    ]
    for ex in examples:
        assert ex["meta"]["task"] and ex["meta"]["group"] or ex["meta"]["task"] == "definition"
        assert [m["role"] for m in ex["messages"]] == ["user", "assistant"]


def test_section_summary_and_title_examples_answer_with_the_teams_text(imported):
    _, _, _, examples = imported
    docx = by_task(examples, "team/reports/checkout.docx")
    assert set(docx) == {"section", "summary", "title"}
    sections = [ex for ex in examples if ex["meta"]["source"] == "team/reports/checkout.docx"]
    rec = next(ex for ex in sections if ex["meta"].get("section") == "Recommendations")
    assert rec["messages"][1]["content"] == (
        "Show the delivery fee on the basket page, and show every slot of the week at once on one screen."
    )
    prompt = rec["messages"][0]["content"]
    assert prompt.startswith('Write the "Recommendations" section of "Checkout drop-off"')
    assert "Summary:\nShoppers left at the delivery step" in prompt and "## What we saw" in prompt
    assert docx["summary"]["messages"][1]["content"].startswith("Shoppers left at the delivery step")
    assert "| Delivery | 31% |" in docx["summary"]["messages"][0]["content"]
    assert docx["title"]["messages"][1]["content"] == "Checkout drop-off"
    pdf = [ex for ex in examples if ex["meta"]["source"] == "team/reports/readout.pdf"]
    assert {ex["meta"].get("section"): ex["meta"].get("page") for ex in pdf if ex["meta"]["task"] == "section"} == {
        "Findings": 1,
        "Next steps": 1,
    }


def test_notion_properties_are_meta_not_text(imported):
    _, _, _, examples = imported
    notion = [ex for ex in examples if "Onboarding" in ex["meta"]["source"]]
    title = next(ex for ex in notion if ex["meta"]["task"] == "title")
    assert title["messages"][1]["content"] == "Onboarding interviews"
    assert not any("Status: Done" in m["content"] for ex in notion for m in ex["messages"])


def test_highlights_link_to_insights_and_glossary_and_style(imported):
    _, out, summary, examples = imported
    insight = next(ex for ex in examples if ex["meta"]["id"] == "insight:IN-1")
    prompt, reply = (m["content"] for m in insight["messages"])
    assert "- HL-1 (P2): I rang them twice, just to ask when the money comes back." in prompt
    assert "- HL-2 (P5):" in prompt and "HL-3" not in prompt
    assert reply.startswith("Shoppers cannot see when a refund lands\n\nWithout a date on screen")
    assert insight["meta"]["group"] == "Returns" and insight["meta"]["line"] == 2
    tables = {source: (kind, columns) for source, kind, columns, _ in summary["tables"]}
    assert tables["team/exports/highlights.csv"] == (
        "highlights",
        {
            "id": "Highlight ID",
            "text": "Highlight",
            "participant": "Participant",
            "tags": "Tags",
            "group": "Project title",
            "date": "Created at",
        },
    )
    terms = {t["term"]: t for t in yaml.safe_load((out / "glossary.yaml").read_text())["terms"]}
    assert terms["slot"] == {
        "term": "slot",
        "rejected": ["time slot", "window"],
        "definition": "A delivery window the shopper books for a box.",
    }
    definition = next(ex for ex in examples if ex["meta"]["id"] == "definition:returner")
    assert definition["messages"][1]["content"] == "A shopper who sent at least one box back."
    assert definition["meta"]["line"] == 3  # its row in the sheet
    assert (out / "style.md").read_text().startswith("# How we write\n\nPlain words.")


def test_no_document_on_both_sides_and_the_corpus_is_training_side(imported):
    _, out, summary, _ = imported
    train, held = load_examples(out / "train.jsonl"), load_examples(out / "heldout.jsonl")
    assert held and not {e["meta"]["group"] for e in train} & {e["meta"]["group"] for e in held}
    corpus = "\n".join(p.read_text() for p in (out / "corpus").glob("*.md"))
    for ex in held:
        reply = ex["messages"][1]["content"]
        assert reply not in corpus, ex["meta"]
    assert "Powered by" not in corpus


def test_broken_files_each_get_one_line_and_the_rest_imports(tmp_path, capsys):
    folder = team_folder(tmp_path / "team")
    broken_files(folder)
    assert main(["import", str(folder), "-o", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    lines = {
        line.split(":")[0].removeprefix("skipped "): line for line in text.splitlines() if line.startswith("skipped ")
    }
    assert "not a readable .docx" in lines["team/broken/corrupt.docx"] and "fix: open and save" in text
    assert "encrypted (password-protected). fix: save a copy without a password." in lines["team/broken/locked.pdf"]
    assert "no text layer on any of its 2 page(s) (scanned?). fix: run OCR" in lines["team/broken/scanned.pdf"]
    assert "empty. fix:" in lines["team/broken/empty.txt"]
    assert "not a known file type" in lines["team/broken/photo.bin"]
    assert "an old .doc file. fix: save it as .docx." in lines["team/broken/old.doc"]
    assert "encrypted (password-protected)" in lines["team/broken/locked.xlsx"]
    assert "skipped 7 file(s): " in text
    assert "read " in text and "5 documents" in text  # the rest imported
    assert (tmp_path / "out" / "train.jsonl").stat().st_size > 0


def test_a_zip_imports_like_the_folder_and_group_by_folder(tmp_path, imported):
    folder, _, summary, examples = imported
    archive = tmp_path / "team.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder.parent).as_posix())
        z.writestr("../escape.md", "# Out\n\n## Part\n\nA section that tries to write outside the folder it is in.\n")
    s = import_repository([archive], tmp_path / "out", heldout_fraction=0.2)
    zipped = load_examples(tmp_path / "out" / "train.jsonl") + load_examples(tmp_path / "out" / "heldout.jsonl")
    assert sorted(e["messages"][1]["content"] for e in zipped if "escape" not in e["meta"]["source"]) == sorted(
        e["messages"][1]["content"] for e in examples
    )
    assert "team/team/reports/checkout.docx" in {e["meta"]["source"] for e in zipped}
    assert not (tmp_path / "escape.md").exists()
    by_folder = import_repository([folder], tmp_path / "f", heldout_fraction=0.2, group_by="folder")
    groups = {e["meta"]["group"] for e in load_examples(tmp_path / "f" / "train.jsonl")}
    groups |= {e["meta"]["group"] for e in load_examples(tmp_path / "f" / "heldout.jsonl")}
    assert {"team/reports", "team/wiki"} <= groups and "team/reports/checkout.docx" not in groups
    assert s["read"]["documents"] == 6 and by_folder["read"]["documents"] == 5


def test_csv_map_overrides_the_guess_and_markdown_glossary(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "words.csv").write_text("Word,Means,Not\nbox,The weekly delivery.,parcel\n")
    (tmp_path / "t" / "glossary.md").write_text(
        "# Glossary\n\n| Term | Definition | Avoid |\n| --- | --- | --- |\n| slot | A delivery window. | time slot |\n"
    )
    s = import_repository([tmp_path / "t"], tmp_path / "out", csv_map="term=Word,definition=Means,rejected=Not")
    terms = yaml.safe_load((tmp_path / "out" / "glossary.yaml").read_text())["terms"]
    assert [(t["term"], t["rejected"]) for t in terms] == [("box", ["parcel"]), ("slot", ["time slot"])]
    assert ("t/words.csv", "glossary", {"term": "Word", "definition": "Means", "rejected": "Not"}, False) in s["tables"]


def test_an_unrecognised_export_says_how_to_map_it(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "sizes.csv").write_text("Colour,Size\nred,4\n")
    (tmp_path / "t" / "note.md").write_text(NOTION)
    s = import_repository([tmp_path / "t"], tmp_path / "out", heldout_fraction=0)
    ((label, what, fix),) = s["skipped"]
    assert label == "t/sizes.csv" and what == "columns not recognised (Colour, Size)" and "--csv-map" in fix
    assert json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])["meta"]["task"] == "section"


def test_the_bundled_wheelhouse_folder_imports_without_front_matter(tmp_path):
    import runpy

    build = Path(__file__).parents[1] / "src" / "tunesmith" / "examples" / "wheelhouse" / "build.py"
    folder = runpy.run_path(str(build))["build"](tmp_path / "wheelhouse")
    assert sorted(p.suffix for p in folder.rglob("*") if p.is_file()) == [".csv"] * 2 + [".docx"] * 5 + [
        ".md",
        *[".pdf"] * 5,
        ".xlsx",
    ]
    s = import_repository([folder], tmp_path / "out")
    assert s["skipped"] == [] and s["warnings"] == []
    assert s["read"]["documents"] == 10 and s["read"]["terms"] == 10 and s["read"]["export insights"] == 12
    assert {t for t, (tr, ho) in s["tasks"].items() if tr} == {
        "section",
        "summary",
        "title",
        "definition",
        "insight",
        "insight-title",
    }
    train, held = load_examples(tmp_path / "out" / "train.jsonl"), load_examples(tmp_path / "out" / "heldout.jsonl")
    assert not {e["meta"]["group"] for e in train} & {e["meta"]["group"] for e in held}
    # an insight whose project is named like a report goes to that report's side of the split
    insight = next(e for e in train + held if e["meta"]["id"] == "insight:wheelhouse/exports/insights-export.csv:2")
    assert insight["meta"]["group"] == "wheelhouse/reports/dock-finding.docx"
    assert (tmp_path / "out" / "style.md").read_text().startswith("# Wheelhouse research: voice and tone")


def test_the_workbench_upload_takes_the_same_material(tmp_path):
    """A .zip of a team's folder uploaded to the workbench goes through the same import."""
    from tunesmith.workbench.projects import create_project

    folder = team_folder(tmp_path / "team")
    archive = tmp_path / "team.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder.parent).as_posix())
    row = create_project(tmp_path / "projects", "Team", archive, "team.zip", "smollm2-135m-instruct")
    summary = json.loads(row["summary"])
    assert summary["read"]["documents"] == 5 and summary["read"]["terms"] == 2 and summary["skipped"] == []
    assert len(list((tmp_path / "projects").rglob("train.jsonl"))) == 1


def test_style_flag_takes_a_guide_whose_name_does_not_say_so(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "note.md").write_text(NOTION)
    write_docx(tmp_path / "house-rules.docx", "# House rules\n\n## Words\n\nSay rider, never user.\n")
    import_repository([tmp_path / "t"], tmp_path / "out", style=str(tmp_path / "house-rules.docx"))
    assert (tmp_path / "out" / "style.md").read_text() == "# House rules\n\n## Words\n\nSay rider, never user.\n"
    with pytest.raises(UserError, match=r"--style nope.md: not found"):
        import_repository([tmp_path / "t"], tmp_path / "out", style="nope.md")


def test_google_docs_and_notion_html_exports(tmp_path):
    """A Google Docs export is all document (its title a styled paragraph, a small table kept); a
    Notion export is an article whose header holds the title and the page properties."""
    (tmp_path / "gdoc.html").write_text(
        '<html><head><style>.c1{font-weight:700}</style></head><body class="doc-content">'
        '<p class="c3 title"><span>Returns interviews</span></p><h1><span>Summary</span></h1>'
        "<p><span>Riders could not tell when a refund lands, so they phone support to ask.</span></p>"
        "<h1>What we saw</h1><ul><li><span>Four riders phoned support within a day</span></li></ul>"
        "<table><tr><td><p>Rider</p></td><td><p>Calls</p></td></tr><tr><td><p>R2</p></td><td><p>2</p></td></tr>"
        "</table></body></html>"
    )
    doc = read_html(tmp_path / "gdoc.html", "gdoc.html")
    title, _, sections = outline(doc)
    assert title == "Returns interviews" and [s["heading"] for s in sections] == ["Summary", "What we saw"]
    assert "| Rider | Calls |\n| --- | --- |\n| R2 | 2 |" in doc.text and ".c1" not in doc.text
    (tmp_path / "notion.html").write_text(
        '<html><head><title>Onboarding interviews</title></head><body><article class="page sans"><header>'
        '<h1 class="page-title">Onboarding interviews</h1><table class="properties"><tr><th>Status</th>'
        '<td>Done</td></tr></table></header><div class="page-body"><h2>Goal</h2><p>Learn what new '
        "households expect from their first week of meal plans, before they pay for a box.</p></div>"
        "</article></body></html>"
    )
    doc = read_html(tmp_path / "notion.html", "notion.html")
    assert outline(doc)[0] == "Onboarding interviews" and "## Goal" in doc.text and "Done" not in doc.text
