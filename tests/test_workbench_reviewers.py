"""Reviewer access, the audit log and collect mode: an invited reviewer reaches only their
project's review pages (every route of the app enumerated), rates under the invitation's name, and
loses access at once when it is revoked or expires; the audit log refuses changes; a training pair
never answers a held-out prompt."""

import json
import re
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient
from test_workbench_review import fake_verdict
from workbench_util import csrf_of, fake_finished_run

from tunesmith import UserError
from tunesmith.workbench import collect, db
from tunesmith.workbench.app import create_app

KEY = "owner-key-for-tests"
OWNER = {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}

# Every route of the app, with what a reviewer gets: a page (allowed) or 403. A route added later
# must be placed here, so that someone decided whether a reviewer may reach it.
REVIEWER_MAY = {
    ("GET", "/health"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/invite/{token}"),
    ("POST", "/invite/{token}"),
    ("GET", "/p/{pid}/reviews"),
    ("GET", "/p/{pid}/review/{jid}"),
    ("POST", "/p/{pid}/review/{jid}"),
    ("GET", "/p/{pid}/collect/{cid}"),
    ("POST", "/p/{pid}/collect/{cid}"),
}
OWNER_ONLY = {
    ("GET", "/"),
    ("POST", "/api/projects"),
    ("GET", "/p/{pid}"),
    ("POST", "/p/{pid}/check"),
    ("POST", "/p/{pid}/train"),
    ("POST", "/jobs/{jid}/stop"),
    ("POST", "/jobs/{jid}/resume"),
    ("GET", "/api/jobs/{jid}"),
    ("GET", "/jobs/{jid}/log"),
    ("GET", "/jobs/{jid}/events"),
    ("POST", "/p/{pid}/compare/{jid}"),
    ("GET", "/p/{pid}/verdict/{jid}"),
    ("GET", "/p/{pid}/report/{jid}"),
    ("GET", "/p/{pid}/review/{jid}/results"),
    ("GET", "/api/p/{pid}/review/{jid}/results"),
    ("GET", "/p/{pid}/review/{jid}/ratings.csv"),
    ("GET", "/p/{pid}/review/{jid}/preferences.jsonl"),
    ("GET", "/p/{pid}/chat/{jid}"),
    ("POST", "/api/p/{pid}/chat/{jid}"),
    ("POST", "/p/{pid}/export/{jid}"),
    ("POST", "/p/{pid}/invitations"),
    ("POST", "/p/{pid}/invitations/{iid}/revoke"),
    ("GET", "/audit"),
    ("POST", "/p/{pid}/collect/{jid}/start"),
    ("GET", "/p/{pid}/collect/{cid}/results"),
    ("GET", "/p/{pid}/collect/{cid}/pairs.jsonl"),
    ("POST", "/p/{pid}/collect/{cid}/prefer"),
}


def chats(path, prefix: str, n: int) -> str:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{prefix} question {i}: how do planners keep the basket open?"},
                {"role": "assistant", "content": f"{prefix} answer {i}: they leave room for one swap."},
            ],
            "meta": {"id": f"{prefix}-{i}", "group": f"{prefix}{i}"},
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def fake_collection(root, pid: str, run_jid: int, prompts: list[list[dict]]) -> int:
    """A finished collection job of run `run_jid` whose samples answer `prompts`; the run's job
    config points at a training split and a held-out split (the held-out one: 'heldout question i')."""
    folder = root / "projects" / pid
    train = chats(folder / "data" / "train.jsonl", "train", 6)
    heldout = chats(folder / "data" / "heldout.jsonl", "heldout", 3)
    run_job = folder / "jobs" / str(run_jid)
    run_job.mkdir(parents=True, exist_ok=True)
    (run_job / "config.yaml").write_text(
        f"model:\n  name: smollm2-135m-instruct\ndata:\n  train: {train}\n  heldout: {heldout}\n"
    )
    con = db.connect(root)
    cid = con.execute(
        "INSERT INTO jobs (project, kind, status, parent, params, created) VALUES (?, 'collect', 'done', ?, ?, 0)",
        (pid, run_jid, json.dumps({"prompts": len(prompts), "temperature": 0.9})),
    ).lastrowid
    (folder / "jobs" / str(cid)).mkdir(parents=True)
    rows = [
        {
            "index": i,
            "meta": {"id": f"c{i}"},
            "prompt": p,
            "outputs": {"reply-1": {"text": f"first reply {i}"}, "reply-2": {"text": f"second reply {i}"}},
        }
        for i, p in enumerate(prompts)
    ]
    (folder / "jobs" / str(cid) / collect.SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cid


def training_prompts(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"train question {i}: how do planners keep the basket open?"}] for i in range(n)
    ]


