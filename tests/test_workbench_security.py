"""The workbench with a key: every route refuses without the key or a session; sign-in sets a
strict cookie; state changes need a CSRF token; hostile uploads are refused and write nothing."""

import io
import re
import stat
import zipfile

import pytest
from fastapi.testclient import TestClient
from workbench_util import csrf_of

from tunesmith.workbench.app import create_app

KEY = "s3cret-key"


@pytest.fixture
def client(tmp_path):
    app = create_app(tmp_path / "projects", api_key=KEY, run_jobs=False)
    with TestClient(app) as c:
        c.app_ = app
        yield c


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(1) == "jid" else "x-000000", path)


def test_every_route_answers_401_without_the_key(client):
    from starlette.routing import Mount

    checked = []
    for route in client.app_.routes:
        if isinstance(route, Mount):
            calls = [("GET", route.path + "/workbench.css")]
        else:
            calls = [(m, _concrete(route.path)) for m in sorted(route.methods - {"HEAD"})]
        for method, path in calls:
            if path in ("/login", "/health"):
                continue
            for accept in ("text/html", "application/json"):
                r = client.request(method, path, headers={"Accept": accept})
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
    assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 401
    client.cookies.set("ts_session", "9999999999.abc.deadbeef")
    assert client.get("/").status_code == 401
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
    with TestClient(app) as c:
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
    with TestClient(app) as c:
        token = csrf_of(c.get("/").text)
        r = c.post("/api/projects?filename=big.jsonl", content=b"x" * 5000, headers={"X-CSRF-Token": token})
        assert r.status_code == 413 and "limit" in r.json()["error"]
        assert not any((tmp_path / "projects" / ".uploads").iterdir())
        assert not any((tmp_path / "projects" / "projects").iterdir())
