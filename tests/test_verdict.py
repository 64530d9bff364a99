"""The verdict's evidence, on small constructed data: passages that fit a corpus without blank lines,
an arm that adds nothing flagged, answer accuracy over wording, several metrics with Holm, and the
two levers apart on a fictional fact-lookup task.

The fact-lookup data is the bundled example src/tunesmith/examples/brindlecombe: Brindlecombe
Haulage, a fictional company, and its record-retention policies, one policy per line of a handbook
with no blank lines. A scripted "model" stands in where training is not the point: it answers from
whatever policy lines its prompt holds (else it guesses), and its fine-tuned variant answers in the
team's own wording. So retrieval can supply the facts only if the real arms put the right passages
in the prompt.
"""

import json
import re
from pathlib import Path

import pytest

from tunesmith import UserError
from tunesmith.compare import metrics as M
from tunesmith.compare.arms import Context, build_prompts
from tunesmith.compare.retrieval import read_corpus, windows
from tunesmith.config import Config

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "examples" / "brindlecombe"


def policy_text() -> str:
    """The handbook: one policy per line, no blank line anywhere, so the file is a single 'paragraph'."""
    return (EXAMPLE / "handbook" / "retention-policies.txt").read_text()


def fact_examples() -> list[dict]:
    """The 16 held-out questions, each with its key fact in meta.answer."""
    return [json.loads(line) for line in (EXAMPLE / "heldout.jsonl").read_text().splitlines()]


POLICIES = [
    (re.search(r"keep (.+)\?", ex["messages"][0]["content"]).group(1), ex["meta"]["answer"]) for ex in fact_examples()
]


def scripted_reply(messages: list[dict], tuned: bool) -> str:
    """Answer from a policy line in the prompt, else guess 30 days; tuned: the team's wording."""
    kind = re.search(r"keep (.+)\?", messages[-1]["content"]).group(1)
    background = " ".join(m["content"] for m in messages if m["role"] == "system")
    found = re.search(rf"{re.escape(kind)} are kept for ([^,]+),", background)
    period = found.group(1) if found else "30 days"
    return (
        f"{kind.capitalize()} are kept for {period}."
        if tuned
        else f"I believe the usual period is {period}, give or take."
    )


def run_scripted(examples, passages, budget_words, arms=("zero-shot", "rag", "fine-tuned", "fine-tuned+rag")):
    from tunesmith.generation.api import Completion

    ctx = Context(passages=passages, rag_k=3)
    ctx.fits = lambda msgs: sum(len(m["content"].split()) for m in msgs) <= budget_words
    outputs = {}
    for name in arms:
        convs = build_prompts(name, examples, ctx)
        outputs[name] = [
            Completion(
                scripted_reply(c, tuned=name.startswith("fine-tuned")),
                sum(len(m["content"].split()) for m in c),
                12,
                0.1,
                "stop",
            )
            for c in convs
        ]
    return outputs, ctx


def summarise_scripted(examples, outputs, ctx, **compare):
    from tunesmith.compare.run import summarise

    cfg = Config()
    cfg.compare.bootstrap = 500
    for k, v in compare.items():
        setattr(cfg.compare, k, v)
    return summarise(cfg, examples, outputs, {}, list(outputs), [], {}, None, ctx.prompt_stats)


# ------------------------------------------------------------------------------------ passages


def test_a_corpus_without_blank_lines_becomes_passages_that_fit(tmp_path):
    (tmp_path / "policies.txt").write_text(policy_text())
    passages = read_corpus(tmp_path, max_words=60)
    assert len(passages) > 4 and all(len(p.text.split()) <= 60 for p in passages)
    # cut at line ends: every line whole in some passage, and neighbours share a line (overlap)
    lines = policy_text().strip().split("\n")
    assert all(any(line in p.text.split("\n") for p in passages) for line in lines)
    assert any(set(a.text.split("\n")) & set(b.text.split("\n")) for a, b in zip(passages, passages[1:]))


def test_windows_cut_at_sentences_then_words():
    sentences = " ".join(f"Sentence {i} has exactly six words." for i in range(10))  # 60 words, one line
    parts = windows(sentences, 20)
    assert all(len(p.split()) <= 20 for p in parts) and all(p.endswith(".") for p in parts)
    assert parts[0].startswith("Sentence 0") and parts[-1].endswith("Sentence 9 has exactly six words.")
    assert parts[1].startswith("Sentence 2")  # the last sentence of the first window is repeated (overlap)
    one_long = " ".join(f"w{i}" for i in range(50))  # no sentence end, no line break: cut between words
    assert [len(p.split()) for p in windows(one_long, 20)] == [20, 20, 10]


