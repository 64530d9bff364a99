"""The teacher path of `tunesmith import`: restyle pairs and grounded questions from a scripted
OpenAI-compatible server (429, a timeout, an off-format reply) and from `tunesmith serve` on the
tiny model; every filter counted, only training-side text sent, and a rerun makes no new request."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunesmith import UserError
from tunesmith.cli import main
from tunesmith.config import TeacherConfig
from tunesmith.data import load_examples
from tunesmith.data.repository import import_repository

A = (
    "Seven of nine riders opened the map in the last two minutes of their ride, and five of them rode "
    "to a dock that turned out to be full when they arrived there."
)
B = (
    "Commuters named the same two docks every morning, one near home and one near work, and the riders "
    "who cancelled could each name the week their work dock was full twice."
)
PURPLE = (
    "Purple lamps over the slots made night riders stop at the dock again, and the riders we met walked "
    "past two darker docks to reach the lit one on their way home."
)
HELD = (
    "Held-out text that must never reach the teacher: riders in the rain check the seat with a hand "
    "before they choose a bike, and wipe it with a sleeve when it is wet."
)


def folder(root: Path) -> Path:
    (root / "team").mkdir(parents=True)
    (root / "team" / "a.md").write_text(
        f"# Docks\n\n## One\n\n{A}\n\n## Two\n\n{A}\n\n## Three\n\n{PURPLE}\n\n## Four\n\n{B}\n"
    )
    (root / "team" / "b.md").write_text(f"# Rain\n\n## Seats\n\n{HELD}\n\n## More\n\n{HELD} Again.\n")
    return root / "team"


class Fake:
    """A scripted teacher: the first requests follow `plan` (429, slow, junk), then it answers in form."""

    def __init__(self, plan):
        self.plan, self.prompts, self.lock = list(plan), [], threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with fake.lock:
                    fake.prompts.append(prompt)
                    step = fake.plan.pop(0) if fake.plan else "ok"
                if step in ("429", "404"):
                    self.send_response(int(step))
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                if step == "slow":
                    time.sleep(1.0)  # past the client's timeout
                text = "" if step == "junk" else fake.answer(prompt)
                out = json.dumps(
                    {
                        "choices": [{"message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
                    }
                ).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the client gave up on the slow reply

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def answer(prompt: str) -> str:
        passage = prompt.rsplit("\n\n", 1)[-1]
        words = passage.split()
        if prompt.startswith("Rewrite"):
            return "So basically " + " ".join(words[:20]).lower()
        facts = "elephants dance at midnight" if passage.startswith("Purple") else " ".join(words[:5])
        return f"Question: What happened when {' '.join(words[:6])}?\nFacts: {facts}; {' '.join(words[6:9])}"


@pytest.fixture
def fake():
    f = Fake(["429", "slow", "junk"])
    yield f
    f.server.shutdown()


def teacher(url: str, **kw) -> TeacherConfig:
    return TeacherConfig(url=url, model="fake", retries=2, backoff_s=0.01, timeout_s=0.5, price_per_1k_tokens=0.5, **kw)


def test_teacher_pairs_filters_and_a_rerun_that_costs_nothing(tmp_path, fake, capsys):
    src = folder(tmp_path)
    s = import_repository([src], tmp_path / "out", heldout_fraction=0.3, teacher=teacher(fake.url))
    assert s["heldout_groups"] == ["team/b.md"]  # the held-out document
    t = s["teacher"]
    assert t["filters"] == {
        # passage 1's restyle: 429, a timeout, then an empty reply; passage 2 repeats passage 1, so
        # its requests are answered from the cache, the same way
        "restyle": {
            "asked": 4,
            "failed": 0,
            "off-format": 2,
            "length": 0,
            "ungrounded": 0,
            "near-duplicate": 0,
            "kept": 2,
        },
        # passage 2's question is passage 1's again; passage 3's facts are not in it
        "question": {
            "asked": 4,
            "failed": 0,
            "off-format": 0,
            "length": 0,
            "ungrounded": 1,
            "near-duplicate": 1,
            "kept": 2,
        },
    }
    assert (t["requests"], t["retries"], t["cached"]) == (8, 2, 2)
    assert t["cost_usd"] == pytest.approx(6 * 120 / 1000 * 0.5)  # the 429 and the timed-out request carry no usage
    assert not any("Held-out text" in p for p in fake.prompts)
    train = load_examples(tmp_path / "out" / "train.jsonl")
    restyle = [e for e in train if e["meta"]["task"] == "restyle"]
    questions = [e for e in train if e["meta"]["task"] == "question"]
    assert len(restyle) == 2 and len(questions) == 2
    assert restyle[0]["messages"][0]["content"].startswith(
        "Rewrite this draft in our house style.\n\nDraft:\nSo basically"
    )
    assert {e["messages"][1]["content"] for e in restyle + questions} <= {A, B, PURPLE}  # the team's own text
    q = questions[0]
    assert q["messages"][0]["content"].startswith("What happened when Seven of nine")
    assert q["meta"]["answer"] == ["Seven of nine riders opened", "map in the"] and q["meta"]["teacher"] == "fake"
    assert not [
        e for e in load_examples(tmp_path / "out" / "heldout.jsonl") if e["meta"]["task"] in ("restyle", "question")
    ]

    asked = len(fake.prompts)
    again = import_repository([src], tmp_path / "out", heldout_fraction=0.3, teacher=teacher(fake.url))
    assert len(fake.prompts) == asked and again["teacher"]["requests"] == 0 and again["teacher"]["cached"] == 8
    assert again["teacher"]["filters"] == t["filters"]
    # the CLI reads the teacher: section of --config and prints what it cost and what each filter kept
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(f"teacher:\n  url: {fake.url}\n  model: fake\n  retries: 2\n  timeout_s: 0.5\n")
    assert (
        main(["import", str(src), "-o", str(tmp_path / "out"), "--heldout-fraction", "0.3", "--config", str(cfg)]) == 0
    )
    text = capsys.readouterr().out
    assert "teacher: 0 requests (0 retries), 8 answered from the cache" in text
    assert "  question: 4 asked, 0 failed, 0 off-format, 0 length, 1 ungrounded, 1 near-duplicate, 2 kept" in text


def test_a_teacher_that_refuses_or_is_misconfigured_stops_with_the_fix(tmp_path):
    src = folder(tmp_path)
    with pytest.raises(UserError, match="teacher.model is not"):
        import_repository([src], tmp_path / "out", teacher=TeacherConfig(url="http://127.0.0.1:9/v1"))
    with pytest.raises(UserError, match="TUNESMITH_NO_SUCH_KEY, which is not set"):
        import_repository(
            [src],
            tmp_path / "out",
            teacher=TeacherConfig(url="http://x/v1", model="m", api_key_env="TUNESMITH_NO_SUCH_KEY"),
        )
    refusing = Fake(["404"])
    try:
        with pytest.raises(UserError, match=r"refuses requests \(HTTP 404"):
            import_repository([src], tmp_path / "out", heldout_fraction=0.3, teacher=teacher(refusing.url))
        assert len(refusing.prompts) == 1  # a 404 is not retried
    finally:
        refusing.server.shutdown()


def test_teacher_against_tunesmith_serve_on_the_tiny_model(tmp_path, tiny_model):
    from test_serve import running

    from tunesmith.serve import create_app

    src = folder(tmp_path)
    with running(create_app(tiny_model, model_name="tiny")) as url:
        cfg = TeacherConfig(url=f"{url}/v1", model="tiny", max_tokens=24, max_passages=3)
        s = import_repository([src], tmp_path / "out", heldout_fraction=0.3, teacher=cfg)
        again = import_repository([src], tmp_path / "out", heldout_fraction=0.3, teacher=cfg)
    t = s["teacher"]
    for task, c in t["filters"].items():
        assert c["asked"] == 3 and c["failed"] == 0
        assert sum(v for k, v in c.items() if k != "asked") == 3, (task, c)  # every reply kept or counted once
    assert t["requests"] == 4 and t["cached"] == 2 and t["completion_tokens"] > 0  # passage 2 repeats passage 1
    assert again["teacher"]["requests"] == 0 and again["teacher"]["cached"] == 6
