"""Blind review's statistics against published or hand-worked values, and its bookkeeping:
sides hidden and stable, one rating per reviewer and pair, exports, the join into the report."""

import json
import math

import pytest

from tunesmith import UserError
from tunesmith.workbench import db, review


def test_wilson_interval_hand_worked():
    # 5 of 10: centre 0.5, half-width 1.96/(1+0.38416) * sqrt(0.025 + 0.009604) = 0.26341
    p, lo, hi = review.wilson(5, 10)
    assert p == 0.5 and lo == pytest.approx(0.23659, abs=1e-5) and hi == pytest.approx(0.76341, abs=1e-5)
    # 0 of 10: the interval is not [0, 0] (the "rule of three" region), it reaches 27.75 %
    p, lo, hi = review.wilson(0, 10)
    assert p == 0 and lo == 0 and hi == pytest.approx(0.27753, abs=1e-5)
    assert math.isnan(review.wilson(0, 0)[0])


def test_cohen_kappa_matches_the_textbook_example():
    # Two raters, 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.70, pe 0.50, kappa 0.40
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert review.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    assert review.cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert review.cohen_kappa(["x", "x"], ["x", "x"]) is None  # chance agreement is total: undefined


def test_fleiss_kappa_matches_fleiss_1971_worked_example():
    # The worked example of 10 subjects, 14 raters, 5 categories (Fleiss 1971, as on Wikipedia): kappa 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert review.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    with pytest.raises(ValueError):
        review.fleiss_kappa([[1, 1], [2, 1]])  # unequal numbers of raters


def test_bradley_terry_is_the_maximum_likelihood_fit():
    # two arms: the MLE is the share of wins
    s = review.bradley_terry({("a", "b"): 7, ("b", "a"): 3}, ["a", "b"], prior=0)
    assert s["a"] == pytest.approx(0.7, abs=1e-9) and s["b"] == pytest.approx(0.3, abs=1e-9)
    # three arms: the fit satisfies the likelihood equations W_i = sum_j n_ij p_i / (p_i + p_j)
    wins = {("a", "b"): 6, ("b", "a"): 4, ("a", "c"): 8, ("c", "a"): 2, ("b", "c"): 5, ("c", "b"): 5}
    arms = ["a", "b", "c"]
    p = review.bradley_terry(wins, arms, prior=0)
    for i in arms:
        w = sum(wins[(i, j)] for j in arms if j != i)
        expected = sum((wins[(i, j)] + wins[(j, i)]) * p[i] / (p[i] + p[j]) for j in arms if j != i)
        assert expected == pytest.approx(w, abs=1e-7)
    assert p["a"] > p["b"] > p["c"] and sum(p.values()) == pytest.approx(1)
    # an arm that won everything keeps a finite strength with the prior
    q = review.bradley_terry({("a", "b"): 5}, ["a", "b"])
    assert 0.5 < q["a"] < 1 and q["b"] > 0


# ------------------------------------------------------------------------------ bookkeeping


def fake_verdict(n_examples=7, arms=("zero-shot", "few-shot-retrieved", "fine-tuned")):
    """samples.jsonl rows and results.json as compare writes them, small and deterministic."""
    samples = []
    for i in range(n_examples):
        samples.append(
            {
                "index": i,
                "meta": {"id": f"EX-{i}", "task": "insight" if i % 2 else "definition"},
                "prompt": [{"role": "user", "content": f"Write insight {i} about the basket."}],
                "reference": f"The planner left the basket open ({i}).",
                "outputs": {
                    a: {"text": f"reply number {k} to prompt {i}", "metrics": {"chrf": 10.0 * k + i}}
                    for k, a in enumerate(arms)
                },
            }
        )
    results = {
        "primary_metric": "chrf",
        "arms": {a: {"status": "ok", "tuned": a.startswith("fine")} for a in arms},
        "verdict": {
            "recommend": "fine-tuned",
            "reference": "few-shot-retrieved",
            "best_tuned": "fine-tuned",
            "paragraph": "Recommendation: fine-tuned.",
        },
    }
    return samples, results


@pytest.fixture
def con(tmp_path):
    c = db.connect(tmp_path)
    c.execute("INSERT INTO projects (id, name, kind, source, model, created) VALUES ('p', 'p', 'dataset', 'x', 'm', 0)")
    c.execute("INSERT INTO jobs (id, project, kind, status, created) VALUES (1, 'p', 'train', 'done', 0)")
    return c