def test_rag_prompts_hold_passages_and_differ_from_zero_shot(tmp_path):
    (tmp_path / "policies.txt").write_text(policy_text())
    examples = fact_examples()
    outputs, ctx = run_scripted(
        examples, read_corpus(tmp_path, max_words=60), budget_words=400, arms=("zero-shot", "rag")
    )
    stats = ctx.prompt_stats
    assert stats["rag"]["mean_added"] == 3 and stats["rag"]["none_fit"] == 0
    assert stats["rag"]["fingerprint"] != stats["zero-shot"]["fingerprint"]
    # BM25 found the asked policy for every question, so the scripted model states every fact
    assert all(period in o.text for o, (_, period) in zip(outputs["rag"], POLICIES))


def test_an_arm_that_adds_nothing_is_flagged_and_not_counted(tmp_path):
    from tunesmith.compare.report import markdown, summary_table

    (tmp_path / "policies.txt").write_text(policy_text())
    examples = fact_examples()
    # a budget that holds the question but no passage: rag and fine-tuned+rag add nothing
    outputs, ctx = run_scripted(examples, read_corpus(tmp_path, max_words=60), budget_words=12)
    assert ctx.prompt_stats["rag"]["none_fit"] == len(examples)
    results = summarise_scripted(examples, outputs, ctx)
    rag = results["arms"]["rag"]
    assert rag["same_as"] == "zero-shot" and "none of the passages found fit" in rag["same_why"]
    assert results["arms"]["fine-tuned+rag"]["same_as"] == "fine-tuned"
    assert "rag" not in results["verdict"]["means"] and "fine-tuned+rag" not in results["verdict"]["means"]
    assert "cannot be told apart" in results["levers"]["paragraph"]
    report = markdown(results)
    assert (
        "rag = zero-shot: it added no passages to any prompt" in report and "not counted as separate evidence" in report
    )
    assert "rag =" in summary_table(results)


# ------------------------------------------------------------------------------------- metrics


def test_answer_accuracy_ranks_the_right_fact_above_the_right_wording():
    ref = "Invoices are kept for 180 days."
    wrong_fact = "Invoices are kept for 10 days."
    right_fact = "We hold on to them for 180 days"
    assert M.chrf(wrong_fact, ref) > M.chrf(right_fact, ref)  # the wording metric gets it backwards
    assert M.answer_accuracy(right_fact, "180 days") == 1.0 and M.answer_accuracy(wrong_fact, "180 days") == 0.0
    assert M.answer_accuracy("kept for 1800 days", "180 days") == 0.0  # whole words only
    # every fact needed; a fact may list alternatives
    answer = ["180 days", ["legal hold", "litigation hold"]]
    assert M.answer_accuracy("180 days, unless under a Litigation-Hold", answer) == 0.0  # "litigationhold"
    assert M.answer_accuracy("180 days, unless under a litigation hold.", answer) == 1.0
    assert M.answer_accuracy("180 days.", answer) == 0.0
    assert M.answer_accuracy("anything", None) is None


def test_exact_match_and_token_f1_squad_style():
    assert M.exact_match("The Basket!", "basket") == 1.0 and M.exact_match("a basket list", "basket") == 0.0
    # "kept for 180 days" vs "180 days": common 2, precision 2/4, recall 2/2 -> F1 2/3
    assert M.token_f1("kept for 180 days", "180 days") == pytest.approx(2 / 3)
    row = M.score("x " * 20, " ".join(["word"] * 13))  # a 13-word reference is long text
    assert row["exact_match"] is None and row["token_f1"] is None and row["answer"] is None


def test_the_primary_metric_fits_the_task():
    from tunesmith.compare.run import primary_metric
    from tunesmith.compare.verdict import primary_why

    facts = fact_examples()
    assert primary_metric("auto", facts)[0] == "answer"
    short = [{**ex, "meta": {"task": "retention"}} for ex in facts]
    assert primary_metric("auto", short)[0] == "token_f1"
    long_text = [
        {
            "messages": [{"role": "user", "content": "Write."}, {"role": "assistant", "content": "word " * 40}],
            "meta": {"task": "insight"},
        }
    ]
    metric, fits = primary_metric("auto", facts + long_text)
    why = primary_why("auto", metric, fits, 17)
    assert metric == "chrf" and "retention: answer accuracy" in why and "insight: chrF" in why
    assert primary_metric("rougeL", facts)[0] == "rougeL"
    assert primary_why("rougeL", "rougeL", {}, 16) == "set in the config (compare.primary_metric)"


