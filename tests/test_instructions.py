"""The verifiable instructions: every checker with a reply that follows it and one that does not,
IFEval's strict and loose readings on constructed replies, and the bundled and user files."""

import json

import pytest

from tunesmith import UserError
from tunesmith.compare import instructions as I

# checker, args, a reply that follows it, a reply that does not
CASES = [
    ("word_count", {"at_most": 5}, "Bread dries out slowly.", "Bread dries out because starch crystallises again."),
    ("word_count", {"at_least": 4}, "Starch crystallises over days.", "Starch crystallises."),
    ("sentence_count", {"at_least": 2, "at_most": 2}, "It rains. Then it stops.", "It rains. It stops. It rains."),
    ("paragraph_count", {"exactly": 2}, "First part.\n\nSecond part.", "One block\nwith two lines."),
    ("bullet_count", {"exactly": 3}, "Tips:\n- water\n* light\n1. soil", "- water\n- light"),
    ("sections", {"marker": "Section", "exactly": 2}, "Section 1\nGears.\nSECTION 2\nHills.", "Section 1\nGears."),
    ("include_words", {"words": ["honey", "bees"]}, "Bees make honey.", "Bees make wax."),
    ("forbid_words", {"words": ["very"]}, "Everyone is busy.", "It is very busy."),
    ("word_frequency", {"word": "tide", "at_least": 2}, "A tide, then another tide.", "Tides rise; one tide."),
    ("json_format", {}, '```json\n{"topic": "rain"}\n```', "topic: rain"),
    ("markdown_heading", {"at_least": 1}, "# Rain\nDrops form.", "#Rain is not a heading"),
    ("highlighted", {"at_least": 2}, "A *first* and a **second** one.", "Only *one* here."),
    ("placeholders", {"at_least": 2}, "Dear [name], see you at [place].", "Dear [name], see you soon."),
    ("starts_with", {"phrase": "Here is"}, "here is the answer.", "The answer: here is"),
    ("ends_with", {"phrase": "That is all."}, "Tides follow the moon. That is all.", "That is all. Tides follow."),
    ("quoted", {}, '"Cats purr when calm."', 'Cats purr "when calm".'),
    ("postscript", {"marker": "P.S."}, "Thanks!\nP.S. bring a hat.", "Thanks! PS bring a hat."),
    ("lowercase", {}, "all lower case here.", "Not all lower case."),
    ("uppercase", {}, "ALL CAPITALS, 2 TIMES.", "ALL CAPITALS but one."),
    ("capital_words", {"at_most": 1}, "Only NASA shouts.", "NASA and ESA both shout."),
    ("no_commas", {}, "No commas at all.", "One, two."),
]


@pytest.mark.parametrize("name,args,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_passes_and_fails(name, args, good, bad):
    check = {"checker": name, "args": args}
    assert I.check(good, check) is True
    assert I.check(bad, check) is False


def test_every_checker_has_a_case_and_a_category():
    assert {c[0] for c in CASES} == set(I.CHECKERS)
    assert all(isinstance(cat, str) and cat for _, cat in I.CHECKERS.values())


def test_loose_variants_are_ifevals_eight():
    # the reply; without the first line; without the last; without both; each with asterisks removed
    reply = "Sure!\n**Bold** body\nHope that helps"
    assert I.loose_variants(reply) == [
        reply,
        "**Bold** body\nHope that helps",
        "Sure!\n**Bold** body",
        "**Bold** body",
        "Sure!\nBold body\nHope that helps",
        "Bold body\nHope that helps",
        "Sure!\nBold body",
        "Bold body",
    ]
    assert I.loose_variants("one line") == ["one line", "one line"]  # the empty cuts are dropped


def test_strict_and_loose_on_constructed_replies():
    json_check = [{"checker": "json_format", "args": {}}]
    # a chatty first line breaks JSON strictly; loose drops the first line and finds it
    assert I.follows('Here you go:\n{"topic": "rain"}', json_check) == ([False], [True])
    # a last line after the ending phrase: loose drops it
    end = [{"checker": "ends_with", "args": {"phrase": "That is all."}}]
    assert I.follows("Tides follow the moon. That is all.\nAnything else?", end) == ([False], [True])
    # markdown asterisks around the start: loose strips them
    start = [{"checker": "starts_with", "args": {"phrase": "Here is"}}]
    assert I.follows("**Here is** the gist.", start) == ([False], [True])
    # a reply that follows nothing in any variant is not rescued
    assert I.follows("no json here\nnor here", json_check) == ([False], [False])
    # several instructions: judged one by one
    two = [{"checker": "no_commas", "args": {}}, {"checker": "word_count", "args": {"at_most": 3}}]
    assert I.follows("One, two", two) == ([False, True], [False, True])


def test_bundled_set_is_150_named_checks_over_every_kind():
    items = I.load_instructions()
    assert len(items) == 150 and len({it["id"] for it in items}) == 150
    used = {c["checker"] for it in items for c in it["checks"]}
    assert used == set(I.CHECKERS)  # every checker is exercised by the bundled set
    prompts = I.load_general_prompts()
    assert len(prompts) == 100 and len(set(prompts)) == 100


@pytest.mark.parametrize(
    "line,words",
    [
        ('{"prompt": "x", "checks": [{"checker": "word_cont", "args": {}}]}', ["unknown checker 'word_cont'", "fix:"]),
        (
            '{"prompt": "x", "checks": [{"checker": "word_count", "args": {"most": 3}}]}',
            ["no argument 'most'", "at_most"],
        ),
        ('{"prompt": "x"}', ['"checks"', "neither"]),
        ('{"checks": []}', ['"prompt"']),
        ("not json", ["not valid JSON"]),
    ],
)
def test_a_wrong_user_file_names_the_line_and_the_fix(tmp_path, line, words):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "ok", "reference": "fine"}\n' + line + "\n")
    with pytest.raises(UserError) as err:
        I.load_instructions(path)
    assert f"{path}:2:" in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_a_user_file_with_checks_and_references_loads(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "prompt": "Say hi in lowercase.", "checks": [{"checker": "lowercase"}]},
        {"prompt": "Capital of France?", "reference": "Paris"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = I.load_instructions(path)
    assert [it["id"] for it in items] == ["a", "mine:2"]
