"""The workbench against real processes: three reviewers rating at once lose and double nothing;
a training job outlives a server restart (still running, curve still moving); a server and job
both killed with SIGKILL come back as interrupted, and Resume ends with the weights of an
uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from test_train import make_chats
from test_workbench_review import fake_verdict
from workbench_util import LiveServer, csrf_of, fake_finished_run, free_port


def test_three_reviewers_rating_at_once_lose_and_double_nothing(tmp_path):
    from tunesmith.workbench import db
    from tunesmith.workbench.app import create_app

    root = tmp_path / "projects"
    app = create_app(root, run_jobs=False)
    samples, results = fake_verdict(n_examples=7)  # 7 examples x 3 arm pairs = 21 pairs
    jid = fake_finished_run(root, samples, results)
    start = threading.Barrier(3)
    errors, stored = [], {}

    def reviewer(name):
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                start.wait()
                for _ in range(20):
                    page = c.get(f"/p/demo-000001/review/{jid}", params={"reviewer": name})
                    pair = int(page.text.split('name="pair" value="')[1].split('"')[0])
                    r = c.post(
                        f"/p/demo-000001/review/{jid}",
                        headers={"Accept": "application/json"},
                        data={
                            "csrf_token": csrf_of(page.text),
                            "reviewer": name,
                            "pair": pair,
                            "choice": "AB"[pair % 2],
                            "tags": ["tone"],
                        },
                    )
                    assert r.status_code == 200, r.text
                    stored.setdefault(name, []).append(pair)
        except Exception as exc:  # reported below, with the reviewer's name
            errors.append((name, repr(exc)))

    with LiveServer(app) as server:
        threads = [threading.Thread(target=reviewer, args=(n,)) for n in ("Ana", "Ben", "Cleo")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        con = db.connect(root)
        rows = db.all_(con, "SELECT reviewer, pair FROM ratings")
        assert len(rows) == 60
        assert len({(r["reviewer"], r["pair"]) for r in rows}) == 60  # none doubled
        for name in ("Ana", "Ben", "Cleo"):
            assert sorted(stored[name]) == sorted(r["pair"] for r in rows if r["reviewer"] == name)  # none lost
            assert len(set(stored[name])) == 20
        summary = httpx.get(f"{server.url}/api/p/demo-000001/review/{jid}/results").json()
        assert summary["ratings"] == 60 and summary["fleiss"]["raters"] == 3
    joined = json.loads((root / "projects" / "demo-000001" / "runs" / "1" / "compare" / "results.json").read_text())
    assert joined["expert_review"]["ratings"] == 60


# ------------------------------------------------------------------ a server as a separate process

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Server:
    def __init__(self, root, model):
        self.root, self.model, self.port, self.proc = root, model, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunesmith.cli",
                "ui",
                str(self.root),
                "--port",
                str(self.port),
                "--model",
                str(self.model),
            ],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.client = httpx.Client(base_url=self.url, timeout=30)
                    self.token = csrf_of(self.client.get("/").text)
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(
            f"server did not start: {self.proc.stderr.read().decode()[-2000:] if self.proc.poll() is not None else ''}"
        )

    def kill(self, sig=signal.SIGKILL):
        self.client.close()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def post(self, path, **data):
        return self.client.post(path, data={"csrf_token": self.token, **data}, follow_redirects=False)

    def job(self, jid):
        return self.client.get(f"/api/jobs/{jid}").json()

    def wait(self, jid, until, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.job(jid)
            if until(j):
                return j
            time.sleep(0.2)
        raise AssertionError(
            f"job {jid} never got there: {j['status']} {j['message']} step {j['progress']}\n"
            + self.client.get(f"/jobs/{jid}/log").text[-2000:]
        )


def train_settings(steps):
    return {
        "preset": "quick",
        "cfg.train.max_steps": str(steps),
        "cfg.train.save_every": "1",
        "cfg.train.batch_size": "2",
        "cfg.train.eval_every": "0",
        "cfg.train.threads": "1",
        "cfg.lora.r": "4",
        "cfg.lora.dropout": "0.1",
        "cfg.train.lr": "0.01",
        "cfg.train.keep_last": "2",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A workbench with one dataset project, its check done."""
    root = tmp_path_factory.mktemp("wb") / "projects"
    data = make_chats(root.parent / "chats.jsonl", n=40)
    server = Server(root, tiny_model_dir).start()
    r = server.client.post(
        "/api/projects",
        params={"name": "chats", "filename": "chats.jsonl"},
        content=data.read_bytes(),
        headers={"X-CSRF-Token": server.token},
    )
    assert r.status_code == 200, r.text
    server.wait(1, lambda j: j["status"] == "done")
    server.kill(signal.SIGTERM)
    return root, r.json()["id"], tiny_model_dir


