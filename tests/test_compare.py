"""End to end on a tiny random model: every arm runs, the report is written, skips are explained.
Also the BM25 wrapper the retrieval arms use."""

import json
import math
import shutil
from pathlib import Path

import pytest

from tunesmith.compare import arms as A
from tunesmith.compare.retrieval import BM25Index, read_corpus
from tunesmith.config import Config

PANTRY = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "examples" / "pantry"

INSIGHT = (
    "**We saw** {n} planners left the basket open on day two.\n**Because** the weekly plan felt {w}.\n"
    "**So** the first-week experience should {s}.\n**Signal:** moderate — {n} of 9 participants"
)


def _ex(task, user, reply, i, group):
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        "meta": {"source": f"studies/{group}.md", "id": f"{task}:{i}", "group": group, "task": task},
    }


def _examples(start, count, group):
    out = []
    for i in range(start, start + count):
        if i % 3 == 0:
            out.append(
                _ex(
                    "insight",
                    f"Write an insight from these highlights: H-{i} the cart was left open, planner {i} gave up.",
                    INSIGHT.format(n=i % 9 + 1, w=["long", "vague", "fixed"][i % 3], s="show a sample plan"),
                    i,
                    group,
                )
            )
        elif i % 3 == 1:
            out.append(
                _ex(
                    "definition",
                    f"Define the glossary term basket number {i}.",
                    f"The groceries a planner is about to buy, item {i}, until checkout.",
                    i,
                    group,
                )
            )
        else:
            out.append(
                _ex(
                    "insight-title",
                    f"Write a title for insight {i} about delivery windows.",
                    f"Planners pick a delivery window {i} days ahead",
                    i,
                    group,
                )
            )
    return out