@pytest.fixture
def bench(tmp_path):
    root = tmp_path / "projects"
    samples, results = fake_verdict(n_examples=3)
    jid = fake_finished_run(root, samples, results, pid="mine-000001")
    cid = fake_collection(root, "mine-000001", jid, training_prompts(4))
    app = create_app(root, api_key=KEY, run_jobs=False)
    with TestClient(app, base_url="http://127.0.0.1") as owner:
        owner.headers.update(OWNER)
        yield {"app": app, "root": root, "owner": owner, "jid": jid, "cid": cid}


def invite(owner, pid="mine-000001", name="Ana", days=14) -> dict:
    r = owner.post(f"/p/{pid}/invitations", data={"name": name, "days": str(days)})
    assert r.status_code == 200, r.text
    return r.json()


def reviewer_client(app, link: str) -> TestClient:
    """A browser that opened the invitation link and pressed Start."""
    c = TestClient(app, base_url="http://127.0.0.1")
    path = link.split("127.0.0.1", 1)[1]
    landing = c.get(path)
    assert landing.status_code == 200 and "Start reviewing as" in landing.text
    r = c.post(path, data={"csrf_token": csrf_of(landing.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/reviews")
    c.csrf = csrf_of(c.get(r.headers["location"]).text)
    return c


def _routes(app):
    from starlette.routing import Mount

    def walk(items):
        for route in items:
            inner = getattr(route, "original_router", None)
            yield from walk(inner.routes) if inner is not None else [route]

    return [r for r in walk(app.routes) if not isinstance(r, Mount)]


def test_a_reviewer_reaches_only_the_review_pages_of_their_project(bench):
    app, owner, jid, cid = bench["app"], bench["owner"], bench["jid"], bench["cid"]
    link = invite(owner)["link"]
    assert re.fullmatch(r"http://127\.0\.0\.1/invite/[\w-]{40,}", link)
    # the token is stored only as its hash
    stored = db.one(db.connect(bench["root"]), "SELECT token FROM invitations")["token"]
    assert link.rsplit("/", 1)[1] not in stored and len(stored) == 64
    rev = reviewer_client(app, link)

    every = {(m, r.path) for r in _routes(app) for m in r.methods - {"HEAD"}}
    assert every == REVIEWER_MAY | OWNER_ONLY, "a route without a decision for reviewers: " + repr(
        every ^ (REVIEWER_MAY | OWNER_ONLY)
    )
    values = {"pid": "mine-000001", "jid": str(jid), "cid": str(cid), "iid": "1", "token": "x"}
    fill = lambda path, **kw: re.sub(r"\{(\w+)\}", lambda m: {**values, **kw}[m.group(1)], path)  # noqa: E731
    answers = {}
    for method, path in sorted(every):
        if path.startswith("/invite/") or path in ("/logout", "/login"):
            continue  # a new session, the end of this one: below
        for accept in ("application/json", "text/html"):
            r = rev.request(method, fill(path), headers={"Accept": accept, "X-CSRF-Token": rev.csrf})
            answers[(method, path, accept)] = r.status_code
            if (method, path) in OWNER_ONLY:
                assert r.status_code == 403, (method, path, r.status_code)
            else:
                assert r.status_code != 403, (method, path, r.status_code, r.text[:200])
        if "{pid}" in path:  # the same review pages of another project: refused
            r = rev.request(method, fill(path, pid="other-000002"), headers={"X-CSRF-Token": rev.csrf})
            assert r.status_code == 403, (method, path, "other project")
    assert answers[("GET", "/", "text/html")] == 403 and answers[("GET", "/p/{pid}/reviews", "text/html")] == 200
    page = rev.get("/", headers={"Accept": "text/html"})
    assert "/p/mine-000001/reviews" in page.text  # the 403 page says where to go
    home = rev.get("/p/mine-000001/reviews").text
    assert f"/p/mine-000001/collect/{cid}" in home and f"/p/mine-000001/review/{jid}" in home
    assert 'href="/"' not in home and "audit log" not in home  # no link the reviewer would find closed
    # the owner's key keeps full access
    assert owner.get("/audit").status_code == 200 and owner.get("/p/mine-000001").status_code == 200


def test_ratings_carry_the_invitation_name_and_revoking_ends_the_session_at_once(bench):
    app, owner, jid, cid, root = bench["app"], bench["owner"], bench["jid"], bench["cid"], bench["root"]
    inv = invite(owner, name="Ana Lopez")
    rev = reviewer_client(app, inv["link"])
    page = rev.get(f"/p/mine-000001/collect/{cid}?reviewer=Mallory").text
    assert "as Ana Lopez" in page and "Mallory" not in page and "training</b> material" in page
    pair = int(re.search(r'name="pair" value="(\d+)"', page).group(1))
    r = rev.post(
        f"/p/mine-000001/collect/{cid}",
        json={"pair": pair, "choice": "A", "reviewer": "Mallory"},  # a typed name is ignored
        headers={"X-CSRF-Token": rev.csrf},
    )
    assert r.status_code == 200, r.text
    # the evaluation review too: no name form, the invitation's name
    page = rev.get(f"/p/mine-000001/review/{jid}").text
    assert "as Ana Lopez" in page and 'id="reviewer"' not in page
    con = db.connect(root)
    rows = db.all_(con, "SELECT reviewer, invitation FROM ratings")
    assert rows == [{"reviewer": "Ana Lopez", "invitation": inv["id"]}]
    listed = owner.get("/p/mine-000001", headers={"Accept": "text/html"}).text
    assert re.search(r"<td>Ana Lopez</td>.*?<td>1</td>", listed, re.S)  # ratings through the invitation
    assert db.invitation(con, inv["id"])["last_used"] is not None

    assert owner.post(f"/p/mine-000001/invitations/{inv['id']}/revoke").json() == {"revoked": inv["id"]}
    r = rev.get(f"/p/mine-000001/collect/{cid}", headers={"Accept": "text/html"})
    assert r.status_code == 403 and "was revoked by the project" in r.text and "ratings so far are kept" in r.text
    assert rev.get(f"/p/mine-000001/collect/{cid}").status_code == 401  # the session is gone, not just refused
    assert rev.get(inv["link"].split("127.0.0.1", 1)[1]).status_code == 403  # and the link opens nothing
    assert len(db.all_(con, "SELECT * FROM ratings")) == 1  # nothing they had is lost

    # expiry ends a session the same way, at its next request
    late = invite(owner, name="Ben")
    rev2 = reviewer_client(app, late["link"])
    assert rev2.get("/p/mine-000001/reviews").status_code == 200
    con.execute("UPDATE invitations SET expires=? WHERE id=?", (time.time() - 1, late["id"]))
    r = rev2.get("/p/mine-000001/reviews", headers={"Accept": "text/html"})
    assert r.status_code == 403 and "invitation for Ben expired on" in r.text
    actions = [(a["who"], a["action"]) for a in db.audit_rows(con)]
    for expected in [
        ("owner", "invitation created"),
        ("reviewer Ana Lopez", "invitation used"),
        ("reviewer Ana Lopez", "rating"),
        ("owner", "invitation revoked"),
    ]:
        assert expected in actions
    bad = owner.post("/p/mine-000001/invitations", data={"name": "Cy", "days": "0"})
    assert bad.status_code == 400 and "number of days from 1 to 365" in bad.json()["error"]


def test_the_audit_log_is_append_only_and_records_key_rotation(bench, tmp_path):
    con = db.connect(bench["root"])
    invite(bench["owner"])
    n = len(db.audit_rows(con))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE audit SET who='someone else'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM audit")
    assert len(db.audit_rows(con)) == n
    page = bench["owner"].get("/audit", headers={"Accept": "text/html"}).text
    assert "invitation created" in page and "key first used" in page
    create_app(bench["root"], api_key="another-owner-key", run_jobs=False)  # the workbench restarted with a new key
    rotated = db.audit_rows(con)[0]
    assert rotated["action"] == "key rotated" and "another-owner-key" not in json.dumps(db.audit_rows(con))


def test_a_training_pair_never_answers_a_heldout_prompt(bench):
    root, cid = bench["root"], bench["cid"]
    config = root / "projects" / "mine-000001" / "jobs" / str(bench["jid"]) / "config.yaml"
    held = collect.heldout_keys(config)
    assert len(held) == 3
    con = db.connect(root)
    sneaky = [
        {"index": 0, "prompt": training_prompts(1)[0], "outputs": {}},
        # a held-out prompt in other case and spacing, behind a system prompt of its own
        {
            "index": 1,
            "meta": {"id": "sneak"},
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "HELDOUT question 2:   how do planners keep the basket open?"},
            ],
            "outputs": {},
        },
    ]
    with pytest.raises(UserError, match=r"1 pair\(s\) answer a held-out prompt \(first: example sneak\)"):
        collect.store_train_pairs(con, cid, sneaky, held)
    assert db.all_(con, "SELECT * FROM pairs WHERE run_job=?", cid) == []  # nothing written, not even the good one
    # a collection whose job wrote a held-out prompt is refused on its page, and nothing trains from it
    bad = fake_collection(root, "mine-000001", bench["jid"], [sneaky[1]["prompt"]])
    r = bench["owner"].get(f"/p/mine-000001/collect/{bad}?reviewer=Ana")
    assert r.status_code == 400 and "held-out prompts judge the model and must never train it" in r.json()["error"]
    home = bench["owner"].get("/p/mine-000001/reviews", headers={"Accept": "text/html"})  # still lists the rest
    assert home.status_code == 200 and f"Collection #{bad}: collection {bad}: 1 pair(s) answer a held-out" in home.text
    assert f"/p/mine-000001/collect/{cid}" in home.text
    # the good collection's pairs are kind "train"; the evaluation export never carries them
    assert bench["owner"].get(f"/p/mine-000001/collect/{cid}?reviewer=Ana").status_code == 200
    kinds = {r["kind"] for r in db.all_(con, "SELECT kind FROM pairs WHERE run_job=?", cid)}
    assert kinds == {"train"}


def test_collected_ratings_export_as_pairs_that_train_and_errors_are_clear(bench):
    from tunesmith.data import load_examples

    owner, root, cid, jid = bench["owner"], bench["root"], bench["cid"], bench["jid"]
    # no decided pair yet: the close-the-loop button explains instead of training on nothing
    r = owner.post(f"/p/mine-000001/collect/{cid}/prefer", data={})
    assert r.status_code == 400 and "has no decided pair yet" in r.json()["error"]
    page = owner.get(f"/p/mine-000001/collect/{cid}?reviewer=Ana", headers={"Accept": "text/html"}).text
    for _ in range(4):  # Ana prefers the first reply everywhere
        pair = int(re.search(r'name="pair" value="(\d+)"', page).group(1))
        a_text = re.search(r'id="text-a">(.*?)</div>', page, re.S).group(1)
        owner.post(
            f"/p/mine-000001/collect/{cid}",
            json={"pair": pair, "reviewer": "Ana", "choice": "A" if "first" in a_text else "B"},
        )
        page = owner.get(f"/p/mine-000001/collect/{cid}?reviewer=Ana", headers={"Accept": "text/html"}).text
    assert "All 4 pairs rated" in page
    text = owner.get(f"/p/mine-000001/collect/{cid}/pairs.jsonl").text
    path = root / "pairs.jsonl"
    path.write_text(text)
    pairs = load_examples(str(path), "preference")  # what `tunesmith train data.format=preference` reads
    assert len(pairs) == 4
    assert all(json.loads(x)["chosen"][0]["content"].startswith("first reply") for x in text.splitlines())
    results = owner.get(f"/p/mine-000001/collect/{cid}/results", headers={"Accept": "text/html"}).text
    assert "4 of 4 pairs decided" in results and 'id="prefer"' in results
    # the evaluation export says what it is, and holds no training pair
    r = owner.get(f"/p/mine-000001/review/{jid}/preferences.jsonl")
    assert "eval-only" in r.headers["content-disposition"] and "first reply" not in r.text
    r = owner.post(f"/p/mine-000001/collect/{jid}/start", data={"prompts": "4", "against": str(jid)})
    assert r.status_code == 400 and f"run {jid} is not another finished run" in r.json()["error"]
    # a collection on a run without a training split: a clear refusal, no job
    config = root / "projects" / "mine-000001" / "jobs" / str(jid) / "config.yaml"
    held = root / "projects" / "mine-000001" / "data" / "heldout.jsonl"
    config.write_text(f"model:\n  name: smollm2-135m-instruct\ndata:\n  heldout: {held}\n")
    before = len(db.jobs_of(db.connect(root), "mine-000001"))
    r = owner.post(f"/p/mine-000001/collect/{jid}/start", data={"prompts": "4"})
    assert r.status_code == 400 and "data.train is not set" in r.json()["error"], r.text
    assert len(db.jobs_of(db.connect(root), "mine-000001")) == before
    r = owner.post(f"/p/mine-000001/collect/{jid}/start", data={"prompts": "0"})
    assert r.status_code == 400 and "prompts: '0' is not a number from 1 to 2000" in r.json()["error"]
