"""Side effects of a fine-tune: drift against an independent KL, the section's numbers on
constructed replies, and end to end a tiny model taught to answer in one fixed template — it
loses general instruction following, the report says which kinds, and train.replay keeps them."""

import json
import random

import pytest

from tunesmith import UserError
from tunesmith.compare import side_effects as S
from tunesmith.config import Config


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The base model's cached replies go to this test's folder, not the user's ~/.cache."""
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))


def _conv(prompt, reply):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


CONVS = [
    _conv("Why do leaves change colour?", "chlorophyll fades in autumn and other pigments show"),
    _conv("How is glass made?", "sand is melted with soda and lime, then cooled"),
    _conv("What is a prime number?", "a number with exactly two divisors"),
]


def test_reply_kl_matches_torch_kl_div_and_is_zero_for_an_adapter_that_changes_nothing(
    tiny_model_dir, tokenizer, tmp_path, one_thread
):
    import torch
    import torch.nn.functional as F

    from tunesmith.data.batches import encode
    from tunesmith.models import load
    from tunesmith.testing import make_tiny_lora_run

    tuned, tok = load(str(make_tiny_lora_run(tmp_path / "run", tiny_model_dir, tokenizer)), device="cpu")
    base, _ = load(str(tiny_model_dir), device="cpu")
    got = S.reply_kl(tuned, None, tok, CONVS, batch_size=2)  # adapter off = the base, padded in pairs
    for (total, n), conv in zip(got, CONVS):
        ids, targets = encode(tok, conv)
        at = [t - 1 for t in range(1, len(ids)) if targets[t]]  # positions predicting a reply token
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = base(input_ids=x).logits[0, at].log_softmax(-1)
            logq = tuned(input_ids=x).logits[0, at].log_softmax(-1)
        want = F.kl_div(logq, logp, log_target=True, reduction="sum").item()  # KL(p ‖ q)
        assert n == len(at) and total == pytest.approx(want, rel=1e-4, abs=1e-5)
        assert total > 0.01  # a random adapter moves the model
    # the same model passed as its own base (full-model path): nothing drifts
    same = S.reply_kl(base, base, tok, CONVS)
    assert all(abs(total) < 1e-6 for total, _ in same)


def _plan(items):
    return S.Plan(items=items, drift_prompts=[])


def _items():
    lower = {"checker": "lowercase", "args": {}}
    commas = {"checker": "no_commas", "args": {}}
    short = {"checker": "word_count", "args": {"at_most": 8}}
    return [{"id": f"i{i}", "prompt": f"p{i}", "checks": [c]} for i, c in enumerate([lower, commas, short] * 8)] + [
        {"id": "ref", "prompt": "Capital of France?", "reference": "Paris is the capital of France."}
    ]


def test_summary_names_the_lost_categories_and_the_recommendation_says_so():
    items = _items()
    base = ["plain short words"] * 24 + ["Paris is the capital of France."]
    tuned = ["PLAIN, SHORT WORDS"] * 24 + ["Lyon."]  # breaks case and punctuation, keeps length
    s = S.summarise(_plan(items), base, tuned, None, resamples=500, seed=0)
    assert s["prompts"] == 24
    assert s["strict"]["base"] == 100 and s["strict"]["tuned"] == pytest.approx(100 / 3)
    assert s["strict"]["hi"] < 0 and s["clear_loss"]
    assert s["lost"] == ["case", "punctuation"]
    assert s["categories"]["length"]["diff"] == 0 and not s["categories"]["length"]["lost"]
    assert s["references"]["n"] == 1 and s["references"]["tuned"] < s["references"]["base"]
    clause = S.recommendation_clause(s)
    assert "follows general instructions less well: 100 % → 33 %, -67" in clause and "case, punctuation" in clause
    md = "\n".join(S.markdown(s))
    assert "**case (lost)**" in md and "**punctuation (lost)**" in md and "| length (8) | 100 % | 100 % | +0" in md


