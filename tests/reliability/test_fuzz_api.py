"""API fuzzing: Hypothesis sends requests to every route of the OpenAI-compatible server — bodies
shaped like OpenAI's chat completion request with wrong types, out-of-range numbers, odd Unicode and
junk inside, raw bytes, other methods and paths, with and without the API key. No answer is a 5xx;
every 4xx is in OpenAI's error shape; every 200 is a well-formed completion (a stream ends with
[DONE]). The workbench's training form gets any config key (shown on the form or not) with hostile
values: no answer is a 5xx, and every job it accepts stays inside its project.

    pytest -q tests/reliability/test_fuzz_api.py -s        # prints the requests tried
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAME = "tiny"
KEY = "k3y"
TRIED = {"requests": 0, "200": 0, "4xx": 0, "5xx": 0}
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def http(tiny_model_dir):
    """The app in process (Starlette's TestClient), with a context of 96 tokens so that any accepted
    request generates a few dozen tokens at most."""
    from fastapi.testclient import TestClient

    from tunesmith.models import load
    from tunesmith.serve import create_app

    model, tok = load(str(tiny_model_dir), device="cpu")
    model.config.max_position_embeddings = 96
    app = create_app((model, tok), model_name=NAME, api_key=KEY, max_body_bytes=4096, default_max_tokens=4)
    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as client:
        yield client


odd = st.text(st.characters(exclude_categories=("Cs",)), max_size=20) | st.sampled_from(["", "\x00", "\u202e", "🧑‍🍳"])
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | odd,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(odd, kids, max_size=3),
    max_leaves=8,
)
number = st.integers(-5, 100) | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([10**30, -0.0, 2**63])
content = (
    odd
    | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", ""]) | odd, "text": odd | junk}),
        max_size=2,
    )
    | junk
)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]) | odd | junk,
        "content": content,
        "name": odd,
    },
)
chat_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from([NAME, "gpt-4o", "", "../../etc/passwd"]) | junk,
        "messages": st.lists(message, max_size=4) | junk,
        "max_tokens": number | junk,
        "max_completion_tokens": number | junk,
        "temperature": number | junk,
        "top_p": number | junk,
        "n": number | junk,
        "stream": st.booleans() | junk,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": junk}) | junk,
        "stop": odd | st.lists(odd, max_size=5) | junk,
        "tools": junk,
        "logprobs": junk,
        "response_format": junk,
        "presence_penalty": number,
        "seed": junk,
        "user": odd,
        "extra": junk,
    },
)
# Mostly valid requests, so that generation itself (streams, stop strings, lengths) gets fuzzed too.
plausible = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": odd}),
            min_size=1,
            max_size=3,
        )
    },
    optional={
        "model": st.just(NAME),
        "max_tokens": st.integers(1, 60),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "stream": st.booleans(),
        "stop": odd | st.lists(odd, max_size=4),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "seed": st.integers(),
    },
)
routes = st.sampled_from(
    [("POST", "/v1/chat/completions")] * 6
    + [
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", f"/v1/models/{NAME}"),
        ("GET", "/v1/models/x%2F..%2F.."),
        ("DELETE", "/v1/models"),
        ("GET", "/health"),
        ("GET", "/"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/../../etc/passwd"),
        ("PUT", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
    ]
)


@st.composite
def requests(draw):
    method, path = draw(routes)
    kind = draw(st.sampled_from(["json", "json", "json", "bytes", "none"]))
    if kind == "json":
        body = json.dumps(draw(st.one_of(plausible, plausible, chat_body, junk)), allow_nan=True).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=64) | st.just(b"{" * 3000) | st.just(b"x" * 5000))
    else:
        body = b""
    auth = draw(st.sampled_from([f"Bearer {KEY}"] * 4 + ["", "Bearer nope", "Basic !!!", f"bearer {KEY}"]))
    ctype = draw(st.sampled_from(["application/json", "text/plain", ""]))
    return method, path, body, {k: v for k, v in (("Authorization", auth), ("Content-Type", ctype)) if v}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(req=requests())
def test_no_request_gets_a_5xx_and_every_error_is_in_openai_shape(http, req):
    method, path, body, headers = req
    r = http.request(method, path, content=body, headers=headers)
    TRIED["requests"] += 1
    outcome = "5xx" if r.status_code >= 500 else "4xx" if r.status_code >= 400 else "200"
    TRIED[outcome] += 1
    if outcome == "200" and path == "/v1/chat/completions":
        TRIED["completions"] = TRIED.get("completions", 0) + 1
    assert r.status_code < 500, (r.status_code, r.text[:500], req)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) == ERROR_KEYS and isinstance(error["message"], str) and error["message"], r.text
        return
    if path != "/v1/chat/completions":
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in r.text.splitlines() if line]
        assert events[-1] == "data: [DONE]", events[-3:]
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    else:
        reply = r.json()
        assert reply["object"] == "chat.completion" and isinstance(reply["choices"][0]["message"]["content"], str)
        assert reply["usage"]["completion_tokens"] <= 96


def test_zz_print_figures():
    print(f"\nAPI fuzzing: {json.dumps(TRIED)}")
    assert TRIED["requests"] >= 300 and TRIED["5xx"] == 0 and TRIED.get("completions", 0) >= 10


# ------------------------------------------------------------------ the workbench's training form

FORM = {"requests": 0, "accepted": 0, "refused": 0}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from fastapi.testclient import TestClient
    from test_train import make_chats
    from workbench_util import csrf_of

    from tunesmith.workbench.app import create_app

    tmp = tmp_path_factory.mktemp("bench")
    app = create_app(tmp / "projects", run_jobs=False, allowed_urls=("http://judge.lan/v1",))
    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as client:
        token = csrf_of(client.get("/").text)
        data = make_chats(tmp / "chats.jsonl", n=12).read_bytes()
        pid = client.post("/api/projects?filename=chats.jsonl", content=data, headers={"X-CSRF-Token": token}).json()
        yield client, pid["id"], token, app.state.site


def _config_keys():
    from tunesmith.config import field_docs

    return [k for k, *_ in field_docs()]


def _form_keys():
    from tunesmith.workbench.contract import form_keys

    return form_keys()


# any config key, half the time one the form shows (with model.name, where a path is a model folder)
config_key = st.sampled_from(_config_keys()) | st.sampled_from(_form_keys()) | st.just("model.name")


hostile = (
    st.sampled_from(
        [
            "/etc/passwd",
            "../../../etc",
            "~/.ssh/id_rsa",
            "source/../../..",
            "/tmp",
            "http://attacker.example/v1",
            "http://judge.lan/v1",
            "TUNESMITH_API_KEY",
            "true",
            "1",
            "",
        ]
    )
    | odd
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(fields=st.dictionaries(config_key.map(lambda k: "cfg." + k), hostile, max_size=3))
def test_no_training_form_reaches_outside_its_project(bench, fields):
    import yaml

    from tunesmith.config import load_config
    from tunesmith.workbench import db
    from tunesmith.workbench.contract import check_job_config, form_keys, inside, path_keys

    client, pid, token, site = bench
    folder = site.root / "projects" / pid
    before = db.one(site.con(), "SELECT MAX(id) AS n FROM jobs")["n"]
    r = client.post(f"/p/{pid}/train", data={"csrf_token": token, "preset": "quick", **fields}, follow_redirects=False)
    FORM["requests"] += 1
    assert r.status_code in (303, 400), (r.status_code, r.text[-500:], fields)
    job = db.one(site.con(), "SELECT * FROM jobs WHERE id > ? AND kind='train'", before)
    if r.status_code == 400:
        FORM["refused"] += 1
        assert job is None and str(site.root) not in r.text.split('id="form-error">')[1].split("</p>")[0]
        return
    FORM["accepted"] += 1
    assert all(k[4:] in form_keys() for k in fields)  # only what the form shows was accepted
    cfg = load_config(folder / "jobs" / str(job["id"]) / "config.yaml")
    check_job_config(cfg, folder, site.policy)
    assert not cfg.model.trust_remote_code
    raw = yaml.safe_load((folder / "jobs" / str(job["id"]) / "config.yaml").read_text())
    for key in path_keys(cfg):
        section, name = key.split(".")
        assert not raw[section][name] or inside(raw[section][name], folder), (key, raw[section][name])


def test_zz_print_form_figures():
    print(f"\nworkbench form fuzzing: {json.dumps(FORM)}")
    assert FORM["requests"] >= 150 and FORM["refused"] > 0
