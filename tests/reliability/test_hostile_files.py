"""Hostile files: pickles that would run code, chat templates that try to leave Jinja's sandbox,
and paths that point out of where they belong. Each payload would create a marker file; the test
asserts the load is refused (or rendered harmlessly) and the marker never appears.
"""

import json
import os
import pickle
import shutil

import pytest
import torch
from reliability_kit import make_chats, train_overrides

from tunesmith import UserError
from tunesmith.config import load_config


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a payload ran"


def _copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------- pickles


def test_a_pickled_model_is_refused(tmp_path, tiny_model_dir, marker):
    from safetensors.torch import load_file

    from tunesmith.models import load

    model = _copy_model(tiny_model_dir, tmp_path / "model")
    state = {}
    for f in model.glob("*.safetensors"):
        state.update(load_file(f))
        f.unlink()
    state["lm_head.bias"] = Payload(marker)  # weights as usual, and one object more
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump(state, f)
    with pytest.raises(UserError, match=r"refused to load pytorch_model\.bin.*safetensors"):
        load(str(model), device="cpu")


def test_a_pickled_adapter_is_refused(tmp_path, tiny_model_dir, tokenizer, marker):
    from tunesmith.models import load
    from tunesmith.testing import make_tiny_lora_run

    final = make_tiny_lora_run(tmp_path / "run", tiny_model_dir, tokenizer) / "final"
    (final / "adapter_model.safetensors").unlink()
    torch.save({"evil": Payload(marker)}, final / "adapter_model.bin")
    with pytest.raises(UserError, match="refused to load"):
        load(str(tmp_path / "run"), device="cpu")


@pytest.mark.parametrize("name", ["optimizer.pt", "rng-0.pt"])
def test_a_pickled_checkpoint_file_is_refused_on_resume(tmp_path, tiny_model_dir, marker, name):
    """Even with the manifest rewritten to match (an attacker can do that too)."""
    from tunesmith.train import train
    from tunesmith.train.checkpoints import _sha256, latest_checkpoint

    data = make_chats(tmp_path / "train.jsonl", n=20)
    overrides = [*train_overrides(tiny_model_dir, data, 2), f"train.output_dir={tmp_path / 'run'}"]
    run = train(load_config(None, overrides))
    ckpt = latest_checkpoint(run)
    torch.save({"state": {}, "param_groups": [], "evil": Payload(marker)}, ckpt / name)
    manifest = json.loads((ckpt / "COMPLETE").read_text())
    manifest["files"][name] = {"bytes": (ckpt / name).stat().st_size, "sha256": _sha256(ckpt / name)}
    (ckpt / "COMPLETE").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"{name}: refused to load"):
        train(load_config(None, overrides), resume=True)


# ------------------------------------------------------------------------------------ templates

ESCAPES = {
    "cycler globals": "{{ cycler.__init__.__globals__.os.system('touch MARK') }}",
    "joiner globals": "{{ joiner.__init__.__globals__.os.popen('touch MARK').read() }}",
    "namespace globals": "{{ namespace.__init__.__globals__.os.system('touch MARK') }}",
    "subclass walk": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
    "{{ c(['touch', 'MARK']) }}{% endif %}{% endfor %}",
    "self builtins": "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARK') }}",
    "attr filter": "{{ (messages|attr('__class__')|attr('__mro__'))[1] }}{{ lipsum|attr('__globals__') }}",
    "format string": "{{ '{0.__class__.__mro__[1].__subclasses__}'.format(messages) }}",
    "raise_exception globals": "{{ raise_exception.__globals__['os'].system('touch MARK') }}",
    "mutate messages": "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}{{ messages }}",
}


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_template_cannot_escape_the_sandbox(tmp_path, tiny_model_dir, marker, escape):
    from tunesmith.models import load_tokenizer, render

    model = _copy_model(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ESCAPES[escape].replace("MARK", str(marker))
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)  # newer transformers keep it in its own file
    tok = load_tokenizer(str(model))
    assert (
        "MARK" not in tok.chat_template
        and str(marker) in tok.chat_template
        or escape in ("attr filter", "format string", "mutate messages")
    )
    messages = [{"role": "user", "content": "hi"}]
    try:
        text = render(tok, messages)
    except UserError as exc:  # refused by the sandbox, said plainly (or blocked attributes came back undefined)
        assert ("unsafe" in str(exc) and "sandbox" in str(exc)) or "Undefined object" in str(exc)
    else:  # rendered harmlessly: nothing reached Python's internals
        assert "Popen" not in text and "<module" not in text
    assert messages == [{"role": "user", "content": "hi"}]  # the caller's data is not changed either


def test_a_hostile_template_is_a_400_from_the_server(tmp_path, tiny_model_dir, marker):
    from fastapi.testclient import TestClient

    from tunesmith.models import load
    from tunesmith.serve import create_app

    model_dir = _copy_model(tiny_model_dir, tmp_path / "model")
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = ESCAPES["cycler globals"].replace("MARK", str(marker))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    with TestClient(
        create_app(load(str(model_dir), device="cpu"), model_name="m"), base_url="http://127.0.0.1"
    ) as http:
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 400 and "unsafe" in r.json()["error"]["message"]


