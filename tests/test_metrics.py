"""Compare metrics on hand-worked examples: each expected value is worked out in the comment."""

import pytest

from tunesmith import UserError
from tunesmith.compare import metrics as M

GLOSSARY = [
    M.Term("basket", ["cart", "shopping cart", "order list"]),
    M.Term("planner", ["main user", "user"]),
    M.Term("cook-night", ["dinner occasion"]),
    M.Term("household rhythm", ["routine", "schedule"]),
]

INSIGHT = ["**We saw**", "**Because**", "**So**", "**Signal:**"]
RECOMMENDATION = ["**Do:**", "**For:**", "**Why:**", "**Measure:**", "**Size:**"]

STYLE = """# House style

## The insight template

```
**We saw** the pattern
**Because** the reason
**So** the implication
**Signal:** strong — 6 of 9 participants
```

## The recommendation template

```
**Do:** a verb
**For:** who
**Why:** INS-001 shows
**Measure:** one metric
**Size:** S, M or L
```

## Some other code block

```
**Only** one label
```
"""


def test_chrf_by_hand():
    # character n-grams of orders 1..6, beta 2, spaces ignored. "abc" vs "abd":
    # order 1: 2 of 3 match (P = R = 2/3); order 2: "ab" matches of {ab, bc} (1/2); order 3: 0/1.
    # Orders 4-6 have no n-grams and do not count: P = R = (2/3 + 1/2 + 0) / 3 = 0.3889 -> 38.89
    assert M.chrf("abc", "abd") == pytest.approx(38.8889, abs=1e-3)
    assert M.chrf("same words", "same words") == pytest.approx(100.0)
    assert M.chrf("xyz", "abc") == 0.0


def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" / "the cat lay on the mat" is "the cat on the mat": 5 of 6 words
    assert M.rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(100 * 5 / 6)
    # LCS "a c" = 2 words; P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3
    assert M.rouge_l("a c", "a b c d") == pytest.approx(100 * 2 / 3)


def test_length_ratio():
    assert M.length_ratio("one two three", "one two three four five six") == pytest.approx(0.5)
    assert M.length_ratio("x", "") == 1.0  # an empty reference counts as one word, no division by zero


def test_glossary_adherence_counts_expected_terms_only():
    ref = "A planner adds staples to the basket before each cook-night."  # expects basket, planner, cook-night
    # uses "Basket" (case) and "planners" (plural); misses cook-night -> 2 of 3
    assert M.glossary_adherence("The planners filled the Basket.", ref, GLOSSARY) == pytest.approx(2 / 3)
    assert M.glossary_adherence("nothing relevant", ref, GLOSSARY) == 0.0
    # "household rhythm" is whole-phrase: "household" alone does not use it
    assert M.glossary_adherence("every household", "the household rhythm", GLOSSARY) == 0.0
    assert M.glossary_adherence("their household rhythm", "the household rhythm", GLOSSARY) == 1.0
    # nothing expected: not applicable, not zero
    assert M.glossary_adherence("a basket", "no terms here", GLOSSARY) is None


def test_rejected_terms_per_100_words_whole_words():
    # 10 words; hits: "Users" (plural of user), "shopping cart" (once, not also "cart"), "cart" -> 3 / 10 * 100
    assert M.rejected_per_100_words("Users put it in the shopping cart and the cart", GLOSSARY) == pytest.approx(30.0)
    # whole words only: "cartridge", "username", "scheduled" are not hits; 5 words, 0 hits
    assert M.rejected_per_100_words("cartridge username was scheduled today", GLOSSARY) == 0.0
    # "Routine" at a sentence start, case-insensitive: 1 hit in 4 words
    assert M.rejected_per_100_words("Routine matters a lot", GLOSSARY) == pytest.approx(25.0)


def test_templates_read_from_style_guide_and_folder(tmp_path):
    (tmp_path / "style.md").write_text(STYLE)
    found = M.load_templates(tmp_path / "style.md")
    assert found == {"insight": INSIGHT, "recommendation": RECOMMENDATION}  # the one-label block is no template
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "report.md").write_text(
        "---\ntype: template\nname: report\n---\n## What we set out to learn\n<x>\n\n## Who took part\n<y>\n"
    )
    assert M.load_templates(None, folder) == {"report": ["## What we set out to learn", "## Who took part"]}


def test_template_conformance_in_order():
    good = "**We saw** 6 planners.\n**Because** time.\n**So** act.\n**Signal:** strong — 6 of 9 participants"
    assert M.template_conformance(good, INSIGHT) == 1.0
    swapped = "**Because** time.\n**We saw** 6 planners.\n**So** act.\n**Signal:** strong"
    assert M.template_conformance(swapped, INSIGHT) == 0.0
    missing = "**We saw** 6 planners.\n**So** act.\n**Signal:** strong"
    assert M.template_conformance(missing, INSIGHT) == 0.0
    unbold = "We saw 6 planners. Because time. So act. Signal: strong"
    assert M.template_conformance(unbold, INSIGHT) == 0.0


def test_template_for_reference_then_task():
    templates = {"insight": INSIGHT, "recommendation": RECOMMENDATION}
    rec = "**Do:** Add x.\n**For:** planners\n**Why:** INS-001 shows y.\n**Measure:** z\n**Size:** S"
    assert M.template_for(rec, "insight-to-something", templates) == "recommendation"  # the reference decides
    assert M.template_for("a plain title", "insight-title", templates) is None  # a title is not an insight
    assert M.template_for("plain", "draft-to-insight", templates) == "insight"  # the task names it


def test_score_row():
    templates = {"insight": INSIGHT}
    ref = "**We saw** planners fill the basket\n**Because** x\n**So** y\n**Signal:** weak — 1 of 9 participants"
    row = M.score(ref, ref, "insight", GLOSSARY, templates)
    assert row["chrf"] == pytest.approx(100.0) and row["rougeL"] == pytest.approx(100.0)
    assert row["glossary"] == 1.0 and row["rejected_per_100w"] == 0.0 and row["template"] == 1.0
    assert row["length_ratio"] == 1.0
    plain = M.score("users fill the cart", ref, "insight", GLOSSARY, templates)
    assert plain["template"] == 0.0 and plain["glossary"] == 0.0
    assert plain["rejected_per_100w"] == pytest.approx(50.0)  # "users", "cart" in 4 words
    assert M.score("x", "y")["glossary"] is None and M.score("x", "y")["template"] is None


def test_glossary_file_errors(tmp_path):
    bad = tmp_path / "glossary.yaml"
    bad.write_text("terms:\n  - rejected: [x]\n")
    with pytest.raises(UserError, match="entry 1"):
        M.load_glossary(bad)
    good = tmp_path / "g.yaml"
    good.write_text("terms:\n  - term: basket\n    rejected: [cart]\n    definition: the groceries\n")
    assert M.load_glossary(good) == [M.Term("basket", ["cart"], "the groceries")]
