"""The training loop: LoRA, DoRA, QLoRA or full fine-tuning of a causal LM on chat examples.

    tunesmith train config.yaml [section.key=value ...] [--resume]
    accelerate launch --num_processes 2 -m tunesmith.cli train config.yaml      # DDP, FSDP, DeepSpeed
    from tunesmith.train import train; run_dir = train(cfg)

Read it top to bottom: setup (run directory, data, model, optimizer), the loop, the final model.
accelerate owns devices and processes; peft owns adapters; transformers owns the architectures.
What is ours is the data path (tunesmith.data.batches: loss masks, packing; tunesmith.train.loss:
attention that never crosses a packed example, the LM head only where there is loss) and the bookkeeping that makes a run exact and crash-proof.

The run directory:
  config.yaml  the resolved config          data.json     data hashes, split sizes, what was dropped
  metrics.jsonl one line per logged step    checkpoints/  step-NNNNNN/ (COMPLETE marks a finished save)
  final/       the adapter or the model     summary.json  steps, time, tokens/s, losses, device
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from tunesmith import UserError, cpu
from tunesmith.train.checkpoints import (check_resumable, latest_checkpoint, load_checkpoint, remove_unfinished,
                                   save_checkpoint, trainable_state, truncate_jsonl)
from tunesmith.config import Config, load_config, save_config, to_dict
from tunesmith.data.batches import collate, encode_examples, micro_batches, n_targets, step_indices
from tunesmith.data.split import load_split
from tunesmith.fsutil import atomic_dir
from tunesmith.train.loss import CausalLMLoss, logit_transform, use_varlen

METHODS = ("lora", "dora", "qlora", "full")
SCHEDULES = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}
# tracker -> the package accelerate needs for it
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def cli_train(args) -> int:
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():  # `tunesmith train key=value ...`: no file
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    train(cfg, resume=args.resume)
    return 0


def train(cfg: Config, resume: bool = False) -> Path:
    """Train as cfg says and return the run directory (see the module doc for what it holds)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = cfg.train
    _check_options(cfg)
    device = _pick_device(t.device)
    if device == "cpu":
        cpu.use_heap()
        torch.set_num_threads(cpu.threads(t.threads))
    weight_dtype, precision = _precision(cfg, device)
    run = Path(t.output_dir).expanduser().resolve()
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision, log_with=_trackers(t.trackers),
                              project_dir=str(run))
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    say = accelerator.print

    # ------------------------------------------------------------------ run directory and data
    if resume:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise UserError(f"{run}: no complete checkpoint to resume from. fix: run without --resume.")
    elif run.exists() and any((run / name).exists() for name in ("checkpoints", "final", "metrics.jsonl")):
        raise UserError(f"{run} already holds a run. fix: add --resume to continue it, or set "
                        f"train.output_dir to a new directory.")
    accelerator.wait_for_everyone()  # every process has looked before any writes
    train_examples, heldout_examples, data_info = load_split(cfg)
    tok = _tokenizer(cfg)
    encoded, train_report = encode_examples(tok, train_examples, cfg.data.max_len, cfg.data.too_long,
                                            t.train_on_prompt, where=cfg.data.train)
    held, held_report = encode_examples(tok, heldout_examples, cfg.data.max_len, "truncate",
                                        t.train_on_prompt, where=cfg.data.heldout or cfg.data.train)
    if not encoded:
        raise UserError(f"{cfg.data.train}: no example left to train on ({_dropped(train_report)}).")
    global_batch = t.batch_size * t.grad_accum * world
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * len(encoded) / global_batch))
    data_info.update(train_report=train_report, heldout_report=held_report, processes=world,
                     global_batch=global_batch, steps=total_steps)
    if resume:
        check_resumable(run, cfg, data_info)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
        (run / "data.json").write_text(json.dumps(data_info, indent=2) + "\n")
    say(f"tunesmith train: {len(encoded)} examples ({train_report['tokens']:,} tokens, "
        f"{train_report['loss_tokens']:,} with loss; {_dropped(train_report)}), {len(held)} held out; "
        f"{total_steps} steps of {global_batch} examples; {world} process(es) on {device}"
        f"{f' ({torch.get_num_threads()} threads)' if device == 'cpu' else ''}")

    # ------------------------------------------------------------------ model and optimizer
    set_seed(t.seed)
    model = build_model(cfg, weight_dtype, accelerator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    say(f"model {cfg.model.name}: {t.method}, {n_trainable:,} trainable of "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, weights {str(weight_dtype).replace('torch.', '')}"
        f"{', autocast ' + precision if precision != 'no' else ''}")
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay, fused=device == "cuda")
    loss_model, optimizer = accelerator.prepare(CausalLMLoss(model), optimizer)

    state = {"step": 0, "tokens": 0, "train_seconds": 0.0, "skipped": 0, "best_eval": None, "best_step": None,
             "evals_without_improvement": 0}
    best = None  # trainable weights at the best held-out loss, when early stopping is on
    last = {}  # the latest metrics record, for the summary
    if resume:
        state, best = load_checkpoint(ckpt, accelerator.unwrap_model(loss_model), optimizer, rank)
        if main:
            last = truncate_jsonl(run / "metrics.jsonl", state["step"])
            truncate_jsonl(run / "examples.jsonl", state["step"])
            remove_unfinished(run / "checkpoints")
        say(f"resumed from {ckpt} at step {state['step']}")
    accelerator.wait_for_everyone()
    if t.trackers:
        accelerator.init_trackers(run.name, config=_flat(to_dict(cfg)))

    # SIGTERM (a scheduler preempting us, `kill`): finish the step, save, exit.
    stop = {"sigterm": False}
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals only reach that one
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True)) if in_main_thread else None

    def lr_at(step: int) -> float:
        if step < t.warmup_steps:
            return t.lr * (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps)
        return t.lr * SCHEDULES[t.schedule](progress)

    # ------------------------------------------------------------------ the loop
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", disable=not main,
               dynamic_ncols=True)
    metrics_file = open(run / "metrics.jsonl", "a") if main else None
    examples_file = open(run / "examples.jsonl", "a") if main and t.log_examples else None
    loss_model.train()
    others, rechecked = cpu.OthersMeter(), time.time()  # re-decide CPU threads as the machine's load changes
    try:
        while state["step"] < total_steps:
            step = state["step"]
            t0 = time.perf_counter()
            ids = step_indices(len(encoded), global_batch, t.seed, step)
            step_targets = sum(n_targets(encoded[i]) for i in ids)  # every process computes the global count
            step_tokens = sum(len(encoded[i]["ids"]) for i in ids)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)

            # One optimizer step: backward per micro-batch, gradients synced on the last one only.
            # Each micro-batch's loss is its sum of token losses over the global number of loss
            # tokens in the step (x processes, since DDP averages): the step's gradient is that of
            # the mean token loss, however the examples are split into micro-batches or processes.
            loss_sum = torch.zeros((), device=accelerator.device)
            mbs = micro_batches(encoded, ids, rank, world, t.grad_accum)
            for k, mb in enumerate(mbs):
                batch = _to(collate(mb, t.packing, tok.pad_token_id), accelerator.device)
                sync = contextlib.nullcontext() if k == len(mbs) - 1 else accelerator.no_sync(loss_model)
                with sync:
                    mb_loss = loss_model(**batch)
                    accelerator.backward(mb_loss * (world / step_targets))
                loss_sum += mb_loss.detach().float()
            loss = (accelerator.reduce(loss_sum, "sum") / step_targets).item()
            grad_norm = accelerator.clip_grad_norm_(trainable, t.max_grad_norm or float("inf"))
            grad_norm = float(grad_norm) if grad_norm is not None else None  # DeepSpeed clips inside its step

            finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
            if finite:
                optimizer.step()
            elif t.on_nonfinite == "skip":
                state["skipped"] += 1
                say(f"\nstep {step + 1}: non-finite loss or gradient ({loss}, norm {grad_norm}); batch skipped "
                    f"({state['skipped']} so far)")
            else:
                last_good = latest_checkpoint(run)
                raise UserError(
                    f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step + 1} "
                    f"(loss {loss}, grad norm {grad_norm}). Nothing was saved from this step. Last good checkpoint: "
                    f"{last_good or 'none'}. fix: lower train.lr, check the data of this step "
                    f"(train.log_examples=true lists it), or set train.on_nonfinite=skip; then "
                    f"`tunesmith train CONFIG --resume`.")
            optimizer.zero_grad(set_to_none=True)

            dt = time.perf_counter() - t0
            state.update(step=step + 1, tokens=state["tokens"] + step_tokens,
                         train_seconds=state["train_seconds"] + dt)
            record = {"step": step + 1, "loss": loss if finite else None, "lr": lr_at(step),
                      "grad_norm": grad_norm if finite else None, "tokens_per_s": round(step_tokens / dt, 1),
                      "tokens": state["tokens"]}
            if not finite:
                record["skipped"] = True

            # held-out loss, early stopping
            done = state["step"] == total_steps
            if held and ((t.eval_every and state["step"] % t.eval_every == 0) or done):
                ev = _heldout(loss_model, held, t.batch_size, t.packing, tok.pad_token_id, accelerator)
                record.update(eval_loss=ev["loss"], eval_ppl=ev["ppl"])
                if state["best_eval"] is None or ev["loss"] < state["best_eval"]:
                    state.update(best_eval=ev["loss"], best_step=state["step"], evals_without_improvement=0)
                    if t.early_stopping_patience:
                        best = trainable_state(accelerator.unwrap_model(loss_model), clone=True)
                else:
                    state["evals_without_improvement"] += 1
                loss_model.train()
            early = bool(t.early_stopping_patience) and state["evals_without_improvement"] >= t.early_stopping_patience

            if main:
                if state["step"] % t.log_every == 0 or done or "eval_loss" in record:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if examples_file:
                    examples_file.write(json.dumps({"step": state["step"], "examples": [
                        (train_examples[encoded[i]["index"]].get("meta") or {}).get("id") or encoded[i]["index"]
                        for i in ids]}) + "\n")
                    examples_file.flush()
                if t.trackers:
                    accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state["step"])
            last = record
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{state['tokens'] / state['train_seconds']:.0f}",
                            **({"eval": f"{record['eval_loss']:.4f}"} if "eval_loss" in record else {}))

            if device == "cpu":
                cpu.trim()  # the step's activations are gone: give their pages back
                if not t.threads and time.time() - rechecked > 30:
                    torch.set_num_threads(cpu.threads(others=others.read()))
                    rechecked = time.time()

            sigterm = stop["sigterm"]
            if world > 1:  # every process must agree, or one would wait forever in the next collective
                sigterm = accelerator.reduce(torch.tensor(float(sigterm), device=accelerator.device), "sum").item() > 0
            if (t.save_every > 0 and state["step"] % t.save_every == 0) or sigterm or (t.save_every >= 0 and (early or done)):
                save_checkpoint(run, state, accelerator.unwrap_model(loss_model), optimizer, best, accelerator, t.keep_last)
            if sigterm:
                bar.close()
                say(f"\nSIGTERM: saved step {state['step']} to {latest_checkpoint(run)}; exiting. "
                    f"Continue with: tunesmith train CONFIG --resume")
                raise SystemExit(143)
            if early:
                say(f"\nearly stopping at step {state['step']}: held-out loss has not improved for "
                    f"{t.early_stopping_patience} evaluations (best {state['best_eval']:.4f} at step {state['best_step']})")
                break
    finally:
        bar.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        for f in (metrics_file, examples_file):
            if f:
                f.close()

    # ------------------------------------------------------------------ the final model
    inner = accelerator.unwrap_model(loss_model)
    if best is not None:
        inner.load_state_dict(best, strict=False)  # early stopping keeps the best held-out weights
    accelerator.wait_for_everyone()
    if main:
        save_final(run / "final", inner.model, tok, cfg)
        summary = {
            "steps": state["step"], "train_seconds": round(state["train_seconds"], 2), "tokens": state["tokens"],
            "train_tokens_per_s": round(state["tokens"] / max(state["train_seconds"], 1e-9), 1),
            "final_train_loss": last.get("loss"), "final_eval_loss": last.get("eval_loss"),
            "final_eval_ppl": last.get("eval_ppl"), "best_eval_loss": state["best_eval"],
            "best_eval_step": state["best_step"], "skipped_steps": state["skipped"],
            "stopped_early": state["step"] < total_steps, "device": _describe_device(accelerator.device),
            "processes": world, "method": t.method, "trainable_params": n_trainable,
            "peak_memory_mb": _peak_memory_mb(accelerator.device),
        }
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(f"done: {state['step']} steps in {state['train_seconds']:.0f} s, {summary['train_tokens_per_s']:.0f} tokens/s; "
            f"train loss {_fmt(last.get('loss'))}, held-out loss {_fmt(last.get('eval_loss'))}; final model in {run / 'final'}")
    if t.trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return run


