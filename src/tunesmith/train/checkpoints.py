"""Checkpoints of a training run: atomic saves, exact restores, and the checks before a resume.

    RUN/checkpoints/step-NNNNNN/  model.safetensors (trainable weights only), optimizer.pt, rng-<rank>.pt,
                                  state.json (step, tokens, ...), best.safetensors (early stopping), COMPLETE

A save goes to a temp dir, is fsynced, renamed into place, then marked COMPLETE: a kill at any
moment leaves the earlier checkpoints usable and never a half-written one that looks finished.
COMPLETE is a manifest: the size and SHA-256 of every file, checked before a resume, so a file
damaged after the save (a bad disk, a truncating copy) sends the resume to the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import torch

from tunesmith import UserError, rundir
from tunesmith.config import Config, load_config
from tunesmith.fsutil import check_space, disk_full_error, is_disk_full

# The loop must match what the checkpoint was made with; these settings decide what a step is.
RESUME_KEYS = (
    "model.name",
    "model.revision",
    "train.method",
    "train.batch_size",
    "train.grad_accum",
    "train.seed",
    "data.max_len",
    "data.too_long",
    "train.train_on_prompt",
    "train.objective",
    "train.init_from",
    "train.beta",
    "train.dpo_loss",
    "train.label_smoothing",
)


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint that finished saving (it carries COMPLETE); half-written ones never count."""
    root = Path(run) / rundir.CHECKPOINTS
    done = sorted(d for d in root.glob("step-*") if (d / rundir.COMPLETE).exists()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(run: Path, state: dict, loss_model, optimizer, best, accelerator, keep_last: int) -> Path:
    """Atomic: everything goes to a temp dir, is fsynced, renamed into place, then marked COMPLETE.

    A kill at any point leaves either the previous checkpoints untouched or a new complete one.
    Nothing non-finite is ever written. A full disk is a UserError naming the path and the space
    needed, raised before anything is written where the free space already says so.
    """
    root = run / rundir.CHECKPOINTS
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-step-{state['step']:06d}"
    weights = trainable_state(loss_model)
    need = _checkpoint_bytes(weights, optimizer, best) if accelerator.is_main_process else 0
    if accelerator.is_main_process:
        bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
        bad += [
            f"optimizer state {k}"
            for k, s in optimizer.state_dict()["state"].items()
            for v in s.values()
            if torch.is_tensor(v) and not torch.isfinite(v).all()
        ]
        if bad:
            raise RuntimeError(f"refusing to save a checkpoint with non-finite values: {bad[:5]}")
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        check_space(root, need, f"checkpoint step {state['step']}", _resume_hint(run))
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        _save_rng(tmp / f"rng-{accelerator.process_index}.pt")  # each process has its own dropout stream
        if accelerator.is_main_process:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if best is not None:
                save_file({k: v.contiguous() for k, v in best.items()}, tmp / "best.safetensors")
            (tmp / "state.json").write_text(json.dumps({**state, "processes": accelerator.num_processes}, indent=2))
    except Exception as exc:
        if not is_disk_full(exc, root):
            raise
        written = sum(f.stat().st_size for f in tmp.iterdir()) if tmp.is_dir() else 0
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the earlier checkpoints are untouched
        raise disk_full_error(root, max(need, written), f"checkpoint step {state['step']}", _resume_hint(run)) from exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {"files": {}}
        for f in sorted(tmp.iterdir()):
            manifest["files"][f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            _fsync(f)
        _fsync(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an unfinished save of this step from an earlier life
        os.replace(tmp, final)
        _fsync(root)
        # COMPLETE appears whole or not at all (a rename), so a kill never leaves a torn manifest.
        (final / f"{rundir.COMPLETE}.tmp").write_text(json.dumps(manifest, indent=1) + "\n")
        _fsync(final / f"{rundir.COMPLETE}.tmp")
        os.replace(final / f"{rundir.COMPLETE}.tmp", final / rundir.COMPLETE)
        _fsync(final)
        complete = sorted(d for d in root.glob("step-*") if (d / rundir.COMPLETE).exists())
        for old in complete[: -max(1, keep_last)]:
            # The marker goes first: a removal cut short by a kill leaves an unfinished directory
            # (cleaned up on resume), never a half-deleted one that still says COMPLETE.
            (old / rundir.COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify_checkpoint(ckpt: Path) -> str | None:
    """What is wrong with a complete checkpoint's files against its manifest, or None when they match.

    Checkpoints written before COMPLETE carried a manifest (it held "ok") cannot be checked and pass.
    """
    try:
        text = (ckpt / rundir.COMPLETE).read_text()
    except OSError as exc:
        return f"COMPLETE unreadable ({exc.strerror})"
    if text.strip() == "ok":
        return None
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        return "COMPLETE is not a valid manifest"
    for name, want in files.items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return f"{name} is {size} bytes, {want['bytes']} when saved (truncated or overwritten)"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its SHA-256 from the save (the file was damaged since)"
    return None


def resume_checkpoint(run: Path, say=print) -> Path | None:
    """The newest complete checkpoint whose files match their manifest. A damaged one is moved aside
    to corrupt-step-N (kept for inspection, never pruned or picked again) and the one before is tried,
    saying so."""
    root = Path(run) / rundir.CHECKPOINTS
    while (ckpt := latest_checkpoint(run)) is not None:
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        aside = root / f"corrupt-{ckpt.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(ckpt, aside)
        earlier = latest_checkpoint(run)
        say(
            f"checkpoint {ckpt.name} is damaged ({problem}); moved to {aside.name}. "
            + (
                f"Resuming from the previous complete checkpoint, {earlier.name}."
                if earlier
                else "No earlier complete checkpoint is left."
            )
        )
    return None


def load_checkpoint(ckpt: Path, loss_model, optimizer, rank: int) -> tuple[dict, dict | None]:
    """Restore weights, optimizer, RNG; return the loop state (step, tokens, ...) and the best weights."""
    from safetensors.torch import load_file

    weights = load_file(ckpt / "model.safetensors")
    missing = set(trainable_state(loss_model)) - set(weights)
    if missing:
        raise UserError(
            f"{ckpt}: checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); "
            f"it was made with other settings."
        )
    loss_model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(_tensors_only(ckpt / "optimizer.pt"))
    rng = ckpt / f"rng-{rank}.pt"
    if rng.exists():
        _load_rng(rng)
    best = load_file(ckpt / "best.safetensors") if (ckpt / "best.safetensors").exists() else None
    return json.loads((ckpt / "state.json").read_text()), best


def check_resumable(run: Path, cfg: Config, data_info: dict) -> None:
    """Refuse to resume when what defines a step changed: list every difference."""
    old_cfg = load_config(run / rundir.CONFIG)
    old_data = json.loads((run / rundir.DATA).read_text())
    changes = []
    for key in RESUME_KEYS + tuple(f"lora.{k}" for k in ("r", "alpha", "dropout", "target_modules")):
        if key.startswith("lora.") and cfg.train.method == "full":
            continue
        section, name = key.split(".")
        before, now = getattr(getattr(old_cfg, section), name), getattr(getattr(cfg, section), name)
        if before != now:
            changes.append(f"{key}: {before!r} -> {now!r}")
    for part in ("train", "heldout"):
        if old_data[part]["hash"] != data_info[part]["hash"]:
            changes.append(
                f"{part} data: {old_data[part]['examples']} examples (hash {old_data[part]['hash']}) -> "
                f"{data_info[part]['examples']} (hash {data_info[part]['hash']})"
            )
    if old_data.get("replay") != data_info.get("replay"):  # train.replay, or the base model's cached replies
        changes.append(f"replay: {old_data.get('replay')} -> {data_info.get('replay')}")
    if old_data.get("processes") != data_info["processes"]:
        changes.append(
            f"processes: {old_data.get('processes')} -> {data_info['processes']} "
            f"(global batch {old_data.get('global_batch')} -> {data_info['global_batch']})"
        )
    if changes:
        raise UserError(
            f"{run}: cannot resume, the run was started with different settings:\n  "
            + "\n  ".join(changes)
            + "\nfix: restore them, or start a new run in another train.output_dir."
        )


def _checkpoint_bytes(weights: dict, optimizer, best) -> int:
    """Bytes a checkpoint takes: its tensors, plus room for the RNG states, JSON and file headers."""
    tensors = [*weights.values(), *(best or {}).values()]
    tensors += [v for s in optimizer.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) + 256 * 1024


def _resume_hint(run: Path) -> str:
    last = latest_checkpoint(run)
    return (
        f"The previous checkpoint, {last.name}, is intact: after freeing space, continue with "
        f"`tunesmith train CONFIG --resume`."
        if last
        else "No checkpoint of this run was saved yet."
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def trainable_state(loss_model, clone: bool = False) -> dict:
    return {
        k: (v.detach().to("cpu", copy=True) if clone else v.detach())
        for k, v in loss_model.named_parameters()
        if v.requires_grad
    }


def _save_rng(path: Path) -> None:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, path)


def _tensors_only(path: Path):
    """torch.load that unpickles tensors and plain containers only: a file carrying other objects
    (code that would run on load) is refused before any of it runs."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: refused to load: it holds Python objects other than tensors (unpickling them "
            f"could run code); this file was not written by tunesmith. fix: resume from a checkpoint "
            f"you trust, or start the run again."
        ) from exc


def _load_rng(path: Path) -> None:
    state = _tensors_only(path)
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_unfinished(root: Path) -> None:
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".tmp-") or (d.name.startswith("step-") and not (d / rundir.COMPLETE).exists()):
                shutil.rmtree(d, ignore_errors=True)


def truncate_jsonl(path: Path, step: int) -> dict:
    """Forget what was logged after the checkpoint (those steps are about to run again); return
    the last record kept."""
    if not path.exists():
        return {}
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short by a kill
            pass
    path.write_text("".join(k + "\n" for k in keep))
    return json.loads(keep[-1]) if keep else {}
