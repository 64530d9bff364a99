"""Damaged checkpoints and full disks: a truncated or bit-flipped file in the newest checkpoint is
caught by its manifest and the resume falls back to the one before, saying so; a disk that fills up
while saving a checkpoint, the final model, an export or an import is a UserError naming the path
and the space needed, leaves the previous state intact and never a partial file taken as complete.

The full disk is a 16 MB tmpfs mounted by the test (root only; skipped with the reason otherwise).
"""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from reliability_kit import make_chats, train_overrides
from safetensors.torch import load_file

from tunesmith import UserError
from tunesmith.config import load_config
from tunesmith.train import train
from tunesmith.train.checkpoints import latest_checkpoint, resume_checkpoint, verify_checkpoint

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_chats(tmp_path_factory.mktemp("faults") / "train.jsonl", n=30)


def overrides(model_dir, data, out, steps=STEPS, *extra):
    return [
        *train_overrides(model_dir, data, steps, "train.save_every=2", "train.keep_last=3", *extra),
        f"train.output_dir={out}",
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, data):
    return train(load_config(None, overrides(tiny_model_dir, data, tmp_path_factory.mktemp("ref") / "run")))


def _weights(run):
    return load_file(run / "final" / "adapter_model.safetensors")


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ------------------------------------------------------------------------ damaged checkpoints