def _write(path, examples):
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    _write(d / "train.jsonl", _examples(0, 12, "S01"))
    _write(d / "heldout.jsonl", _examples(100, 6, "S09"))
    (d / "corpus").mkdir()
    (d / "corpus" / "S01-report.md").write_text(
        "---\ntype: report\n---\n## What we saw\n\nPlanners left the basket open.\n\n"
        "## What we recommend\n\nShow a sample weekly plan first.\n"
    )
    (d / "corpus" / "S02-notes.md").write_text("Delivery windows fill up on Saturday mornings.\n")
    (d / "glossary.yaml").write_text(
        "terms:\n  - term: basket\n    rejected: [cart]\n    definition: groceries\n"
        "  - term: planner\n    rejected: [user]\n    definition: the one who plans\n"
    )
    shutil.copy(PANTRY / "style.md", d / "style.md")
    return d


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, tiny_model_dir):
    """A run directory as tunesmith.train writes it: a LoRA adapter on the tiny model in RUN/final,
    with non-zero B matrices so the fine-tuned arm really differs from its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("run")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(run / "final")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run / "final")
    cfg_path = run / "final" / "adapter_config.json"
    adapter = json.loads(cfg_path.read_text())
    adapter["base_model_name_or_path"] = str(tiny_model_dir)
    cfg_path.write_text(json.dumps(adapter))
    (run / "summary.json").write_text(json.dumps({"steps": 3, "train_seconds": 360.0, "tokens": 1200, "device": "cpu"}))
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 - 0.5 * s}) + "\n" for s in (1, 2, 3))
        + json.dumps({"step": 3, "eval_loss": 2.2, "eval_ppl": 9.0})
        + "\n"
    )
    return run


def _config(data_dir, tiny_model_dir, out, **data):
    cfg = Config()
    cfg.model.name = str(tiny_model_dir)
    cfg.data.train, cfg.data.heldout = str(data_dir / "train.jsonl"), str(data_dir / "heldout.jsonl")
    cfg.data.corpus, cfg.data.glossary, cfg.data.style = (
        str(data_dir / "corpus"),
        str(data_dir / "glossary.yaml"),
        str(data_dir / "style.md"),
    )
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.generate.max_new_tokens, cfg.generate.batch_size = 6, 4
    cfg.compare.output_dir, cfg.compare.k_shots, cfg.compare.rag_k, cfg.compare.bootstrap = str(out), 2, 2, 200
    cfg.compare.train_cost_per_hour = 1.0
    return cfg


def test_compare_end_to_end_every_arm(data_dir, tiny_model_dir, tuned_run, tmp_path, capsys):
    from tunesmith.compare.run import compare

    out = compare(_config(data_dir, tiny_model_dir, tmp_path / "report"), run=tuned_run)
    for name in ("report.html", "report.md", "results.json", "samples.jsonl"):
        assert (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == list(A.ARMS)
    assert all(a["status"] == "ok" for a in results["arms"].values())
    cost = {n: a["cost"]["prompt_tokens"] for n, a in results["arms"].items()}
    # the fine-tuned arm sees exactly the zero-shot prompts; everything else adds to them
    assert cost["fine-tuned"] == cost["zero-shot"] and cost["fine-tuned+rag"] == cost["rag"]
    for arm in ("engineered-prompt", "few-shot-fixed", "few-shot-retrieved", "rag"):
        assert cost[arm] > cost["zero-shot"] + 10, arm
    # one-off training: 360 s at $1/hour
    assert results["training"]["train_cost"] == pytest.approx(0.1)
    assert {r["against"] for r in results["break_even"]} == {
        "zero-shot",
        "engineered-prompt",
        "few-shot-fixed",
        "few-shot-retrieved",
        "rag",
    }
    # the reference is the best arm that needs no training, on the primary metric; fine-tuning is
    # recommended exactly when the rule said so
    primary, verdict = results["primary_metric"], results["verdict"]
    means = {
        n: a["metrics"][primary]["mean"]
        for n, a in results["arms"].items()
        if not a["tuned"] and "same_as" not in a and not math.isnan(a["metrics"][primary]["mean"])
    }
    assert verdict["reference"] in means and means[verdict["reference"]] == max(means.values())
    assert results["arms"][verdict["recommend"]]["tuned"] == verdict["fine_tune"]
    assert results["arms"]["zero-shot"]["metrics"]["template"]["n"] == 2  # the two insights of six held-out examples

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(set(s["outputs"]) == set(A.ARMS) for s in samples)
    # the adapter is really applied: its outputs differ from the base model's on the same prompts
    assert any(s["outputs"]["fine-tuned"]["text"] != s["outputs"]["zero-shot"]["text"] for s in samples)

    # a glossary and templates were given, so they decide with the task-fit metric, each for its reason
    assert results["decide_on"] == ["chrf", "glossary", "template"]
    assert results["decide_why"] == {"chrf": "task-fit", "glossary": "glossary", "template": "templates"}
    assert results["seconds_per_reply"] > 0 and results["heldout_total"] == results["scorable"] == 6

    page = (out / "report.html").read_text()
    # a bar chart per metric that fits a scored task (token F1 for the short references; exact match
    # fits none, so it is left out with its reason but kept in results.json), quality vs cost, the loss curve
    assert page.count("<svg") == 7 + 2
    assert results["arms"]["zero-shot"]["metrics"]["exact_match"]["n"] == 4
    assert "exact match, which fits none of the scored tasks: definition, insight, insight-title" in page
    assert "<h2>The decision</h2>" in page and "the team supplied a glossary (2 terms)" in page
    assert all(name in page for name in A.ARMS)
    assert not any(ref in page for ref in ("src=", "href=", "<link", "<script"))  # self-contained
    assert "Verdict:" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "few-shot-retrieved" in printed and "Δ" in printed
    assert "(exact match left out: it fits none of the scored tasks" in printed and "  EM  " not in printed


def test_compare_skips_arms_that_cannot_run(data_dir, tiny_model_dir, tmp_path):
    from tunesmith.compare.run import compare

    empty_run = tmp_path / "unfinished-run"
    empty_run.mkdir()
    cfg = _config(data_dir, tiny_model_dir, tmp_path / "report", corpus="", style="", glossary="")
    cfg.compare.arms = "zero-shot,engineered-prompt,rag,fine-tuned"
    results = json.loads((compare(cfg, run=empty_run) / "results.json").read_text())
    arms = results["arms"]
    assert arms["zero-shot"]["status"] == "ok"
    assert arms["rag"]["status"] == "skipped" and "data.corpus" in arms["rag"]["reason"]
    assert arms["engineered-prompt"]["status"] == "skipped" and "data.style" in arms["engineered-prompt"]["reason"]
    assert arms["fine-tuned"]["status"] == "skipped" and "RUN/final" in arms["fine-tuned"]["reason"]
    assert results["verdict"]["recommend"] == "zero-shot"
    assert results["decide_on"] == ["chrf"]  # no glossary, no templates: the task-fit metric alone


def test_prompt_budget_limits_shots(data_dir, tiny_model_dir):
    from tunesmith.data import load_examples
    from tunesmith.generation.api import encode_prompts
    from tunesmith.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    train = load_examples(data_dir / "train.jsonl")
    example = load_examples(data_dir / "heldout.jsonl")[0]
    size = lambda m: len(encode_prompts(tok, [m])[0])  # noqa: E731
    ctx = A.Context(train=train, k_shots=3)
    full = A.few_shot_retrieved(example, ctx)
    assert sum(m["role"] == "assistant" for m in full) == 3
    ctx.fits = lambda m: size(m) <= size(full) - 1  # one token short of three shots: two fit
    assert sum(m["role"] == "assistant" for m in A.few_shot_retrieved(example, ctx)) == 2
    # retrieved shots are of the held-out example's own task, and its prompt comes last
    assert all(A.task_of(train[i]) == "insight" for i in A._same_task(ctx, "insight"))
    assert full[-1] == A.prompt_of(example)[-1]


def test_bm25_ranks_and_filters():
    docs = [
        "the basket total surprised the planner at checkout",
        "delivery windows on saturday",
        "baskets of staples added twice",
        "nothing in common here",
    ]
    index = BM25Index(docs)
    hits = index.search("basket staples", k=2)
    assert [i for i, _ in hits] == [2, 0]  # two matching words (plural folded) beat one
    assert hits[0][1] > hits[1][1] > 0
    assert [i for i, _ in index.search("basket", k=5, allowed=[1, 3])] == [1, 3]  # only allowed positions
    assert index.search("zebra", k=1)[0][1] == 0.0  # unknown words score nothing, no error
    assert BM25Index([]).search("anything", k=3) == []


def test_read_corpus_cuts_paragraphs_and_drops_front_matter(tmp_path):
    (tmp_path / "a.md").write_text("---\ntype: study\n---\n" + "\n\n".join(" ".join(["word"] * 50) for _ in range(5)))
    passages = read_corpus(tmp_path, max_words=120)
    assert [len(p.text.split()) for p in passages] == [100, 100, 50]  # two 50-word paragraphs fit in 120
    assert all("type: study" not in p.text for p in passages) and passages[0].source == "a.md"


def test_demo_profiles_are_valid_config_overrides():
    from tunesmith.config import load_config
    from tunesmith.demo import PROFILES

    full, quick = load_config(None, PROFILES["full"]), load_config(None, PROFILES["quick"])
    assert quick.train.max_steps < full.train.max_steps and quick.compare.max_examples < full.compare.max_examples
    # enough held-out examples for an interval worth reading (4 per task), and room for the longest
    # reference reply of the bundled example (127 tokens), in about 10 minutes on 2 cores
    assert full.compare.max_examples >= 24 and full.generate.max_new_tokens >= 128


def test_reused_prefix_gives_the_same_replies(tiny_model):
    """The engineered arm's long shared system prompt is computed once; nothing else changes."""
    from tunesmith.generation.api import encode_prompts, generate
    from tunesmith.generation.engine import Engine, EngineConfig, Request

    model, tok = tiny_model
    guide = (PANTRY / "style.md").read_text()
    convs = [
        [{"role": "system", "content": guide}, {"role": "user", "content": "why? " * (i % 4 + 1)}] for i in range(5)
    ]
    plain = generate(model, tok, convs, max_new_tokens=8, batch_size=2, reuse_prefix=False)
    reused = generate(model, tok, convs, max_new_tokens=8, batch_size=2, reuse_prefix=True)
    assert [c.text for c in reused] == [c.text for c in plain]
    assert [c.prompt_tokens for c in reused] == [c.prompt_tokens for c in plain]
    prompts = encode_prompts(tok, convs)
    engine = Engine(model, tok, EngineConfig(max_rows=2))
    engine.run([Request(p, max_new_tokens=2) for p in prompts])
    common = next(j for j in range(len(prompts[0])) if any(p[j] != prompts[0][j] for p in prompts))
    assert common > 500 and engine.stats["reused_tokens"] >= 4 * common  # the whole guide, computed once
    assert engine.stats["prefill_tokens"] == sum(map(len, prompts)) - engine.stats["reused_tokens"]


