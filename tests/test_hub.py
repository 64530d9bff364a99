"""Hub models through the real huggingface_hub client, against a local server that speaks the hub's
protocol (tests/hub_server.py): first download, cache reuse, revision pinning, a dropped connection
resumed, gated (401/403), unknown (404), a disk too small, offline mode, GGUF repositories."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hub_server import FakeHub

from tunesmith import UserError
from tunesmith.models import load, resolve

NEEDED = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        yield server


@pytest.fixture(scope="module")
def model_files(tiny_model_dir) -> dict[str, bytes]:
    """The tiny model as a publisher would put it on the hub, with what tunesmith must not fetch."""
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    assert NEEDED <= set(files)
    files["pytorch_model.bin"] = b"a pickle that must never be fetched"
    files["onnx/model.safetensors"] = b"another format, in a subfolder"
    files["README.md"] = b"# tiny\n"
    return files


def _fetched(hub: FakeHub) -> set[str]:
    """The files whose bytes the client asked for (resolve GETs, and CDN GETs mapped back to names)."""
    by_digest = {
        hashlib.sha256(data).hexdigest(): name
        for repo in hub.repos.values()
        for c in repo["commits"].values()
        for name, data in c.items()
    }
    names = set()
    for path in hub.paths("GET"):
        if "/resolve/" in path:
            names.add(path.split("/resolve/", 1)[1].split("/", 1)[1])
        elif path.startswith("/cdn/"):
            names.add(by_digest[path.removeprefix("/cdn/")])
    return names


def test_first_download_fetches_only_what_a_model_needs(hub, model_files):
    sha = hub.add("acme/tiny", model_files)
    src = resolve("acme/tiny")
    assert src.kind == "hub" and src.revision == sha and src.path.name == sha
    fetched = _fetched(hub)
    assert NEEDED <= fetched
    assert not fetched & {"pytorch_model.bin", "onnx/model.safetensors", "README.md"}
    assert (src.path / "model.safetensors").read_bytes() == model_files["model.safetensors"]
    model, tok = load(src, device="cpu")
    assert model.config.hidden_size == 64 and tok("hi").input_ids


def test_the_cache_is_used_with_no_request_at_all(hub, model_files):
    hub.add("acme/tiny", model_files)
    first = resolve("acme/tiny")
    hub.requests.clear()
    assert resolve("acme/tiny") == first
    assert hub.requests == []


def test_a_revision_is_pinned_and_recorded(hub, model_files):
    old = hub.add("acme/tiny", model_files, tags=["v1"])
    newer = dict(model_files, **{"generation_config.json": b'{"max_length": 7}'})
    new = hub.add("acme/tiny", newer)
    assert resolve("acme/tiny", revision="v1").revision == old
    assert (resolve("acme/tiny", revision="v1").path / "generation_config.json").read_bytes() == model_files[
        "generation_config.json"
    ]
    assert resolve("acme/tiny").revision == new
    hub.requests.clear()
    assert resolve("acme/tiny", revision=old).revision == old  # a commit already cached: no request
    assert hub.requests == []
    with pytest.raises(UserError, match="no revision 'v9'"):
        resolve("acme/tiny", revision="v9")


def test_a_training_run_records_the_commit_it_used(hub, model_files, tmp_path):
    from tunesmith.config import load_config
    from tunesmith.testing import make_chats
    from tunesmith.train import train

    sha = hub.add("acme/tiny", model_files, tags=["v1"])
    data = make_chats(tmp_path / "train.jsonl", n=12)
    cfg = load_config(
        None,
        [
            "model.name=acme/tiny",
            "model.revision=v1",
            f"data.train={data}",
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=1",
            "train.batch_size=2",
            "lora.r=2",
            "train.threads=1",
        ],
    )
    run = train(cfg)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "acme/tiny" and saved["model"]["revision"] == sha
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == ("acme/tiny", sha)
    hub.requests.clear()
    assert resolve(str(run)).base.revision == sha  # the run loads on the weights it was trained on
    assert hub.requests == []


def test_serve_loads_the_revision_its_config_pins(hub, model_files, tmp_path):
    import argparse

    from fastapi.testclient import TestClient

    from tunesmith.serve import create_app, model_to_serve

    old = hub.add("acme/tiny", model_files, tags=["v1"])
    hub.add("acme/tiny", dict(model_files, **{"generation_config.json": b'{"max_length": 7}'}))
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  name: acme/tiny\n  revision: v1\n")
    args = argparse.Namespace(config=str(config), model=None, revision="", quant="")
    from tunesmith.config import load_config

    source = model_to_serve(args, load_config(str(config)))
    assert source.spec == "acme/tiny" and source.revision == old  # not main's newer commit
    # --model names another model: the config's pin is not applied to it
    assert model_to_serve(argparse.Namespace(**{**vars(args), "model": "acme/tiny"}), load_config(str(config))) == (
        "acme/tiny"
    )
    with TestClient(create_app(source), base_url="http://127.0.0.1") as client:  # a Host the app answers
        assert client.get("/v1/models").json()["data"][0]["id"] == "acme/tiny"


def test_a_dropped_connection_resumes_where_it_stopped(hub, model_files):
    from huggingface_hub import constants

    weights = model_files["model.safetensors"]
    digest = hashlib.sha256(weights).hexdigest()
    # the client keeps what it has written, in chunks of DOWNLOAD_CHUNK_SIZE: cut past the first one
    assert len(weights) > constants.DOWNLOAD_CHUNK_SIZE + 1000
    hub.add("acme/tiny", model_files)
    hub.cut[digest] = len(weights) - 1000  # the first GET of the weights stops short and the server hangs up
    src = resolve("acme/tiny")
    assert (src.path / "model.safetensors").read_bytes() == weights
    gets = [rng for method, path, rng in hub.requests if method == "GET" and path == f"/cdn/{digest}"]
    assert gets == ["", f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"]  # the second asks only for the rest


def test_files_finished_before_an_interruption_are_not_fetched_again(hub, model_files):
    digest = hashlib.sha256(model_files["model.safetensors"]).hexdigest()
    hub.add("acme/tiny", model_files)
    hub.fail.add(digest)  # the hub fails on the weights: the run stops
    with pytest.raises(UserError) as err:
        resolve("acme/tiny")
    assert "HTTP 500" in str(err.value) and "run again" in str(err.value)
    assert "config.json" in _fetched(hub)
    hub.requests.clear()
    src = resolve("acme/tiny")
    assert _fetched(hub) == {"model.safetensors"}  # only what was missing
    assert (src.path / "model.safetensors").read_bytes() == model_files["model.safetensors"]


def test_a_gated_model_names_its_page(hub, model_files, monkeypatch):
    hub.add("acme/gated", model_files, gated_token="hf_accepted")
    page = f"{hub.url}/acme/gated"
    with pytest.raises(UserError) as err:
        resolve("acme/gated")
    assert "gated" in str(err.value) and "HTTP 401" in str(err.value) and page in str(err.value)
    assert "HF_TOKEN" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", "hf_not_accepted")
    with pytest.raises(UserError) as err:
        resolve("acme/gated")
    assert "HTTP 403" in str(err.value) and f"open {page}, accept its terms" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", "hf_accepted")
    assert resolve("acme/gated").kind == "hub"


def test_an_unknown_id_is_named(hub):
    with pytest.raises(UserError) as err:
        resolve("acme/no-such-model")
    msg = str(err.value)
    assert "no model 'acme/no-such-model'" in msg and "HTTP 404" in msg and hub.url in msg


def test_a_disk_too_small_is_refused_before_any_byte(hub, model_files, tmp_path):
    hub.add("acme/huge", model_files)
    hub.claim_size["model.safetensors"] = 10**15  # the listing says 1 PB
    with pytest.raises(UserError) as err:
        resolve("acme/huge")
    msg = str(err.value)
    assert "not enough disk space" in msg and "HF_HUB_CACHE" in msg and str(tmp_path / "hf-cache") in msg
    assert _fetched(hub) == set()


def test_offline_mode_refuses_an_uncached_model_without_a_request(hub, model_files, monkeypatch):
    hub.add("acme/tiny", model_files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        resolve("acme/tiny")
    assert "offline mode is on" in str(err.value) and "hf download acme/tiny" in str(err.value)
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    resolve("acme/tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("acme/tiny").kind == "hub"  # cached: offline is fine


def test_a_gguf_repository_gives_the_asked_quantization_only(hub):
    hub.add("acme/tiny-GGUF", {"tiny-Q8_0.gguf": b"GGUF q8", "tiny-f16.gguf": b"GGUF f16", "README.md": b"#"})
    with pytest.raises(UserError) as err:
        resolve("acme/tiny-GGUF")
    assert "tiny-Q8_0.gguf, tiny-f16.gguf" in str(err.value) and "model.gguf_file=Q4_K_M" in str(err.value)
    src = resolve("acme/tiny-GGUF", gguf_file="q8_0")
    assert src.kind == "gguf" and src.path.name == "tiny-Q8_0.gguf" and src.path.read_bytes() == b"GGUF q8"
    assert _fetched(hub) == {"tiny-Q8_0.gguf"}
    hub.requests.clear()
    assert resolve("acme/tiny-GGUF", gguf_file="Q8_0") == src and hub.requests == []


def test_weights_only_as_pickles_are_refused(hub, model_files):
    files = {k: v for k, v in model_files.items() if not k.endswith(".safetensors")}
    hub.add("acme/pickled", files)
    with pytest.raises(UserError, match="safetensors only"):
        resolve("acme/pickled")
    assert _fetched(hub) == set()


@pytest.mark.subprocess
def test_the_cli_downloads_on_first_use_and_offline_refuses(hub, model_files, tmp_path):
    hub.add("acme/tiny", model_files)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    cmd = [sys.executable, "-m", "tunesmith.cli", "generate", "--prompt", "Hi", "--max-new-tokens", "3"]
    offline = subprocess.run([*cmd, "acme/tiny", "--offline"], env=env, capture_output=True, text=True, timeout=120)
    assert offline.returncode == 2 and "offline mode is on" in offline.stderr
    online = subprocess.run([*cmd, "acme/tiny"], env=env, capture_output=True, text=True, timeout=120)
    assert online.returncode == 0, online.stderr[-2000:]
    assert "tunesmith: downloading acme/tiny (main)" in online.stdout
    assert "model.safetensors" in _fetched(hub)