def test_pairs_are_blind_stable_and_rated_once(con):
    samples, results = fake_verdict()
    pairs = review.ensure_pairs(con, 1, samples, results)
    assert len(pairs) == 7 * 3 and len(review.ensure_pairs(con, 1, samples, results)) == 21  # created once
    # each reviewer: a different order, a stable one; sides vary across pairs
    assert review.order_for("Ana", [p["id"] for p in pairs]) == review.order_for("Ana", [p["id"] for p in pairs])
    assert review.order_for("Ana", [p["id"] for p in pairs]) != review.order_for("Ben", [p["id"] for p in pairs])
    assert {review.sides("Ana", p)[0] == p["arm_x"] for p in pairs} == {True, False}
    pair, done, total = review.next_pair(con, 1, "Ana")
    a, b = review.sides("Ana", pair)
    row = review.rate(con, pair["id"], "Ana", "B", ["tone"], "B reads better")
    assert row["winner"] == b and row["shown_a"] == a
    review.rate(con, pair["id"], "Ana", "A")  # a second rating of the same pair replaces the first
    assert len(review.ratings(con, 1)) == 1 and review.ratings(con, 1)[0]["winner"] == a
    assert review.next_pair(con, 1, "Ana")[1:] == (1, 21)
    nxt = review.next_pair(con, 1, "Ana")[0]
    assert review.next_pair(con, 1, "Ana", skip=nxt["id"])[0]["id"] != nxt["id"]  # skip shows another pair
    for p in pairs:
        if p["id"] != nxt["id"]:
            review.rate(con, p["id"], "Ana", "tie")
    assert review.next_pair(con, 1, "Ana", skip=nxt["id"])[0]["id"] == nxt["id"]  # until it is the last one
    with pytest.raises(UserError, match="choice must be"):
        review.rate(con, pair["id"], "Ana", "C")


def test_summary_exports_and_report_join(con, tmp_path):
    samples, results = fake_verdict()
    pairs = review.ensure_pairs(con, 1, samples, results)
    # two reviewers who always prefer the fine-tuned arm (which also scores highest on chrF), one tie each
    for name in ("Ana", "Ben"):
        for p in pairs:
            a, b = review.sides(name, p)
            if p["id"] == pairs[0]["id"]:
                choice = "tie"
            else:
                best = max((p["arm_x"], p["arm_y"]), key=["zero-shot", "few-shot-retrieved", "fine-tuned"].index)
                choice = "A" if a == best else "B"
            review.rate(con, p["id"], name, choice)
    s = review.summarise(con, 1, samples, results)
    assert s["ratings"] == 42 and s["reviewers"] == ["Ana", "Ben"]
    assert [r["arm"] for r in s["bradley_terry"]] == ["fine-tuned", "few-shot-retrieved", "zero-shot"]
    assert s["cohen"][0]["kappa"] == pytest.approx(1.0) and s["cohen"][0]["pairs"] == 21
    assert s["metric_agreement"]["share"] == 1.0 and s["metric_agreement"]["decisive"] == 40
    # pairs[0] (fine-tuned vs few-shot-retrieved, example 0) is the tie: 6 decisive pairs x 2 reviewers
    assert s["sentence"].startswith("Experts agree with the metrics: fine-tuned won 12 of 12")

    dpo = [json.loads(x) for x in review.to_dpo(con, 1, samples).splitlines()]
    assert len(dpo) == 20  # the tied pair decides nothing
    assert set(dpo[0]) == {"prompt", "chosen", "rejected"} and dpo[0]["chosen"][0]["role"] == "assistant"
    # the chosen reply is always the better arm's (fine-tuned is arm 2, few-shot-retrieved arm 1)
    assert all(int(d["chosen"][0]["content"].split()[2]) > int(d["rejected"][0]["content"].split()[2]) for d in dpo)
    csv_text = review.to_csv(con, 1, samples)
    assert csv_text.count("\n") == 43 and csv_text.startswith("reviewer,example_id,task,arm_a,arm_b,choice")

    out = tmp_path / "compare"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    (out / "report.html").write_text("<html><body><h1>Verdict</h1><p>x</p><h2>Quality</h2></body></html>")
    review.join_report(out, s)
    review.join_report(out, s)  # again: the section is replaced, not added twice
    page = (out / "report.html").read_text()
    assert page.count("Expert review (blind)") == 1 and page.index("Expert review") < page.index("<h2>Quality")
    joined = json.loads((out / "results.json").read_text())
    assert joined["expert_review"]["ratings"] == 42 and joined["verdict"]["experts"] == s["sentence"]


def test_the_sentence_says_when_experts_disagree(con):
    samples, results = fake_verdict()
    pairs = review.ensure_pairs(con, 1, samples, results)
    for p in pairs:
        if {p["arm_x"], p["arm_y"]} == {"fine-tuned", "few-shot-retrieved"}:
            a, _ = review.sides("Ana", p)
            review.rate(con, p["id"], "Ana", "A" if a == "few-shot-retrieved" else "B")
    s = review.summarise(con, 1, samples, results)
    assert s["sentence"].startswith("Experts disagree with the metrics: fine-tuned won 0 of 7")
    assert s["metric_agreement"]["share"] == 0.0