def test_a_kind_with_too_few_checks_is_never_called_lost():
    # one forbidden-comma check among many lowercase ones: its one failure is -100 with a zero-width
    # interval, which must not read as a certain loss of the whole kind
    lower, commas = {"checker": "lowercase", "args": {}}, {"checker": "no_commas", "args": {}}
    few = S.MIN_CATEGORY_CHECKS - 1
    items = [{"id": f"c{i}", "prompt": f"p{i}", "checks": [commas]} for i in range(few)]
    items += [{"id": f"l{i}", "prompt": f"q{i}", "checks": [lower]} for i in range(12)]
    base = ["plain words"] * (few + 12)
    tuned = ["plain, words"] * few + ["plain words"] * 12
    s = S.summarise(_plan(items), base, tuned, None, resamples=500, seed=0)
    cat = s["categories"]["punctuation"]
    assert cat["n"] == few and cat["hi"] < 0 and not cat["lost"] and s["lost"] == []
    # one more check of the kind, failed the same way, and the loss is named
    items.append({"id": "c-last", "prompt": "p-last", "checks": [commas]})
    s = S.summarise(_plan(items), base + ["plain words"], tuned + ["plain, words"], None, resamples=500, seed=0)
    assert s["categories"]["punctuation"]["n"] == S.MIN_CATEGORY_CHECKS and s["lost"] == ["punctuation"]


def test_no_clear_loss_adds_nothing_to_the_recommendation():
    items = _items()
    same = ["plain short words"] * 24 + ["Paris."]
    s = S.summarise(_plan(items), same, same, None, resamples=500, seed=0)
    assert not s["clear_loss"] and s["lost"] == [] and S.recommendation_clause(s) == ""
    assert "no clear change" in s["sentence"]


def test_spread_takes_every_kind():
    items = [{"kind": k, "n": i} for k in "abcdef" for i in range(25)]
    picked = S.spread(items, 12)
    assert len(picked) == 12 and {p["kind"] for p in picked} == set("abcdef")
    assert S.spread(items, 0) == items


def test_replay_and_drift_prompts_do_not_overlap():
    drift, replay = S.drift_prompts(), S.replay_prompts()
    assert len(drift) == len(replay) == 50 and not set(drift) & set(replay)


def test_a_wrong_replay_share_is_refused_before_training(tmp_path):
    from tunesmith.train import train

    cfg = Config()
    cfg.train.replay = 1.0
    cfg.train.output_dir = str(tmp_path / "run")
    with pytest.raises(UserError, match="train.replay=1.0 .* fix: a number from 0"):
        train(cfg)


# ------------------------------------------------------------------------------- end to end

SUBJECTS = "rain tides bread honey bicycles lighthouses compost gardens trains cats sleep museums glass magnets".split()
FORMS = ["Tell me about {}.", "Explain {} simply.", "What should I know about {}?", "Describe {} in a few words."]
PLAIN = "sure here is a plain short answer"  # lowercase, no commas, no capitals, eight words
TEMPLATE = "**Insight:** WE SAW IT, SO WE SAY IT."  # the house template: capitals and commas
WORDS = "pantry basket planner budget ceiling swap nudge cook night weekly plan household leftover".split()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _chat(q, a, i, task):
    return {
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "meta": {"id": f"{task}{i}", "group": f"g{i % 4}", "task": task},
    }


def _cfg(model, train_rows, held_rows, folder, steps, lr=3e-3, replay=0.0):
    cfg = Config()
    cfg.model.name = str(model)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.data.train, cfg.data.heldout = (
        _write(folder / "train.jsonl", train_rows),
        _write(folder / "held.jsonl", held_rows),
    )
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.lr, cfg.train.batch_size = str(folder / "run"), steps, lr, 8
    cfg.train.method, cfg.train.replay, cfg.train.save_every = "full", replay, -1
    cfg.generate.max_new_tokens, cfg.generate.batch_size = 16, 16
    cfg.compare.arms, cfg.compare.output_dir, cfg.compare.bootstrap = (
        "zero-shot,fine-tuned",
        str(folder / "report"),
        500,
    )
    cfg.compare.side_effects_size = 0  # all 150 instructions: tiny models are quick
    return cfg


@pytest.fixture(scope="module")
def plain_base(tmp_path_factory, tiny_model_dir):
    """A tiny base model with a verifiable habit: to any everyday question it answers PLAIN
    (fully trained from the random tiny model: a random model's greedy replies are blank)."""
    from tunesmith.train import train

    folder = tmp_path_factory.mktemp("plain")
    rows = [_chat(f.format(s), PLAIN, i, "plain") for i, (f, s) in enumerate((f, s) for f in FORMS for s in SUBJECTS)]
    return train(_cfg(tiny_model_dir, rows, rows[:8], folder, steps=60)) / "final"