# --------------------------------------------------------------------------------------- paths


def test_a_run_dir_that_is_not_a_run_is_refused(tmp_path, tiny_model_dir):
    from tunesmith.train import train

    data = make_chats(tmp_path / "train.jsonl", n=20)
    mine = (tmp_path / "config.yaml").write_text("my own config\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for out in (tmp_path, tmp_path / "sub" / ".."):  # the data folder itself, also reached through '..'
        with pytest.raises(UserError, match="holds files that are not a tunesmith run.*config.yaml"):
            train(load_config(None, [*train_overrides(tiny_model_dir, data, 1), f"train.output_dir={out}"]))
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == before
        and mine
        and (tmp_path / "config.yaml").read_text() == "my own config\n"
    )
    with pytest.raises(UserError, match="is a file"):
        train(load_config(None, [*train_overrides(tiny_model_dir, data, 1), f"train.output_dir={data}"]))


def test_export_targets_never_replace_what_is_not_an_export(tmp_path, tiny_model_dir, tokenizer):
    from tunesmith.export import export
    from tunesmith.testing import make_tiny_lora_run

    run = make_tiny_lora_run(tmp_path / "run", tiny_model_dir, tokenizer)
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    link = tmp_path / "link-to-home"
    link.symlink_to(home)
    for target in (home, link, tmp_path / "run" / ".." / "home"):
        with pytest.raises(UserError, match="is not a tunesmith export"):
            export(run, "adapter", out=target)
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"] and link.is_symlink()

    # A link to an earlier export: the export is replaced where it lies, and the link still points at it.
    real = export(run, "adapter", out=tmp_path / "exports" / "v1")
    latest = tmp_path / "latest"
    latest.symlink_to(real)
    out = export(run, "adapter", out=latest)
    assert out == real.resolve() and latest.is_symlink() and (real / "export.json").exists()


def test_an_adapter_file_linking_outside_is_not_exported(tmp_path, tiny_model_dir, tokenizer):
    from tunesmith.export import export
    from tunesmith.testing import make_tiny_lora_run

    run = make_tiny_lora_run(tmp_path / "run", tiny_model_dir, tokenizer)
    secret = tmp_path / "secret.txt"
    secret.write_text("api key")
    (run / "final" / "README.md").unlink(missing_ok=True)
    (run / "final" / "README.md").symlink_to(secret)
    with pytest.raises(UserError, match="symbolic link.*outside the adapter directory"):
        export(run, "adapter", out=tmp_path / "shared")
    assert not (tmp_path / "shared").exists()


def test_document_ids_cannot_write_outside_the_import(tmp_path):
    from tunesmith.data.repository import import_repository

    pantry = __import__("tunesmith").__path__[0] + "/examples/pantry"
    repo = tmp_path / "repo"
    shutil.copytree(pantry, repo)
    insight = next(repo.rglob("*.md"), None)
    victims = []
    for f in sorted(repo.rglob("*.md")):
        text = f.read_text()
        if "\ntype: insight" in text and "\nid: " in text:
            old = text.split("\nid: ", 1)[1].split("\n", 1)[0]
            new = "../../escaped" if not victims else "/tmp/absolute-escape"
            f.write_text(text.replace(f"\nid: {old}", f"\nid: '{new}'"))
            victims.append(old)
            if len(victims) == 2:
                break
    assert insight and len(victims) == 2
    for ref in repo.rglob("*.md"):  # recommendations cite insights by id: keep the references valid
        ref.write_text(ref.read_text().replace(victims[0], "../../escaped").replace(victims[1], "/tmp/absolute-escape"))
    out = tmp_path / "deep" / "out"
    import_repository([repo], out, heldout_fraction=0)
    assert not (tmp_path / "escaped.md").exists() and not (tmp_path / "deep" / "escaped.md").exists()
    assert not os.path.exists("/tmp/absolute-escape.md")
    names = sorted(p.name for p in (out / "corpus").iterdir())
    assert "escaped.md" in names and "tmp-absolute-escape.md" in names
    assert all(p.resolve().parent == (out / "corpus").resolve() for p in (out / "corpus").iterdir())


@pytest.mark.parametrize("spec", ["../../etc", "/etc/passwd", "a/..", "../" * 8 + "etc/shadow", "org/..%2f..", "~root"])
def test_odd_model_names_are_user_errors(spec):
    from tunesmith.models import resolve

    with pytest.raises(UserError):
        resolve(spec)


def test_served_model_names_are_compared_never_opened(tiny_model_dir):
    from fastapi.testclient import TestClient

    from tunesmith.models import load
    from tunesmith.serve import create_app

    with TestClient(
        create_app(load(str(tiny_model_dir), device="cpu"), model_name="tiny"), base_url="http://127.0.0.1"
    ) as http:
        for name in ("../../etc/passwd", "/etc/passwd", str(tiny_model_dir), "tiny/../tiny"):
            r = http.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = http.get("/v1/models/..%2F..%2Fetc%2Fpasswd")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