def test_data_without_a_task_is_not_called_a_task():
    """Examples without meta.task are described by what they are, never as 'the scored tasks (no task: ...)'."""
    from tunesmith.compare.run import primary_metric
    from tunesmith.compare.verdict import primary_why

    untasked = [{**ex, "meta": {"answer": ex["meta"]["answer"]}} for ex in fact_examples()]
    essays = [
        {"messages": [{"role": "user", "content": "Write."}, {"role": "assistant", "content": "word " * 40}]}
        for _ in range(3)
    ]
    metric, fits = primary_metric("auto", untasked + essays)
    why = primary_why("auto", metric, fits, 19)
    assert metric == "chrf" and "task" not in why.replace("compare.tasks", "")
    assert why.startswith(
        "the scored examples call for different metrics (16 give key facts (meta.answer); 3 have long"
    )
    metric, fits = primary_metric("auto", fact_examples() + essays)  # tasks for some, none for others
    why = primary_why("auto", metric, fits, 19)
    assert "retention: answer accuracy; examples without meta.task: 3 have long references" in why
    assert "no task" not in why


def test_scripted_fact_lookup_ranks_retrieval_by_the_facts(tmp_path):
    """chrF alone would rank the fine-tuned arm (right wording, wrong facts) above rag; answer accuracy does not."""
    (tmp_path / "policies.txt").write_text(policy_text())
    examples = fact_examples()
    outputs, ctx = run_scripted(
        examples, read_corpus(tmp_path, max_words=60), budget_words=400, arms=("zero-shot", "rag", "fine-tuned")
    )
    results = summarise_scripted(examples, outputs, ctx)
    assert results["primary_metric"] == "answer"
    m = {n: a["metrics"] for n, a in results["arms"].items()}
    assert m["fine-tuned"]["chrf"]["mean"] > m["rag"]["chrf"]["mean"]
    assert m["rag"]["answer"]["mean"] == 1.0 and m["fine-tuned"]["answer"]["mean"] == 0.0
    assert results["verdict"]["recommend"] == "rag" and not results["verdict"]["fine_tune"]
    # decided on both metrics (Holm): the fine-tune wins on wording and loses on the facts, so no
    several = summarise_scripted(examples, outputs, ctx, decide_on="answer,token_f1")["verdict"]
    assert several["wins"] == ["token_f1"] and several["losses"] == ["answer"]
    assert several["fine_tune"] is False and several["recommend"] == "rag"
    assert "fine-tuning wins on token F1" in several["paragraph"]
    assert "loses on answer accuracy (-100.0 points against rag)" in several["paragraph"]


# ------------------------------------------------------------------------------ the two levers


def test_the_2x2_names_retrieval_as_the_lever_that_supplies_the_facts(tmp_path):
    from tunesmith.compare.report import markdown

    (tmp_path / "policies.txt").write_text(policy_text())
    examples = fact_examples()
    outputs, ctx = run_scripted(examples, read_corpus(tmp_path, max_words=60), budget_words=400)
    results = summarise_scripted(examples, outputs, ctx, decide_on="answer,token_f1")
    levers = {t["metric"]: t for t in results["levers"]["metrics"]}
    retrieval, tuning = levers["answer"]["retrieval"], levers["answer"]["fine-tuning"]
    assert retrieval[0] == pytest.approx(100.0) and retrieval[1] > 50  # every fact comes from the passages
    assert tuning == pytest.approx([0.0, 0.0, 0.0])  # the fine-tune's wording carries no fact
    assert levers["token_f1"]["fine-tuning"][1] > 0  # but it does supply the team's wording
    paragraph = results["levers"]["paragraph"]
    assert paragraph.startswith(
        "Retrieval is the lever that supplies the facts: it moves answer accuracy +100.0 points"
    )
    assert "The fine-tune supplies the answer words" in paragraph
    report = markdown(results)
    assert "## The two levers apart: retrieval and fine-tuning" in report
    assert "| answer accuracy | 0.0 | 100.0 | 0.0 | 100.0 | +100.0" in report
    # two decision metrics, Holm-corrected: fine-tuned+rag has the facts and the wording
    several = results["verdict"]
    assert several["wins"] == ["token_f1"] and several["losses"] == []
    assert results["verdict"]["fine_tune"] is True and results["verdict"]["recommend"] == "fine-tuned+rag"


# ------------------------------------------------------------------------------------ settings


