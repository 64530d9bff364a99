"""API fuzzing: Hypothesis sends requests to every route of the OpenAI-compatible server — bodies
shaped like OpenAI's chat completion request with wrong types, out-of-range numbers, odd Unicode and
junk inside, raw bytes, other methods and paths, with and without the API key. No answer is a 5xx;
every 4xx is in OpenAI's error shape; every 200 is a well-formed completion (a stream ends with
[DONE]).

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