# --------------------------------------------------------------------------------------------- model


def build_model(cfg: Config, weight_dtype, accelerator):
    """The base model with adapters (lora, dora, qlora) or all weights trainable (full)."""
    from tunesmith.models import load

    t = cfg.train
    if t.method == "qlora":
        model = _load_4bit(cfg, accelerator)
    else:
        model, _ = load(cfg.model.name, dtype=str(weight_dtype).replace("torch.", ""), device="cpu",
                        trust_remote_code=cfg.model.trust_remote_code)
    _check_head(model)
    model.config.use_cache = False
    if t.packing:
        use_varlen(model)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.method == "full":
        model.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        targets = targets if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()]
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                     lora_dropout=cfg.lora.dropout,
                                                     target_modules=targets, use_dora=t.method == "dora",
                                                     task_type="CAUSAL_LM"))
    model.train()
    return model


def _load_4bit(cfg: Config, accelerator):
    import importlib.util

    if accelerator.device.type != "cuda":
        raise UserError("train.method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels). "
                        "fix: use train.method=lora on this machine.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("train.method=qlora needs bitsandbytes. fix: pip install bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tunesmith.models import converted_dir, resolve

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(converted_dir(resolve(cfg.model.name)), quantization_config=quant,
                                                 device_map={"": accelerator.local_process_index},
                                                 trust_remote_code=cfg.model.trust_remote_code)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)