def test_bad_decision_metrics_stop_compare_before_it_trains(tmp_path):
    from tunesmith.compare.run import compare

    cfg = Config()
    cfg.data.train, cfg.train.output_dir = str(tmp_path / "train.jsonl"), str(tmp_path / "run")
    cfg.compare.primary_metric = "chrF"
    with pytest.raises(UserError, match="compare.primary_metric: 'chrF' is not a metric. fix: auto or one of answer"):
        compare(cfg)
    cfg.compare.primary_metric, cfg.compare.decide_on = "auto", "answer,rejected_per_100w"
    with pytest.raises(UserError, match="'rejected_per_100w' cannot decide"):
        compare(cfg)
    cfg.compare.decide_on, cfg.compare.margins = "", "glossary=5,templates=5"
    with pytest.raises(UserError, match="compare.margins: 'templates' is not a metric that can decide. fix: one of"):
        compare(cfg)
    cfg.compare.margins = "glossary:5"
    with pytest.raises(UserError, match="compare.margins: 'glossary:5' is not metric=number"):
        compare(cfg)
    cfg.compare.margins, cfg.data.prompt = "", str(tmp_path / "missing-prompt.txt")
    with pytest.raises(UserError, match="data.prompt file not found"):
        compare(cfg)
    assert not (tmp_path / "run").exists()


def test_the_teams_own_prompt_makes_the_engineered_arm(tmp_path):
    from tunesmith.compare.arms import engineered_prompt

    ctx = Context(prompt="You are Brindlecombe's records assistant. Quote the policy number.")
    conv = engineered_prompt(fact_examples()[0], ctx)
    assert conv[0]["role"] == "system" and conv[0]["content"].startswith("You are Brindlecombe's records assistant.")
    assert "Glossary" not in conv[0]["content"] and conv[-1]["content"].startswith("How long")


