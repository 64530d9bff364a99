"""The judge against a fake OpenAI-compatible server with scripted answers (right, off-format,
500-then-ok, position-biased, a refused key), and once against `tunesmith serve` on the tiny model."""

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunesmith import UserError
from tunesmith.compare import judge as J
from tunesmith.config import JudgeConfig


def _example(i: int, marker: str = "") -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"How long are invoices kept, case {i}? {marker}".strip()},
            {"role": "assistant", "content": "Invoices are kept for 180 days."},
        ],
        "meta": {"id": str(i)},
    }


class Script:
    """The fake judge's behaviour: prefers the reply with RIGHT in it; 'OFFFORMAT' in the request
    gets an answer without a verdict; 'FLAKY' gets HTTP 500 and 'RATELIMIT' HTTP 429 (with
    Retry-After) the first time each exact request is seen; biased=True always answers A;
    status=401 refuses everything."""

    def __init__(self, biased=False, status=200):
        self.biased, self.status, self.seen, self.requests, self.auth = biased, status, set(), 0, []
        self.retry_after = 0.3

    def answer(self, body: dict) -> tuple[int, dict]:
        self.requests += 1
        if self.status != 200:
            return self.status, {"error": {"message": "invalid api key"}}
        user = body["messages"][-1]["content"]
        key = json.dumps(body, sort_keys=True)
        if "FLAKY" in user and key not in self.seen:
            self.seen.add(key)
            return 500, {"error": {"message": "overloaded"}}
        if "RATELIMIT" in user and key not in self.seen:
            self.seen.add(key)
            return 429, {"error": {"message": "slow down"}}
        a = user.split("# Reply A\n")[1].split("# Reply B\n")[0]
        b = user.split("# Reply B\n")[1]
        if "OFFFORMAT" in user:
            text = "Both replies have merit; it depends on the reader."
        elif self.biased:
            text = "Winner: A"
        else:
            text = (
                "Winner: A"
                if "RIGHT" in a and "RIGHT" not in b
                else "Winner: B"
                if "RIGHT" in b and "RIGHT" not in a
                else "Winner: tie"
            )
        return 200, {
            "choices": [{"message": {"role": "assistant", "content": text + "\nBecause."}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 5},
        }


@contextmanager
def fake_judge(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            script.auth.append(self.headers.get("Authorization"))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/chat/completions"
            status, payload = script.answer(body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", str(script.retry_after))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _cfg(url, model="fake-judge", **kw) -> JudgeConfig:
    return JudgeConfig(url=url, model=model, backoff_s=0.01, **kw)


def test_both_orders_win_rate_off_format_and_retries():
    examples = [_example(0), _example(1), _example(2, "FLAKY"), _example(3, "OFFFORMAT"), _example(4)]
    texts = {
        "fine-tuned": ["RIGHT 180 days", "RIGHT 180 days", "RIGHT 180 days", "RIGHT", "WRONG 10 days"],
        "rag": ["WRONG 10 days", "WRONG 10 days", "WRONG 10 days", "WRONG", "WRONG 10 days"],
    }
    script = Script()
    with fake_judge(script) as url:
        out = J.judge(
            _cfg(url, price_per_1k_tokens=0.5),
            examples,
            texts,
            "rag",
            ["fine-tuned"],
            "rubric",
            resamples=200,
            log=lambda *a: None,
        )
    arm = out["arms"]["fine-tuned"]
    # example 4's replies are the same text: a tie by definition, the judge is not asked
    assert arm["identical"] == 1 and arm["detail"][4]["orders"] == []
    # 0, 1, 2 won in both orders (2 after a retry); 3 answered off-format in both orders; 4 identical
    assert (arm["pairs"], arm["judged"], arm["wins"], arm["losses"], arm["off_format"], arm["failed"]) == (
        5,
        4,
        3,
        0,
        1,
        0,
    )
    assert arm["win_rate"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert arm["disagree_share"] == 0.0
    assert [p["index"] for p in arm["problems"]] == [3] and "no verdict" in arm["problems"][0]["detail"]
    assert "Both replies have merit" in arm["problems"][0]["detail"]  # the judge's own words, never a guess
    # both orders were asked, the arm in position A once and B once
    assert [o["verdict"] for o in arm["detail"][0]["orders"]] == ["A", "B"]
    # 4 pairs x 2 orders = 8 answers, plus 2 HTTP 500s retried (the flaky example, once per order)
    assert (out["requests"], out["retries"]) == (10, 2)
    assert out["prompt_tokens"] == 8 * 100 and out["completion_tokens"] == 8 * 5
    assert out["cost"] == pytest.approx(8 * 105 / 1000 * 0.5)
    assert script.auth[0] is None  # no key configured, none sent


def test_a_judge_that_always_picks_the_first_reply_is_cancelled_and_measured():
    examples = [_example(i) for i in range(6)]
    texts = {"fine-tuned": [f"RIGHT {i}" for i in range(6)], "rag": [f"WRONG {i}" for i in range(6)]}
    with fake_judge(Script(biased=True)) as url:
        out = J.judge(_cfg(url), examples, texts, "rag", ["fine-tuned"], "rubric", resamples=200, log=lambda *a: None)
    arm = out["arms"]["fine-tuned"]
    assert arm["win_rate"] == 0.5 and arm["disagree_share"] == 1.0  # A in each order: one win, one loss
    assert arm["wins"] == arm["losses"] == 0 and arm["ties"] == 6


def test_retries_give_up_and_report_the_failure():
    examples = [_example(0, "FLAKY")]
    texts = {"fine-tuned": ["RIGHT"], "rag": ["WRONG"]}
    with fake_judge(Script()) as url:
        out = J.judge(_cfg(url, retries=0), examples, texts, "rag", ["fine-tuned"], "rubric", log=lambda *a: None)
    arm = out["arms"]["fine-tuned"]
    assert arm["failed"] == 1 and arm["win_rate"] is None and "HTTP 500" in arm["problems"][0]["detail"]


def test_a_refused_key_stops_the_judge_with_the_fix(monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-wrong")
    with fake_judge(script := Script(status=401)) as url:
        out = J.judge(
            _cfg(url, api_key_env="TEST_JUDGE_KEY", concurrency=1),
            [_example(0), _example(1)],
            {"fine-tuned": ["RIGHT", "RIGHT"], "rag": ["WRONG", "WRONG"]},
            "rag",
            ["fine-tuned"],
            "rubric",
            log=lambda *a: None,
        )
    assert out["status"] == "failed" and "HTTP 401" in out["reason"] and "judge.url" in out["reason"]
    assert script.requests == 1 and script.auth == ["Bearer sk-wrong"]  # no retry of a refusal


def test_a_rate_limited_judge_waits_as_asked():
    import time

    with fake_judge(script := Script()) as url:
        t0 = time.time()
        out = J.judge(
            _cfg(url),
            [_example(0, "RATELIMIT")],
            {"fine-tuned": ["RIGHT"], "rag": ["WRONG"]},
            "rag",
            ["fine-tuned"],
            "rubric",
            log=lambda *a: None,
        )
        waited = time.time() - t0
    assert out["arms"]["fine-tuned"]["win_rate"] == 1.0 and out["retries"] == 2 and script.requests == 4
    assert waited >= script.retry_after  # Retry-After (0.3 s) beat our own backoff (0.01 s)


def test_parse_reads_only_the_asked_form():
    assert J.parse("Winner: A\nreason") == "A" and J.parse("**Winner:** b") == "B" and J.parse("winner = tie") == "tie"
    assert J.parse("A is better") is None and J.parse("") is None
    assert J.parse("Winner: A ... on reflection, Winner: B") is None  # two verdicts: not guessed


def test_judge_settings_are_checked_before_anything_runs(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    names = ["zero-shot", "fine-tuned"]
    with pytest.raises(UserError, match="judge.model"):
        J.check(JudgeConfig(url="http://127.0.0.1:9/v1"), names)
    with pytest.raises(UserError, match="NO_SUCH_JUDGE_KEY, which is not set"):
        J.check(JudgeConfig(url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_JUDGE_KEY"), names)
    with pytest.raises(UserError, match="judge.arms: rag"):
        J.check(JudgeConfig(url="http://127.0.0.1:9/v1", model="m", arms="rag"), names)
    J.check(JudgeConfig(), names)  # no judge: nothing to check


def test_rubric_draws_on_the_teams_material():
    from tunesmith.compare.metrics import Term

    text = J.rubric(
        "Write short sentences.", [Term("basket", ["cart"])], {"insight": ["**We saw**", "**So**"]}, "Be kind."
    )
    assert "basket (never: cart)" in text and "insight: **We saw** / **So**" in text
    assert "Write short sentences." in text and "Be kind." in text and "Winner: A" in text


def test_judge_against_tunesmith_serve_on_the_tiny_model(tiny_model_dir):
    """The real server end to end: a tiny random model cannot answer in the asked form, and the
    judge must say so for every pair instead of inventing verdicts."""
    from test_serve import lively_copy, running

    from tunesmith.serve import create_app

    examples = [_example(i) for i in range(2)]
    texts = {"fine-tuned": ["Kept for 180 days.", "Kept for half a year."], "rag": ["Kept for 10 days.", "No idea."]}
    with running(create_app(lively_copy(tiny_model_dir), model_name="tiny")) as url:
        out = J.judge(
            _cfg(url + "/v1", model="tiny", max_tokens=8),
            examples,
            texts,
            "rag",
            ["fine-tuned"],
            "rubric",
            resamples=100,
            log=lambda *a: None,
        )
    assert out["status"] == "ok", out.get("reason")
    arm = out["arms"]["fine-tuned"]
    assert arm["pairs"] == 2
    # random weights never write "Winner: A": every pair is off-format, reported with the model's own words
    assert (arm["off_format"], arm["judged"], arm["win_rate"]) == (2, 0, None)
    assert all("no verdict in" in p["detail"] and p["detail"].count("first:") == 2 for p in arm["problems"])
    assert out["requests"] == 4 and out["prompt_tokens"] > 0 and out["completion_tokens"] > 0


def test_compare_runs_the_judge_and_reports_it(tiny_model_dir, tmp_path, monkeypatch):
    """compare end to end with a judge: the arms are generated by the tiny model (weights scaled so
    that different prompts get different replies), and the report has the judge's section."""
    from test_serve import lively_copy
    from test_verdict import EXAMPLE

    from tunesmith.compare.run import compare
    from tunesmith.config import Config

    model, tok = lively_copy(tiny_model_dir)
    model.save_pretrained(tmp_path / "lively")
    tok.save_pretrained(tmp_path / "lively")
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    cfg = Config()
    cfg.model.name = str(tmp_path / "lively")
    cfg.data.train, cfg.data.heldout = str(EXAMPLE / "train.jsonl"), str(EXAMPLE / "heldout.jsonl")
    cfg.generate.max_new_tokens, cfg.generate.batch_size = 4, 4
    cfg.compare.arms, cfg.compare.max_examples, cfg.compare.bootstrap = "zero-shot,few-shot-fixed", 3, 100
    cfg.compare.output_dir = str(tmp_path / "report")
    with fake_judge(script := Script()) as url:
        cfg.judge.url, cfg.judge.model, cfg.judge.api_key_env, cfg.judge.backoff_s = (
            url,
            "fake-judge",
            "TEST_JUDGE_KEY",
            0.01,
        )
        out = compare(cfg)
    results = json.loads((out / "results.json").read_text())
    j = results["judge"]
    judged = [n for n in ("zero-shot", "few-shot-fixed") if n != results["verdict"]["reference"]]
    assert j["status"] == "ok" and list(j["arms"]) == judged and j["reference"] == results["verdict"]["reference"]
    arm = j["arms"][judged[0]]
    assert arm["pairs"] == 3 and arm["off_format"] == arm["failed"] == 0 and arm["identical"] < 3
    # neither random reply says RIGHT: every asked pair is a tie in both orders
    assert arm["win_rate"] == 0.5 and arm["disagree_share"] in (0.0, None)
    assert script.requests == 2 * (3 - arm["identical"]) and set(script.auth) == {"Bearer sk-test"}
    report = (out / "report.md").read_text()
    assert "## The judge" in report and f"against {j['reference']}" in report