def _submit(server, pid, steps):
    from tunesmith.workbench import db

    r = server.post(f"/p/{pid}/train", **train_settings(steps))
    assert r.status_code == 303, r.text
    return db.one(db.connect(server.root), "SELECT max(id) AS id FROM jobs WHERE kind='train'")["id"]


def _steps_from_sse(server, jid, above, want=2, timeout=60):
    """Read the job's event stream until `want` metric events with a step above `above` arrive."""
    steps = []
    with httpx.Client(base_url=server.url, timeout=timeout) as c, c.stream("GET", f"/jobs/{jid}/events") as s:
        event = None
        for line in s.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "metric":
                step = json.loads(line[6:])["step"]
                if step > above:
                    steps.append(step)
                    if len(steps) >= want:
                        return steps
    return steps


def test_a_server_restart_leaves_a_training_job_running(project):
    root, pid, model = project
    server = Server(root, model).start()
    jid = _submit(server, pid, 400)
    j = server.wait(jid, lambda j: j["status"] == "running" and j["progress"]["step"] >= 3)
    job_pid = j["pid"]
    server.kill(signal.SIGKILL)
    os.kill(job_pid, 0)  # the job outlived its server

    server = Server(root, model).start()
    try:
        j = server.job(jid)
        assert j["status"] == "running" and j["alive"] and j["pid"] == job_pid
        step = j["progress"]["step"]
        moving = _steps_from_sse(server, jid, above=step)
        assert len(moving) == 2 and moving[-1] > step  # the curve keeps moving on the new server
        assert server.post(f"/jobs/{jid}/stop").status_code == 303
        j = server.wait(jid, lambda j: j["status"] not in ("queued", "running"))
        assert j["status"] == "stopped" and j["rc"] == 143  # SIGTERM: the trainer saved, then exited
    finally:
        server.kill(signal.SIGTERM)


def test_sigkill_of_server_and_job_then_resume_gives_the_uninterrupted_weights(project):
    from safetensors.torch import load_file

    root, pid, model = project
    # A tiny step takes tens of milliseconds, several per 0.2 s poll: enough steps that the kill
    # always lands mid-run, not after the last step.
    steps = 40
    server = Server(root, model).start()
    reference = _submit(server, pid, steps)
    server.wait(reference, lambda j: j["status"] == "done")
    killed = _submit(server, pid, steps)
    j = server.wait(killed, lambda j: j["status"] == "running" and j["progress"]["step"] >= 3)
    os.killpg(j["pid"], signal.SIGKILL)
    server.kill(signal.SIGKILL)

    server = Server(root, model).start()
    try:
        j = server.job(killed)
        assert j["status"] == "interrupted" and 3 <= j["progress"]["step"] < steps
        page = server.client.get(f"/p/{pid}").text
        assert f'action="/jobs/{killed}/resume"' in page  # the Resume button
        assert server.post(f"/jobs/{killed}/resume").status_code == 303
        j = server.wait(killed, lambda j: j["status"] not in ("queued", "running"))
        assert j["status"] == "done", j["message"]
        log = server.client.get(f"/jobs/{killed}/log").text
        assert "resumed from" in log
    finally:
        server.kill(signal.SIGTERM)
    ref = load_file(root / "projects" / pid / "runs" / str(reference) / "final" / "adapter_model.safetensors")
    got = load_file(root / "projects" / pid / "runs" / str(killed) / "final" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) <= 1e-6
    assert any((ref[k] != 0).any() for k in ref if "lora_B" in k)  # the adapters really trained