def test_extra_top_level_keys_load_into_meta_with_one_warning_each(tmp_path, capsys):
    from tunesmith.data import load_examples
    from tunesmith.data.split import split_heldout

    rows = [
        {
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
            "group": f"g{i // 2}",
            "source": "wiki",
            "category": ["x", "y"][i % 2],
        }
        for i in range(8)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(path)
    assert len(examples) == 8 and examples[3]["meta"] == {"group": "g1", "source": "wiki", "category": "y"}
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3  # group, source, category: once each, not once per record
    assert (
        f"{path}:1: extra-key: top-level key 'group' (in 8 of 8 records)" in warnings[0]
        and "split group" in warnings[0]
    )
    train, held = split_heldout(examples, 0.25, seed=0)
    assert {ex["meta"]["group"] for ex in train}.isdisjoint({ex["meta"]["group"] for ex in held})  # whole groups


# ------------------------------------------------------------------------------ the decision


def test_decision_metrics_follow_what_the_team_supplied():
    from tunesmith.compare.run import decision_metrics

    row = {"chrf": 40.0, "glossary": 0.5, "template": 1.0}
    scores = {"zero-shot": [row, {**row, "glossary": None, "template": None}]}
    glossary, templates = [object()], {"insight": ["We saw", "Because"]}
    assert decision_metrics("", "chrf", [], {}, scores) == (["chrf"], {"chrf": "task-fit"})
    assert decision_metrics("", "chrf", glossary, {}, scores)[0] == ["chrf", "glossary"]
    assert decision_metrics("", "chrf", [], templates, scores)[0] == ["chrf", "template"]
    assert decision_metrics("", "chrf", glossary, templates, scores) == (
        ["chrf", "glossary", "template"],
        {"chrf": "task-fit", "glossary": "glossary", "template": "templates"},
    )
    # given, but applying to no scored example (no template-bound output): not a decision metric
    untemplated = {"zero-shot": [{**row, "template": None}]}
    assert decision_metrics("", "chrf", glossary, templates, untemplated)[0] == ["chrf", "glossary"]
    # compare.decide_on still overrides
    assert decision_metrics("answer,chrf", "chrf", glossary, templates, scores) == (
        ["answer", "chrf"],
        {"answer": "decide_on", "chrf": "decide_on"},
    )


def test_the_cost_sentence_speaks_of_the_recommended_fine_tuned_arm():
    """fine-tuned+rag pays for RAG's prompt: its cost sentence must not quote fine-tuned's savings."""
    from tunesmith.compare.run import _break_even
    from tunesmith.compare.verdict import cost_sentence

    cost = lambda prompt: {"prompt_tokens": prompt, "completion_tokens": 20}  # noqa: E731
    arms = {
        "zero-shot": {"status": "ok", "tuned": False, "cost": cost(40)},
        "rag": {"status": "ok", "tuned": False, "cost": cost(330)},
        "fine-tuned": {"status": "ok", "tuned": True, "cost": cost(40)},
        "fine-tuned+rag": {"status": "ok", "tuned": True, "cost": cost(330)},
    }
    assumptions = {"price_per_1k_tokens": 0.0002, "train_cost_per_hour": 1.0, "requests_per_month": 10000}
    training = {"train_seconds": 96.0, "train_cost": 96 / 3600}
    c = Config().compare
    results = {
        "verdict": {
            "recommend": "fine-tuned+rag",
            "fine_tune": True,
            "best_tuned": "fine-tuned+rag",
            "reference": "rag",
            "primary": "answer",
            "margins": {"answer": 2.0},
            "diffs": {"fine-tuned": [-30.0, -60.0, -5.0], "fine-tuned+rag": [31.0, -6.0, 62.0]},
        },
        "training": training,
        "assumptions": assumptions,
        "break_even": [r for n in ("fine-tuned", "fine-tuned+rag") for r in _break_even(arms, n, training, c)],
    }
    text = cost_sentence(results)
    assert text.startswith("Training took 1.6 minutes ($0.03 at $1/hour)")
    assert "fine-tuned+rag does not use fewer tokens per request than rag" in text
    assert "fine-tuned's" not in text
    results["verdict"].update(recommend="zero-shot", fine_tune=False, reference="zero-shot")  # a cheaper arm wins
    results["verdict"]["diffs"] = {"fine-tuned": [1.0, -2.0, 4.0], "fine-tuned+rag": [1.0, -2.0, 4.0]}
    assert "fine-tuned does not use fewer tokens per request than zero-shot" in cost_sentence(results)


_FILLER = (
    "The weekly plan felt long and fixed to most of the people we spoke with, so they came back to it only when a "
    "delivery window was about to close, and several said a sample plan for the first week would have helped."
)


def test_the_report_names_the_metric_that_kept_a_cheaper_arm_out():
    """The issue's case in a report: few-shot-fixed is cheaper and within the margin on chrF, but its
    glossary adherence is surely worse; the verdict keeps it out and says by which metric."""
    from tunesmith.compare.metrics import Term
    from tunesmith.compare.report import markdown, render_html
    from tunesmith.compare.run import summarise
    from tunesmith.generation.api import Completion

    examples = [
        {
            "messages": [{"role": "user", "content": f"Write insight {i}."}, {"role": "assistant", "content": ref}],
            "meta": {"task": "insight"},
        }
        for i, ref in enumerate(
            f"On day {i} of the study the planner left the basket open. " + _FILLER + " " + _FILLER for i in range(30)
        )
    ]
    good = [ex["messages"][1]["content"] for ex in examples]
    worse = [t.replace("basket", "cart") for t in good]  # the retired variant, all else the same
    outputs = {
        "few-shot-fixed": [Completion(t, 600, 20, 0.1, "stop") for t in worse],
        "few-shot-retrieved": [Completion(t, 620, 20, 0.1, "stop") for t in good],
    }
    glossary = [Term("basket", ["cart"], "groceries"), Term("planner", ["user"], "the one who plans")]
    cfg = Config()
    cfg.compare.bootstrap = 500
    results = summarise(cfg, examples, outputs, {}, list(outputs), glossary, {}, None, {}, heldout_total=90)
    v = results["verdict"]
    assert results["decide_on"] == ["chrf", "glossary"]
    assert v["reference"] == "few-shot-retrieved" and v["recommend"] == "few-shot-retrieved"
    assert v["cheaper"][0]["arm"] == "few-shot-fixed" and v["cheaper"][0]["kept_out_by"] == ["glossary"]
    assert "few-shot-fixed could be more than the margin behind (glossary adherence -50.0 points" in v["paragraph"]
    report = markdown(results)
    assert "- glossary adherence: the team supplied a glossary (2 terms); margin 2 percentage points" in report
    assert "| few-shot-fixed | 620 |" in report and "no: kept out by glossary adherence |" in report
    # report.html: the same sections through markdown-it; text that looks like HTML is shown, never run
    results["arms"]["few-shot-fixed"]["prompts"] = {"adds": "<script>alert(1)</script>", "mean_added": 1.0}
    results["arms"]["few-shot-fixed"]["prompts"].update(none_fit=0, none_found=0, prompts=30)
    page = render_html(results, [], [])
    assert "<h2>The decision</h2>" in page
    assert "<td>no: kept out by glossary adherence</td>" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
