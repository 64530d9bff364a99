"""The workbench's pages and forms without running any job: a dataset project, the advanced form's
validation (the CLI's own), the pages of a finished run, blind pages that never name the arms."""

import json

import yaml
from fastapi.testclient import TestClient
from test_train import make_chats
from test_workbench_review import fake_verdict
from workbench_util import csrf_of, fake_finished_run

from tunesmith.workbench import db
from tunesmith.workbench.app import create_app


def test_a_dataset_project_and_the_train_form(tmp_path):
    root = tmp_path / "projects"
    data = make_chats(tmp_path / "chats.jsonl", n=12)
    with TestClient(create_app(root, run_jobs=False, model="my-model"), base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/").text)
        r = c.post(
            "/api/projects",
            params={"name": "Chats", "filename": "chats.jsonl"},
            content=data.read_bytes(),
            headers={"X-CSRF-Token": token},
        )
        pid = r.json()["id"]
        cfg = yaml.safe_load((root / "projects" / pid / "data" / "config.yaml").read_text())
        assert cfg["model"]["name"] == "my-model" and cfg["data"]["train"].endswith("source/dataset.jsonl")
        assert db.one(db.connect(root), "SELECT kind, status FROM jobs WHERE id=1") == {
            "kind": "check",
            "status": "queued",
        }
        page = c.get(f"/p/{pid}").text
        assert 'name="cfg.train.lr"' in page and "peak learning rate" in page  # generated from the dataclasses

        bad = c.post(f"/p/{pid}/train", data={"csrf_token": token, "preset": "quick", "cfg.train.lr": "fast"})
        assert bad.status_code == 400 and "train.lr: expected float, got &#39;fast&#39;" in bad.text
        assert 'value="fast"' in bad.text  # the form keeps what was typed
        r = c.post(
            f"/p/{pid}/train",
            data={"csrf_token": token, "preset": "quick", "cfg.train.lr": "0.001", "cfg.lora.r": "8"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        job = db.one(db.connect(root), "SELECT * FROM jobs WHERE kind='train'")
        saved = yaml.safe_load((root / "projects" / pid / "jobs" / str(job["id"]) / "config.yaml").read_text())
        assert saved["train"]["lr"] == 0.001 and saved["lora"]["r"] == 8 and saved["train"]["max_steps"] == 30  # quick
        assert (
            saved["train"]["output_dir"]
            == job["run_dir"]
            == str(root.resolve() / "projects" / pid / "runs" / str(job["id"]))
        )
        assert (
            json.loads((root / "projects" / pid / "jobs" / str(job["id"]) / "job.json").read_text())["argv"][0]
            == "train"
        )
        # resume is refused while there is no checkpoint to resume from
        assert c.post(f"/jobs/{job['id']}/resume", data={"csrf_token": token}).status_code == 400


def test_verdict_and_review_pages_never_name_the_arms_being_rated(tmp_path):
    root = tmp_path / "projects"
    samples, results = fake_verdict(n_examples=3)
    jid = fake_finished_run(root, samples, results)
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        verdict = c.get(f"/p/demo-000001/verdict/{jid}")
        assert verdict.status_code == 200 and verdict.text.count('class="example"') == 3
        assert c.get(f"/p/demo-000001/verdict/{jid}?task=insight").text.count('class="example"') == 1
        page = c.get(f"/p/demo-000001/review/{jid}", params={"reviewer": "Ana"}).text
        body = page.split("<form", 1)[1]
        for arm in ("zero-shot", "few-shot-retrieved", "fine-tuned"):
            assert arm not in body
        assert "reply number" in body  # the two outputs are there
        assert "0 / 9 rated" in page
        pair = int(body.split('name="pair" value="')[1].split('"')[0])
        r = c.post(
            f"/p/demo-000001/review/{jid}",
            data={"csrf_token": csrf_of(page), "reviewer": "Ana", "pair": pair, "choice": "tie", "comment": "same"},
            follow_redirects=False,
        )
        assert r.status_code == 303 and "reviewer=Ana" in r.headers["location"]
        assert "1 / 9 rated" in c.get(r.headers["location"]).text
        results_page = c.get(f"/p/demo-000001/review/{jid}/results").text
        assert "Bradley–Terry ranking" in results_page
        assert (
            "The experts&#39; ratings do not yet compare fine-tuned with few-shot-retrieved" in results_page
        )  # one tie
        report = c.get(f"/p/demo-000001/report/{jid}")
        assert "Expert review (blind)" in report.text and "sandbox" in report.headers["content-security-policy"]


def test_progress_and_eta_come_from_the_steps_own_time(tmp_path):
    from tunesmith.workbench.views import progress

    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps({"steps": 10}))
    # logged every 2 steps, 100 tokens a step at 50 tokens/s: 2 s a step, 6 steps left
    rows = [{"step": s, "loss": 1.0, "tokens": 100 * s, "tokens_per_s": 50.0} for s in (2, 4)]
    assert progress({"run_dir": str(run), "status": "running"}, rows) == {"step": 4, "total": 10, "eta_s": 12.0}
    assert progress({"run_dir": str(run), "status": "done"}, rows)["eta_s"] is None


def test_chat_refuses_a_malformed_conversation_with_the_reason(tmp_path):
    root = tmp_path / "projects"
    samples, results = fake_verdict(n_examples=1)
    jid = fake_finished_run(root, samples, results)
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/").text)
        r = c.post(
            f"/api/p/demo-000001/chat/{jid}",
            json={"messages": [{"role": "wizard", "content": "hi"}]},
            headers={"X-CSRF-Token": token},
        )
        assert r.status_code == 400 and "messages[0].role 'wizard' is not supported" in r.json()["error"]


def test_the_queue_runs_one_job_at_a_time_and_records_how_each_ended(tmp_path):
    import time

    from tunesmith.workbench import jobs

    root = tmp_path / "projects"
    con = db.connect(root)
    con.execute(
        "INSERT INTO projects (id, name, kind, source, model, created) VALUES ('q-000001', 'q', 'dataset', 'x', 'm', 0)"
    )
    ids = [jobs.submit(root, "q-000001", "export", lambda jid, d: ({"argv": ["--version"]}, None)) for _ in range(3)]
    bad = jobs.submit(
        root, "q-000001", "check", lambda jid, d: ({"argv": ["check", str(tmp_path / "missing.jsonl")]}, None)
    )
    runner = jobs.Runner(root, poll_s=0.05)
    runner.start()
    try:
        deadline, most = time.time() + 120, 0
        while time.time() < deadline:
            states = [r["status"] for r in db.all_(con, "SELECT status FROM jobs ORDER BY id")]
            most = max(most, states.count("running"))
            if all(s not in jobs.ACTIVE for s in states):
                break
            time.sleep(0.02)
    finally:
        runner.close()
    rows = {r["id"]: r for r in db.all_(con, "SELECT * FROM jobs")}
    assert most == 1
    assert [rows[i]["status"] for i in ids] == ["done"] * 3 and all(rows[i]["rc"] == 0 for i in ids)
    assert rows[ids[0]]["ended"] <= rows[ids[1]]["started"] and rows[ids[1]]["ended"] <= rows[ids[2]]["started"]
    assert rows[bad]["status"] == "failed" and rows[bad]["rc"] == 2 and "missing.jsonl" in rows[bad]["message"]


def test_the_check_result_lists_each_problem_by_line_with_its_fix(tmp_path, tiny_model_dir):
    from tunesmith.workbench.worker import run_check

    root = tmp_path / "projects"
    lines = make_chats(tmp_path / "chats.jsonl", n=12).read_text().splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "cut short'  # line 3: not JSON
    with TestClient(create_app(root, run_jobs=False, model=str(tiny_model_dir)), base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/").text)
        pid = c.post(
            "/api/projects",
            params={"filename": "chats.jsonl"},
            content="\n".join(lines).encode(),
            headers={"X-CSRF-Token": token},
        ).json()["id"]
        folder = root / "projects" / pid
        assert run_check(str(folder / "data" / "config.yaml"), str(folder / "check.json")) == 1  # the job's exit code
        page = c.get(f"/p/{pid}").text
    assert "NOT OK" in page and "dataset.jsonl:3" in page and "invalid-json (error)" in page
    assert "each line must be one complete JSON object" in page  # the fix, from validate.CODES


def test_one_runner_per_projects_folder(tmp_path):
    import pytest

    from tunesmith import UserError
    from tunesmith.workbench import jobs

    first = jobs.Runner(tmp_path)
    first.start()
    try:
        with pytest.raises(UserError, match="another workbench is already running jobs"):
            jobs.Runner(tmp_path).start()
    finally:
        first.close()
    second = jobs.Runner(tmp_path)  # the lock goes with the runner that held it
    second.start()
    second.close()


def test_a_projects_path_that_is_a_file_is_refused_with_the_fix(tmp_path):
    import pytest

    from tunesmith import UserError

    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(UserError, match=r"notes.txt: a file, not a projects directory. fix: name a directory"):
        create_app(tmp_path / "notes.txt", run_jobs=False)
    assert (tmp_path / "notes.txt").read_text() == "not a folder"  # nothing it had is lost


def test_chat_refuses_bad_parameters_as_serve_does(tmp_path):
    """The workbench used to clamp max_tokens and temperature silently; now both apps answer 400."""
    root = tmp_path / "projects"
    samples, results = fake_verdict(n_examples=1)
    jid = fake_finished_run(root, samples, results)
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/").text)
        messages = [{"role": "user", "content": "hi"}]
        for extra, why in [
            ({"temperature": 5}, "`temperature` must be >= 0.0 and <= 2.0, got 5.0."),
            ({"max_tokens": 0}, "`max_tokens` must be >= 1"),
            ({"max_tokens": 10**6}, "`max_tokens` must be >= 1 and <= 2048"),
            ({"max_tokens": "many"}, "`max_tokens` must be an integer, got 'many'."),
        ]:
            r = c.post(
                f"/api/p/demo-000001/chat/{jid}", json={"messages": messages, **extra}, headers={"X-CSRF-Token": token}
            )
            assert r.status_code == 400 and why in r.json()["error"], (extra, r.text)


def test_upload_errors_name_the_uploads_own_paths(tmp_path):
    """Issue 24: a folder the importer cannot use showed the server's path to it."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("research/notes.txt", "Notes without any front matter.")
    with TestClient(create_app(tmp_path / "projects", run_jobs=False), base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/").text)
        r = c.post("/api/projects?filename=research.zip", content=buf.getvalue(), headers={"X-CSRF-Token": token})
    error = r.json()["error"]
    assert r.status_code == 400 and "no examples could be built from research:" in error
    assert str(tmp_path) not in error and "/source" not in error


def test_jobs_never_see_the_servers_key(tmp_path):
    env = {"PATH": "/usr/bin", "TUNESMITH_API_KEY": "k" * 20, "MY_COPY": "k" * 20, "JUDGE_KEY": "j"}
    app = create_app(tmp_path / "projects", api_key="k" * 20, run_jobs=False, job_env=env)
    assert app.state.runner.env == {"PATH": "/usr/bin", "JUDGE_KEY": "j"}
    assert {"TUNESMITH_API_KEY", "MY_COPY"} <= set(app.state.site.policy.secret_envs)