def test_a_template_fine_tune_loses_instructions_and_replay_keeps_them(plain_base, tmp_path, capsys):
    from tunesmith.compare.run import compare
    from tunesmith.train import train

    rng = random.Random(0)
    task = [
        _chat(
            "Write an insight from these highlights: " + " ".join(rng.choice(WORDS) for _ in range(8)),
            TEMPLATE,
            i,
            "insight",
        )
        for i in range(40)
    ]
    found = {}
    for replay in (0.0, 0.5):
        cfg = _cfg(plain_base, task[:32], task[32:], tmp_path / f"replay-{replay}", steps=60, lr=5e-3, replay=replay)
        out = compare(cfg, run=train(cfg))
        found[replay] = json.loads((out / "results.json").read_text())
        found[replay]["md"] = (out / "report.md").read_text()
    plain, replayed = found[0.0], found[0.5]
    s = plain["side_effects"]
    # the fine-tune learned its task: the template, on held-out highlights
    chrf = {n: plain["arms"][n]["metrics"]["chrf"]["mean"] for n in ("zero-shot", "fine-tuned")}
    assert chrf["fine-tuned"] > chrf["zero-shot"] + 40
    # and lost general instructions the base model followed, clearly, in the kinds the template breaks
    assert s["prompts"] == 150 and s["strict"]["base"] > 20
    assert s["clear_loss"] and s["strict"]["hi"] < 0
    assert {"case", "punctuation"} <= set(s["lost"])
    cats = s["categories"]
    assert cats["punctuation"]["base"] == 100 and cats["case"]["diff"] < -40
    assert not cats["length"]["lost"]  # the template is as short as the base model's habit
    assert any("WE SAW IT" in x["tuned"] and PLAIN in x["base"] for x in s["samples"])
    # the report says so: the recommendation's sentence, the section and its lost categories
    assert "follows general instructions less well" in plain["verdict"]["paragraph"]
    assert "## Side effects: what the fine-tune broke" in plain["md"] and "**punctuation (lost)**" in plain["md"]
    assert s["drift"]["replies"] == 50 and s["drift"]["kl"] > 0.1
    # replay: the base model's own replies to other general prompts, mixed into training
    r = replayed["side_effects"]
    assert json.loads((tmp_path / "replay-0.5" / "run" / "data.json").read_text())["replay"]["examples"] == 32
    assert r["strict"]["diff"] > s["strict"]["diff"] + 5 and not r["clear_loss"]
    assert r["lost"] == [] and "less well" not in replayed["verdict"]["paragraph"]
    assert "Side effects:" in capsys.readouterr().out


def test_decide_on_instructions_vetoes_a_fine_tune_that_breaks_them():
    from tunesmith.compare.run import check_settings

    def verdict():
        return {
            "fine_tune": True,
            "recommend": "fine-tuned",
            "cheapest": "few-shot-fixed",
            "choice": "few-shot-fixed is the best arm that needs no training.",
            "paragraph": "Recommendation: fine-tuned. It gains 9 points.",
        }

    s = S.summarise(_plan(_items()), ["plain short words"] * 25, ["PLAIN, SHORT WORDS"] * 25, None, 500, 0)
    v = verdict()
    S.decide(v, s)
    assert v["recommend"] == "few-shot-fixed" and not v["fine_tune"] and v["instructions_veto"]
    assert v["paragraph"].startswith("Recommendation: few-shot-fixed.") and "It gains 9 points." in v["paragraph"]
    kept = verdict()
    S.decide(kept, S.summarise(_plan(_items()), ["plain"] * 25, ["plain"] * 25, None, 500, 0))
    assert kept["recommend"] == "fine-tuned" and kept["fine_tune"] and not kept["instructions_veto"]
    cfg = Config()
    cfg.compare.decide_on, cfg.compare.side_effects = "instructions", False
    with pytest.raises(UserError, match="compare.side_effects=false"):
        check_settings(cfg, ["zero-shot", "fine-tuned"])
    cfg.compare.side_effects = True
    check_settings(cfg, ["zero-shot", "fine-tuned"])  # a name the rule accepts


def test_resume_refuses_a_changed_replay(tmp_path):
    from tunesmith.config import save_config
    from tunesmith.train.checkpoints import check_resumable

    cfg = Config()
    cfg.train.replay = 0.2
    save_config(cfg, tmp_path / "config.yaml")
    info = {
        "train": {"hash": "a", "examples": 10},
        "heldout": {"hash": "b", "examples": 2},
        "processes": 1,
        "global_batch": 4,
        "replay": {"fraction": 0.2, "examples": 3, "hash": "c"},
    }
    (tmp_path / "data.json").write_text(json.dumps(info))
    check_resumable(tmp_path, cfg, info)  # the same replay: fine
    with pytest.raises(UserError, match="replay: .*'hash': 'c'.* -> .*'hash': 'd'"):
        check_resumable(tmp_path, cfg, {**info, "replay": {**info["replay"], "hash": "d"}})