def _truncate(f):
    os.truncate(f, f.stat().st_size // 2)


def _flip_a_bit(f):
    blob = bytearray(f.read_bytes())
    blob[len(blob) * 2 // 3] ^= 0x10  # inside the tensor data, past any header
    f.write_bytes(bytes(blob))


def _delete(f):
    f.unlink()


DAMAGE = {
    "truncated weights": ("model.safetensors", _truncate),
    "bit-flipped optimizer": ("optimizer.pt", _flip_a_bit),
    "bit-flipped rng": ("rng-0.pt", _flip_a_bit),
    "missing weights": ("model.safetensors", _delete),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_caught_and_resume_falls_back(
    tmp_path, tiny_model_dir, data, reference, damage, capsys
):
    run = Path(shutil.copytree(reference, tmp_path / "run", symlinks=True))  # a finished run, copied whole
    newest = latest_checkpoint(run)
    assert newest.name == "step-000006" and verify_checkpoint(newest) is None
    manifest = json.loads((newest / "COMPLETE").read_text())["files"]
    assert {"model.safetensors", "optimizer.pt", "rng-0.pt", "state.json"} <= manifest.keys()
    name, spoil = DAMAGE[damage]
    spoil(newest / name)
    assert name in verify_checkpoint(newest)
    capsys.readouterr()

    train(load_config(None, overrides(tiny_model_dir, data, run)), resume=True)
    said = capsys.readouterr().out
    assert f"checkpoint step-000006 is damaged ({name}" in said
    assert "Resuming from the previous complete checkpoint, step-000004" in said and "resumed from" in said
    assert (run / "checkpoints" / "corrupt-step-000006").is_dir()  # kept for inspection, never picked again
    assert latest_checkpoint(run).name == "step-000006" and verify_checkpoint(latest_checkpoint(run)) is None
    assert _max_diff(_weights(run), _weights(reference)) <= 1e-6  # steps 5 and 6 redone exactly


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path, tiny_model_dir, data, capsys):
    run = train(load_config(None, overrides(tiny_model_dir, data, tmp_path / "run", 4)))
    for ckpt in (run / "checkpoints").glob("step-*"):
        _truncate(ckpt / "model.safetensors")
    with pytest.raises(UserError, match="no complete checkpoint to resume from"):
        train(load_config(None, overrides(tiny_model_dir, data, run, 4)), resume=True)
    assert "No earlier complete checkpoint is left" in capsys.readouterr().out


def test_a_torn_manifest_is_not_complete(tmp_path, tiny_model_dir, data):
    run = train(load_config(None, overrides(tiny_model_dir, data, tmp_path / "run", 4)))
    newest = latest_checkpoint(run)
    (newest / "COMPLETE").write_text('{"files": {"model.safe')
    assert "not a valid manifest" in verify_checkpoint(newest)
    assert resume_checkpoint(run, say=lambda _: None).name == "step-000002"


# ------------------------------------------------------------------------------- full disks


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs, unmounted whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs")
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", str(where)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk, leave: int):
    """Fill the filesystem until `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    assert shutil.disk_usage(disk).free <= leave + 4096


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(small_disk, tiny_model_dir, data, reference, monkeypatch):
    run = small_disk / "run"
    train(load_config(None, overrides(tiny_model_dir, data, run)))
    shutil.rmtree(run / "checkpoints" / "step-000006")  # as if it had got as far as step 4
    shutil.rmtree(run / "final")
    fill(small_disk, leave=64 * 1024)
    with pytest.raises(UserError) as err:  # the check before writing
        train(load_config(None, overrides(tiny_model_dir, data, run)), resume=True)
    msg = str(err.value)
    assert str(run / "checkpoints") in msg and "checkpoint step 6" in msg and "needs about" in msg and "free" in msg
    assert "step-000004, is intact" in msg
    assert latest_checkpoint(run).name == "step-000004" and verify_checkpoint(latest_checkpoint(run)) is None
    assert not [d for d in (run / "checkpoints").iterdir() if d.name.startswith(".tmp")]

    # The disk fills during the write itself (the estimate was low, or another process took the space):
    # safetensors / torch fail mid-file; the same error, nothing partial kept.
    monkeypatch.setattr("tunesmith.train.checkpoints.check_space", lambda *a, **k: None)
    fill(small_disk, leave=40 * 1024)
    with pytest.raises(UserError, match="not enough disk space for checkpoint step 6"):
        train(load_config(None, overrides(tiny_model_dir, data, run)), resume=True)
    assert latest_checkpoint(run).name == "step-000004" and verify_checkpoint(latest_checkpoint(run)) is None
    assert sorted(d.name for d in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    monkeypatch.undo()

    (small_disk / "filler").unlink()  # space again: the run continues exactly
    train(load_config(None, overrides(tiny_model_dir, data, run)), resume=True)
    assert _max_diff(_weights(run), _weights(reference)) <= 1e-6


def test_disk_full_at_the_final_model_keeps_no_partial_final(small_disk, tiny_model_dir, data, monkeypatch):
    run = small_disk / "run"
    extra = ("train.save_every=0",)  # the end-of-run checkpoint is small; final/ carries the tokenizer too
    fill(small_disk, leave=2_000_000)
    with pytest.raises(UserError) as err:
        train(load_config(None, overrides(tiny_model_dir, data, run, 2, *extra)))
    assert str(small_disk / "run") in str(err.value) and "the final model" in str(err.value)
    assert not (run / "final").exists() and not [p for p in run.iterdir() if p.name.startswith(".final")]
    assert latest_checkpoint(run).name == "step-000002"  # the last step is saved: resume finishes the job

    monkeypatch.setattr("tunesmith.fsutil.check_space", lambda *a, **k: None)
    with pytest.raises(UserError, match="not enough disk space for the final model"):
        train(load_config(None, overrides(tiny_model_dir, data, run, 2, *extra)), resume=True)
    assert not (run / "final").exists() and not [p for p in run.iterdir() if p.name.startswith(".final")]


def test_disk_full_during_export_leaves_no_export(small_disk, tiny_model_dir, tokenizer, monkeypatch):
    from tunesmith.export import export
    from tunesmith.testing import make_tiny_lora_run

    run = make_tiny_lora_run(small_disk / "run", tiny_model_dir, tokenizer)
    fill(small_disk, leave=200_000)
    out = small_disk / "exported"
    with pytest.raises(UserError) as err:
        export(run, "merged", out=out)
    assert (
        str(small_disk) in str(err.value) and "the merged export" in str(err.value) and "needs about" in str(err.value)
    )
    monkeypatch.setattr("tunesmith.fsutil.check_space", lambda *a, **k: None)
    with pytest.raises(UserError, match="not enough disk space for the merged export"):
        export(run, "merged", out=out)
    assert not out.exists() and not [p for p in small_disk.iterdir() if p.name.startswith(".exported")]


def test_disk_full_during_import_keeps_the_previous_import(small_disk, monkeypatch):
    from tunesmith.data.repository import import_repository

    pantry = __import__("tunesmith").__path__[0] + "/examples/pantry"
    out = small_disk / "data"
    import_repository([pantry], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fill(small_disk, leave=20_000)
    with pytest.raises(UserError) as err:
        import_repository([pantry], out, heldout_fraction=0.3)
    assert str(out) in str(err.value) and "the imported dataset" in str(err.value)
    monkeypatch.setattr("tunesmith.data.repository.check_space", lambda *a, **k: None)
    with pytest.raises(UserError, match="not enough disk space for the imported dataset"):
        import_repository([pantry], out, heldout_fraction=0.3)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # every file of the earlier import, whole; no staging left behind


def test_a_run_stopped_before_its_first_save_can_be_resumed(tmp_path, tiny_model_dir, data, reference, capsys):
    """It was a dead end: --resume said 'no checkpoint, run without --resume', and without it 'already
    holds a run, add --resume'."""
    run = train(load_config(None, overrides(tiny_model_dir, data, tmp_path / "run")))
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints" / ".tmp-step-000002").mkdir(parents=True)  # a first save cut short
    with pytest.raises(UserError, match="already holds a run"):
        train(load_config(None, overrides(tiny_model_dir, data, run)))
    capsys.readouterr()
    train(load_config(None, overrides(tiny_model_dir, data, run)), resume=True)
    assert "starting again from step 0" in capsys.readouterr().out
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # the old lines went with the old attempt
    assert _max_diff(_weights(run), _weights(reference)) <= 1e-6