def test_compare_trains_first_and_draws_the_learning_curve(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    """Without --run, compare trains one (tunesmith.train) and, asked to, trains on 25 % and 50 %."""
    from tunesmith.compare import run as compare_run
    from tunesmith.compare.run import compare

    loads = []  # the learning curve's models load as the arms' do (trust_remote_code included)
    real_load_model = compare_run.load_model
    monkeypatch.setattr(
        compare_run,
        "load_model",
        lambda cfg, spec, tuned: loads.append((spec, tuned)) or real_load_model(cfg, spec, tuned),
    )

    cfg = _config(data_dir, tiny_model_dir, tmp_path / "report")
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.batch_size = str(tmp_path / "run"), 2, 2
    cfg.data.max_len = 256
    cfg.compare.arms, cfg.compare.learning_curve = "zero-shot,fine-tuned", True
    results = json.loads((compare(cfg) / "results.json").read_text())
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()
    assert results["run"] == str(tmp_path / "run") and results["training"]["steps"] == 2
    assert [p["fraction"] for p in results["learning_curve"]] == [0.25, 0.5, 1.0]
    assert [p["examples"] for p in results["learning_curve"]] == [3, 6, 12]  # of 12 training examples
    assert results["learning_curve"][-1]["chrf"] == pytest.approx(
        results["arms"]["fine-tuned"]["metrics"]["chrf"]["mean"]
    )
    assert "Learning curve" in (tmp_path / "report" / "report.md").read_text()
    assert [tuned for _, tuned in loads] == [False, True, True, True]  # base, fine-tuned, 25 %, 50 %
    assert "run-25" in loads[2][0] and "run-50" in loads[3][0]


def test_a_bad_decoding_setting_stops_compare_before_it_trains(data_dir, tiny_model_dir, tmp_path):
    from tunesmith import UserError
    from tunesmith.compare.run import compare

    cfg = _config(data_dir, tiny_model_dir, tmp_path / "report")
    cfg.train.output_dir = str(tmp_path / "run")
    cfg.generate.max_new_tokens = 0
    with pytest.raises(UserError, match=r"generate.max_new_tokens must be at least 1, got 0"):
        compare(cfg)
    assert not (tmp_path / "run").exists()  # nothing was trained


def test_compare_end_to_end_on_a_corpus_without_blank_lines(tiny_model_dir, tmp_path, capsys):
    """One record per line, no blank line: rag gets passages that fit; with too small a budget it
    gets none, and the report says rag is zero-shot under another name."""
    from test_verdict import fact_examples, policy_text

    from tunesmith.compare.run import compare

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "policies.txt").write_text(policy_text())
    _write(tmp_path / "heldout.jsonl", fact_examples()[:4])
    cfg = Config()
    cfg.model.name, cfg.data.heldout, cfg.data.corpus = (
        str(tiny_model_dir),
        str(tmp_path / "heldout.jsonl"),
        str(tmp_path / "corpus"),
    )
    cfg.generate.max_new_tokens, cfg.generate.batch_size = 4, 4
    cfg.compare.arms, cfg.compare.bootstrap, cfg.compare.passage_words = "zero-shot,rag", 100, 60
    cfg.compare.output_dir, cfg.compare.max_prompt_tokens = str(tmp_path / "fits"), 600
    results = json.loads((compare(cfg) / "results.json").read_text())
    rag = results["arms"]["rag"]
    assert results["primary_metric"] == "answer"
    assert rag["prompts"]["mean_added"] == 3 and "same_as" not in rag
    assert rag["cost"]["prompt_tokens"] > results["arms"]["zero-shot"]["cost"]["prompt_tokens"] + 100

    cfg.compare.output_dir, cfg.compare.max_prompt_tokens = (
        str(tmp_path / "tight"),
        60,
    )  # the question fits, no passage does
    capsys.readouterr()
    results = json.loads((compare(cfg) / "results.json").read_text())
    rag = results["arms"]["rag"]
    assert rag["same_as"] == "zero-shot" and rag["prompts"]["none_fit"] == 4
    assert rag["cost"]["prompt_tokens"] == results["arms"]["zero-shot"]["cost"]["prompt_tokens"]
    assert "warning: rag = zero-shot: it added no passages to any prompt" in capsys.readouterr().out