def _check_head(model) -> None:
    """Refuse, before training, logits the training loss would compute differently from the model."""
    logit_transform(model.config)


def _tokenizer(cfg: Config):
    from tunesmith.models import load_tokenizer

    return load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)


# ------------------------------------------------------------------------------------------ held-out


def heldout_loss(model, tok, examples: list[dict], max_len: int = 1024, batch_size: int = 8,
                 train_on_prompt: bool = False) -> dict:
    """Mean per-token loss and perplexity of a model on chat examples (assistant tokens by default).

        from tunesmith.models import load; model, tok = load("runs/run")
        heldout_loss(model, tok, load_examples("heldout.jsonl"))  # {"loss", "ppl", "tokens", "examples"}
    """
    encoded, _ = encode_examples(tok, examples, max_len, "truncate", train_on_prompt)
    if not encoded:
        return {"loss": float("nan"), "ppl": float("nan"), "tokens": 0, "examples": 0}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_model = CausalLMLoss(model)
    total, count = 0.0, 0
    with torch.no_grad():  # padded batches: exact with any attention implementation (pads come last)
        ordered = sorted(encoded, key=lambda e: len(e["ids"]))
        for a in range(0, len(ordered), batch_size):
            mb = ordered[a:a + batch_size]
            total += loss_model(**_to(collate(mb, packing=False, pad_id=tok.pad_token_id or 0), device)).item()
            count += sum(n_targets(e) for e in mb)
    model.train(was_training)
    return {"loss": total / count, "ppl": math.exp(min(total / count, 50)), "tokens": count, "examples": len(encoded)}


