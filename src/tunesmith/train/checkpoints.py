"""Checkpoints of a training run: atomic saves, exact restores, and the checks before a resume.

    RUN/checkpoints/step-NNNNNN/  model.safetensors (trainable weights only), optimizer.pt, rng-<rank>.pt,
                                  state.json (step, tokens, ...), best.safetensors (early stopping), COMPLETE

A save goes to a temp dir, is fsynced, renamed into place, then marked COMPLETE: a kill at any
moment leaves the earlier checkpoints usable and never a half-written one that looks finished.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from tunesmith import UserError
from tunesmith.config import Config, load_config

# The loop must match what the checkpoint was made with; these settings decide what a step is.
RESUME_KEYS = ("model.name", "train.method", "train.batch_size", "train.grad_accum", "train.seed",
               "data.max_len", "data.too_long", "train.train_on_prompt")


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint that finished saving (it carries COMPLETE); half-written ones never count."""
    root = Path(run) / "checkpoints"
    done = sorted(d for d in root.glob("step-*") if (d / "COMPLETE").exists()) if root.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(run: Path, state: dict, loss_model, optimizer, best, accelerator, keep_last: int) -> Path:
    """Atomic: everything goes to a temp dir, is fsynced, renamed into place, then marked COMPLETE.

    A kill at any point leaves either the previous checkpoints untouched or a new complete one.
    Nothing non-finite is ever written.
    """
    root = run / "checkpoints"
    final = root / f"step-{state['step']:06d}"
    tmp = root / f".tmp-step-{state['step']:06d}"
    weights = trainable_state(loss_model)
    if accelerator.is_main_process:
        bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
        bad += [f"optimizer state {k}" for k, s in optimizer.state_dict()["state"].items()
                for v in s.values() if torch.is_tensor(v) and not torch.isfinite(v).all()]
        if bad:
            raise RuntimeError(f"refusing to save a checkpoint with non-finite values: {bad[:5]}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _save_rng(tmp / f"rng-{accelerator.process_index}.pt")  # each process has its own dropout stream
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if best is not None:
            save_file({k: v.contiguous() for k, v in best.items()}, tmp / "best.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "processes": accelerator.num_processes}, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an unfinished save of this step from an earlier life
        os.replace(tmp, final)
        _fsync(root)
        (final / "COMPLETE").write_text("ok\n")
        _fsync(final / "COMPLETE")
        _fsync(final)
        complete = sorted(d for d in root.glob("step-*") if (d / "COMPLETE").exists())
        for old in complete[:-max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(ckpt: Path, loss_model, optimizer, rank: int) -> tuple[dict, dict | None]:
    """Restore weights, optimizer, RNG; return the loop state (step, tokens, ...) and the best weights."""
    from safetensors.torch import load_file

    weights = load_file(ckpt / "model.safetensors")
    missing = set(trainable_state(loss_model)) - set(weights)
    if missing:
        raise UserError(f"{ckpt}: checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}); "
                        f"it was made with other settings.")
    loss_model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    rng = ckpt / f"rng-{rank}.pt"
    if rng.exists():
        _load_rng(rng)
    best = load_file(ckpt / "best.safetensors") if (ckpt / "best.safetensors").exists() else None
    return json.loads((ckpt / "state.json").read_text()), best


def check_resumable(run: Path, cfg: Config, data_info: dict) -> None:
    """Refuse to resume when what defines a step changed: list every difference."""
    old_cfg = load_config(run / "config.yaml")
    old_data = json.loads((run / "data.json").read_text())
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
            changes.append(f"{part} data: {old_data[part]['examples']} examples (hash {old_data[part]['hash']}) -> "
                           f"{data_info[part]['examples']} (hash {data_info[part]['hash']})")
    if old_data.get("processes") != data_info["processes"]:
        changes.append(f"processes: {old_data.get('processes')} -> {data_info['processes']} "
                       f"(global batch {old_data.get('global_batch')} -> {data_info['global_batch']})")
    if changes:
        raise UserError(f"{run}: cannot resume, the run was started with different settings:\n  "
                        + "\n  ".join(changes) + "\nfix: restore them, or start a new run in another train.output_dir.")


def trainable_state(loss_model, clone: bool = False) -> dict:
    return {k: (v.detach().to("cpu", copy=True) if clone else v.detach())
            for k, v in loss_model.named_parameters() if v.requires_grad}


def _save_rng(path: Path) -> None:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, path)


def _load_rng(path: Path) -> None:
    state = torch.load(path, weights_only=True)
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
            if d.name.startswith(".tmp-") or (d.name.startswith("step-") and not (d / "COMPLETE").exists()):
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