def _heldout(loss_model, held: list[dict], batch_size: int, packing: bool, pad_id: int, accelerator) -> dict:
    """Held-out loss during training: each process takes every world-th example; sums are reduced."""
    inner = accelerator.unwrap_model(loss_model)
    inner.eval()
    mine = sorted(held[accelerator.process_index::accelerator.num_processes], key=lambda e: len(e["ids"]))
    total = torch.zeros((), device=accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        for a in range(0, len(mine), batch_size):
            total += inner(**_to(collate(mine[a:a + batch_size], packing, pad_id), accelerator.device)).float()
    total = accelerator.reduce(total, "sum").item()
    count = sum(n_targets(e) for e in held)
    return {"loss": round(total / count, 6), "ppl": round(math.exp(min(total / count, 50)), 4)}


# --------------------------------------------------------------------------------------- final model


def save_final(out: Path, model, tok, cfg: Config) -> None:
    """RUN/final: a peft adapter whose base is the model spec as the user wrote it, or a full model."""
    impl = model.config._attn_implementation
    plain = "sdpa" if getattr(model, "_supports_sdpa", False) else "eager"  # Gemma 2 has no sdpa (score caps)
    with atomic_dir(out) as tmp:
        if cfg.train.method == "full" and impl != plain:
            model.set_attn_implementation(plain)  # a saved model must load anywhere, without tunesmith
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            if cfg.train.method == "full" and impl != plain:
                model.set_attn_implementation(impl)
        if (tmp / "adapter_config.json").exists():
            adapter = json.loads((tmp / "adapter_config.json").read_text())
            adapter["base_model_name_or_path"] = cfg.model.name
            (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
        tok.save_pretrained(tmp)


# ------------------------------------------------------------------------------------------- helpers


def _check_options(cfg: Config) -> None:
    t = cfg.train
    closed = {"train.method": (t.method, METHODS), "train.schedule": (t.schedule, tuple(SCHEDULES)),
              "train.on_nonfinite": (t.on_nonfinite, ("stop", "skip")), "train.device": (t.device, ("auto", "cpu", "cuda"))}
    for key, (value, allowed) in closed.items():
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not one of {', '.join(allowed)}.")
    for key in ("batch_size", "grad_accum", "log_every", "keep_last"):
        if getattr(t, key) < 1:
            raise UserError(f"train.{key} must be at least 1, got {getattr(t, key)}.")


def _pick_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA GPU is visible. fix: train.device=auto or cpu.")
    return "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def _precision(cfg: Config, device: str):
    """(weight dtype, accelerate mixed precision). Half-precision compute runs under autocast;
    full fine-tuning keeps float32 master weights (AdamW updates vanish in bfloat16)."""
    from tunesmith.models import pick_dtype

    dtype = pick_dtype(cfg.model.dtype, device)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    if device == "cpu":
        return dtype, "no"  # CPU autocast would cast back and forth for nothing
    if cfg.train.method == "full" and precision != "no":
        return torch.float32, precision
    return dtype, precision


def _trackers(names: str) -> list[str] | None:
    import importlib.util

    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        if name not in TRACKERS:
            raise UserError(f"train.trackers: unknown tracker '{name}' (choose from {', '.join(TRACKERS)}).")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"train.trackers={name} needs its package. fix: pip install {TRACKERS[name]}")
    return chosen or None


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _dropped(report: dict) -> str:
    parts = [f"{report[k]} {label}" for k, label in (("too_long_dropped", "dropped as too long"),
                                                     ("truncated", "truncated"),
                                                     ("no_loss_tokens", "dropped with no loss tokens")) if report[k]]
    return ", ".join(parts) or "none dropped"


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _describe_device(device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


if __name__ == "__main__":
    from tunesmith.cli import main as _main

    sys.exit(_main(["train", *sys.argv[1:]]))
