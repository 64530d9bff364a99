"""The training loop: LoRA, DoRA, QLoRA or full fine-tuning of a causal LM on chat examples.

    tunesmith train config.yaml [section.key=value ...] [--resume]
    accelerate launch --num_processes 2 -m tunesmith.cli train config.yaml      # DDP, FSDP, DeepSpeed
    from tunesmith.train import train; run_dir = train(cfg)

Read it top to bottom: setup (run directory, data, model, optimizer), the loop, the final model.
The objective is SFT on chat examples here, or DPO / ORPO on preference pairs (train.objective;
tunesmith.train.preference): each is an Objective, how its data is encoded, a step's backward and
its held-out loss, and the rest of the loop is the same for all.
accelerate owns devices and processes; peft owns adapters; transformers owns the architectures.
What is ours is the data path (tunesmith.data.batches: loss masks, packing; tunesmith.train.loss:
attention that never crosses a packed example, the LM head only where there is loss) and the
bookkeeping that makes a run exact and crash-proof.

The run directory:
  config.yaml  the resolved config          data.json     data hashes, split sizes, what was dropped
  metrics.jsonl one line per logged step    checkpoints/  step-NNNNNN/ (COMPLETE marks a finished save)
  final/       the adapter or the model     summary.json  steps, time, tokens/s, losses, device
  reference/   full fine-tuning with DPO: the reference log-probabilities of every pair
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from tunesmith import UserError, cpu, rundir
from tunesmith.config import Config, load_config, save_config, to_dict
from tunesmith.data.batches import (
    collate,
    encode_examples,
    examples_hash,
    micro_batches,
    n_targets,
    step_indices,
    to_device,
)
from tunesmith.data.split import load_split
from tunesmith.fsutil import atomic_dir
from tunesmith.train import preference
from tunesmith.train.checkpoints import (
    check_resumable,
    latest_checkpoint,
    load_checkpoint,
    remove_unfinished,
    resume_checkpoint,
    save_checkpoint,
    trainable_state,
    truncate_jsonl,
)
from tunesmith.train.loss import CausalLMLoss, logit_transform, use_varlen

METHODS = ("lora", "dora", "qlora", "full")
SCHEDULES = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
}
TRACKERS = ("tensorboard", "mlflow", "wandb")  # each name is also the package accelerate needs for it


def cli_train(args) -> int:
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():  # `tunesmith train key=value ...`: no file
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    train(cfg, resume=args.resume)
    return 0


@dataclass
class LoopState:
    """Where the loop stands; a checkpoint's state.json holds exactly this (plus the process count)."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens trained on, prompt tokens included
    train_seconds: float = 0.0  # time spent in optimizer steps (evaluation and saving excluded)
    skipped: int = 0  # steps skipped for a non-finite loss (train.on_nonfinite=skip)
    best_eval: float | None = None  # lowest held-out loss so far
    best_step: int | None = None  # the step it was reached at
    evals_without_improvement: int = 0  # for early stopping

    @classmethod
    def from_json(cls, d: dict) -> "LoopState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Run:
    """Everything the loop needs, built once by setup()."""

    cfg: Config
    dir: Path
    accelerator: object
    device: str
    tok: object
    train_examples: list[dict]
    encoded: list[dict]  # the training examples, tokenized (tunesmith.data.batches.encode_examples)
    held: list[dict]  # the held-out examples, tokenized
    total_steps: int
    global_batch: int
    loss_model: torch.nn.Module  # CausalLMLoss around the (peft) model, prepared by accelerate
    optimizer: torch.optim.Optimizer
    trainable: list
    state: LoopState = field(default_factory=LoopState)
    best: dict | None = None  # trainable weights at the best held-out loss, when early stopping is on
    last: dict = field(default_factory=dict)  # the latest metrics record, for the summary
    reference: dict | None = None  # full fine-tuning with DPO: the reference's log-probs (preference.reference_table)


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then the schedule."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * SCHEDULES[schedule](progress)


def train(cfg: Config, resume: bool = False) -> Path:
    """Train as cfg says and return the run directory (see the module doc for what it holds)."""
    from tqdm.auto import tqdm

    run = setup(cfg, resume)
    t, state, main = cfg.train, run.state, run.accelerator.is_main_process
    bar = tqdm(
        total=run.total_steps, initial=state.step, desc="train", unit="step", disable=not main, dynamic_ncols=True
    )
    logs = _open_logs(run)
    stop = _SigtermFlag()
    others, rechecked = cpu.OthersMeter(), time.time()  # re-decide CPU threads as the machine's load changes
    run.loss_model.train()
    try:
        while state.step < run.total_steps:
            ids = step_indices(len(run.encoded), run.global_batch, t.seed, state.step)
            record = optimizer_step(run, ids)
            done = state.step == run.total_steps
            if run.held and ((t.eval_every and state.step % t.eval_every == 0) or done):
                record.update(evaluate(run))
            early = bool(t.early_stopping_patience) and state.evals_without_improvement >= t.early_stopping_patience
            log_step(run, record, ids, logs, bar)
            if run.device == "cpu":
                cpu.trim()  # the step's activations are gone: give their pages back
                if not t.threads and time.time() - rechecked > 30:
                    torch.set_num_threads(cpu.threads(others=others.read()))
                    rechecked = time.time()
            sigterm = stop.agreed(run.accelerator)
            if (
                (t.save_every > 0 and state.step % t.save_every == 0)
                or sigterm
                or (t.save_every >= 0 and (early or done))
            ):
                save_checkpoint(
                    run.dir,
                    asdict(state),
                    run.accelerator.unwrap_model(run.loss_model),
                    run.optimizer,
                    run.best,
                    run.accelerator,
                    t.keep_last,
                )
            if sigterm:
                bar.close()
                run.accelerator.print(
                    f"\nSIGTERM: saved step {state.step} to {latest_checkpoint(run.dir)}; exiting. "
                    f"Continue with: tunesmith train CONFIG --resume"
                )
                raise SystemExit(143)
            if early:
                run.accelerator.print(
                    f"\nearly stopping at step {state.step}: held-out loss has not improved for "
                    f"{t.early_stopping_patience} evaluations (best {state.best_eval:.4f} at step {state.best_step})"
                )
                break
    finally:
        bar.close()
        stop.restore()
        for f in logs.values():
            f.close()
    return finish(run)


# --------------------------------------------------------------------------------------------- setup


def setup(cfg: Config, resume: bool = False) -> Run:
    """Run directory, data, model, optimizer and (with resume) the checkpoint's state."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = cfg.train
    _check_options(cfg)
    device = _pick_device(t.device)
    if device == "cpu":
        cpu.use_heap()
        torch.set_num_threads(cpu.threads(t.threads))
    weight_dtype, precision = pick_precision(cfg, device)
    run_dir = Path(t.output_dir).expanduser().resolve()
    accelerator = Accelerator(
        cpu=device == "cpu", mixed_precision=precision, log_with=_trackers(t.trackers), project_dir=str(run_dir)
    )
    main, world = accelerator.is_main_process, accelerator.num_processes
    say = accelerator.print
    engine = accelerator.distributed_type.value  # NO, MULTI_CPU (DDP), MULTI_GPU (DDP), FSDP, DEEPSPEED
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and engine != "FSDP":
        # accelerate turns FSDP on only for accelerator devices; on CPU it runs DDP (docs/train.md)
        say(f"note: FSDP was asked for, but accelerate runs {engine} here: every process holds the whole model")

    if resume:
        if main:
            resume_checkpoint(run_dir, say)  # checks the files against their manifest; sets damaged ones aside
        accelerator.wait_for_everyone()
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None and run_dir.is_dir() and not (run_dir / rundir.FINAL).exists():
            # Stopped before its first save: nothing to lose, and continuing means starting again.
            _check_new_run_dir(run_dir)
            accelerator.wait_for_everyone()
            if main:
                for name in (rundir.METRICS, rundir.EXAMPLES):
                    (run_dir / name).unlink(missing_ok=True)
                remove_unfinished(run_dir / rundir.CHECKPOINTS)
            say(
                f"{run_dir}: no complete checkpoint yet (the run stopped before its first save); "
                f"starting again from step 0"
            )
            resume = False
        elif ckpt is None:
            raise UserError(f"{run_dir}: no complete checkpoint to resume from. fix: run without --resume.")
    elif run_dir.exists() and any(
        (run_dir / name).exists() for name in (rundir.CHECKPOINTS, rundir.FINAL, rundir.METRICS)
    ):
        raise UserError(
            f"{run_dir} already holds a run. fix: add --resume to continue it, or set "
            f"train.output_dir to a new directory."
        )
    else:
        _check_new_run_dir(run_dir)
    accelerator.wait_for_everyone()  # every process has looked before any writes
    starting_point(cfg)
    train_examples, heldout_examples, data_info = load_split(cfg)
    with accelerator.main_process_first():  # one process downloads a hub model; the others find it cached
        _pin_model(cfg)
    if t.replay:
        replayed = _replay(cfg, len(train_examples), accelerator)
        train_examples = train_examples + replayed
        data_info["replay"] = {"fraction": t.replay, "examples": len(replayed), "hash": examples_hash(replayed)}
    tok = _tokenizer(cfg)
    encode = OBJECTIVES[t.objective].encode
    encoded, train_report = encode(
        tok, train_examples, cfg.data.max_len, cfg.data.too_long, t.train_on_prompt, where=cfg.data.train
    )
    held, held_report = encode(
        tok, heldout_examples, cfg.data.max_len, "truncate", t.train_on_prompt, where=cfg.data.heldout or cfg.data.train
    )
    if not encoded:
        raise UserError(f"{cfg.data.train}: no example left to train on ({_dropped(train_report)}).")
    global_batch = t.batch_size * t.grad_accum * world
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * len(encoded) / global_batch))
    data_info.update(
        train_report=train_report,
        heldout_report=held_report,
        processes=world,
        distributed=engine,
        global_batch=global_batch,
        steps=total_steps,
    )
    if resume:
        check_resumable(run_dir, cfg, data_info)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / rundir.CONFIG)
        (run_dir / rundir.DATA).write_text(json.dumps(data_info, indent=2) + "\n")
    say(
        f"tunesmith train: {len(encoded)} examples ({train_report['tokens']:,} tokens, "
        f"{train_report['loss_tokens']:,} with loss; {_dropped(train_report)}), {len(held)} held out; "
        f"{total_steps} steps of {global_batch} examples; {world} process(es) on {device}"
        f"{_threads_note() if device == 'cpu' else ''}"
    )

    set_seed(t.seed)
    model = build_model(cfg, weight_dtype, accelerator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    say(
        f"model {cfg.model.name}: {t.method}, {sum(p.numel() for p in trainable):,} trainable of "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, weights {str(weight_dtype).replace('torch.', '')}"
        f"{', autocast ' + precision if precision != 'no' else ''}"
    )
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay, fused=device == "cuda")
    loss_model, optimizer = accelerator.prepare(CausalLMLoss(model), optimizer)
    run = Run(
        cfg=cfg,
        dir=run_dir,
        accelerator=accelerator,
        device=device,
        tok=tok,
        train_examples=train_examples,
        encoded=encoded,
        held=held,
        total_steps=total_steps,
        global_batch=global_batch,
        loss_model=loss_model,
        optimizer=optimizer,
        trainable=trainable,
    )
    if resume:
        state, run.best = load_checkpoint(
            ckpt, accelerator.unwrap_model(loss_model), optimizer, accelerator.process_index
        )
        run.state = LoopState.from_json(state)
        if main:
            run.last = truncate_jsonl(run_dir / rundir.METRICS, run.state.step)
            truncate_jsonl(run_dir / rundir.EXAMPLES, run.state.step)
            remove_unfinished(run_dir / rundir.CHECKPOINTS)
        say(f"resumed from {ckpt} at step {run.state.step}")
    accelerator.wait_for_everyone()
    run.reference = preference.reference_table(run, resume)
    if t.trackers:
        accelerator.init_trackers(run_dir.name, config=_flat(to_dict(cfg)))
    return run


# ------------------------------------------------------------------------------------------ the step


def optimizer_step(run: Run, ids: list[int]) -> dict:
    """One optimizer step on the examples `ids`; returns its metrics record.

    The objective's backward runs per micro-batch, gradients synced on the last one only
    (sft_backward here, preference.backward for dpo and orpo); then clipping, the NaN guard and
    the optimizer.
    """
    t, acc, state = run.cfg.train, run.accelerator, run.state
    t0 = time.perf_counter()
    step_tokens = sum(len(run.encoded[i]["ids"]) for i in ids)
    lr = lr_at(state.step, t.lr, t.warmup_steps, run.total_steps, t.schedule)
    for group in run.optimizer.param_groups:
        group["lr"] = lr

    loss, extra = OBJECTIVES[t.objective].backward(run, ids)
    grad_norm = acc.clip_grad_norm_(run.trainable, t.max_grad_norm or float("inf"))
    grad_norm = float(grad_norm) if grad_norm is not None else None  # DeepSpeed clips inside its step

    finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
    if finite:
        run.optimizer.step()
    elif t.on_nonfinite == "skip":
        state.skipped += 1
        acc.print(
            f"\nstep {state.step + 1}: non-finite loss or gradient ({loss}, norm {grad_norm}); batch skipped "
            f"({state.skipped} so far)"
        )
    else:
        raise UserError(
            f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {state.step + 1} "
            f"(loss {loss}, grad norm {grad_norm}). Nothing was saved from this step. Last good checkpoint: "
            f"{latest_checkpoint(run.dir) or 'none'}. fix: lower train.lr, check the data of this step "
            f"(train.log_examples=true lists it), or set train.on_nonfinite=skip; then "
            f"`tunesmith train CONFIG --resume`."
        )
    run.optimizer.zero_grad(set_to_none=True)

    dt = time.perf_counter() - t0
    state.step, state.tokens, state.train_seconds = state.step + 1, state.tokens + step_tokens, state.train_seconds + dt
    record = {
        "step": state.step,
        "loss": loss if finite else None,
        "lr": lr,
        "grad_norm": grad_norm if finite else None,
        "tokens_per_s": round(step_tokens / dt, 1),
        "tokens": state.tokens,
        **(extra if finite else {}),
    }
    if not finite:
        record["skipped"] = True
    return record


def sft_backward(run: Run, ids: list[int]) -> tuple[float, dict]:
    """Backward of one SFT step on the examples `ids`: (the step's mean token loss, no other metrics).

    Each micro-batch's loss is its sum of token losses over the global number of loss tokens in
    the step (x processes, since DDP averages): the step's gradient is that of the mean token loss,
    however the examples are split into micro-batches or processes.
    """
    t, acc = run.cfg.train, run.accelerator
    step_targets = sum(n_targets(run.encoded[i]) for i in ids)  # every process computes the global count
    loss_sum = torch.zeros((), device=acc.device)
    mbs = micro_batches(run.encoded, ids, acc.process_index, acc.num_processes, t.grad_accum)
    for k, mb in enumerate(mbs):
        batch = to_device(collate(mb, t.packing, run.tok.pad_token_id), acc.device)
        sync = contextlib.nullcontext() if k == len(mbs) - 1 else acc.no_sync(run.loss_model)
        with sync:
            mb_loss = run.loss_model(**batch)
            acc.backward(mb_loss * (acc.num_processes / step_targets))
        loss_sum += mb_loss.detach().float()
    return (acc.reduce(loss_sum, "sum") / step_targets).item(), {}


def sft_heldout(run: Run) -> tuple[float, dict]:
    """Mean token loss on the held-out examples, and its perplexity."""
    t = run.cfg.train
    loss = mean_loss(run.loss_model, run.held, t.batch_size, t.packing, run.tok.pad_token_id, run.accelerator)
    return loss, {"eval_ppl": round(math.exp(min(loss, 50)), 4)}


class Objective(NamedTuple):
    """What differs between objectives: encoding the data, a step's backward, the held-out loss."""

    encode: Callable  # (tok, examples, max_len, too_long, train_on_prompt, where) -> (encoded, report)
    backward: Callable  # (run, ids) -> (the step's loss, other metrics); gradients accumulated
    heldout: Callable  # (run) -> (held-out loss, other metrics prefixed eval_)


PAIRS = Objective(preference.encode_pairs, preference.backward, preference.heldout)
OBJECTIVES = {"sft": Objective(encode_examples, sft_backward, sft_heldout), "dpo": PAIRS, "orpo": PAIRS}


def evaluate(run: Run) -> dict:
    """Held-out loss now; tracks the best one (and its weights, for early stopping)."""
    state = run.state
    loss, extra = OBJECTIVES[run.cfg.train.objective].heldout(run)
    if state.best_eval is None or loss < state.best_eval:
        state.best_eval, state.best_step, state.evals_without_improvement = loss, state.step, 0
        if run.cfg.train.early_stopping_patience:
            run.best = trainable_state(run.accelerator.unwrap_model(run.loss_model), clone=True)
    else:
        state.evals_without_improvement += 1
    run.loss_model.train()
    return {"eval_loss": round(loss, 6), **extra}


def log_step(run: Run, record: dict, ids: list[int], logs: dict, bar) -> None:
    """metrics.jsonl (every log_every steps and at every evaluation), examples.jsonl, trackers, the bar."""
    t, state = run.cfg.train, run.state
    if run.accelerator.is_main_process:
        if state.step % t.log_every == 0 or state.step == run.total_steps or "eval_loss" in record:
            logs["metrics"].write(json.dumps(record) + "\n")
            logs["metrics"].flush()
        if "examples" in logs:
            names = [
                (run.train_examples[run.encoded[i]["index"]].get("meta") or {}).get("id") or run.encoded[i]["index"]
                for i in ids
            ]
            logs["examples"].write(json.dumps({"step": state.step, "examples": names}) + "\n")
            logs["examples"].flush()
        if t.trackers:
            run.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=state.step)
    run.last = record
    bar.update(1)
    bar.set_postfix(
        loss=f"{record['loss']:.4f}" if record["loss"] is not None else "skipped",
        tok_s=f"{state.tokens / state.train_seconds:.0f}",
        **({"eval": f"{record['eval_loss']:.4f}"} if "eval_loss" in record else {}),
    )


def finish(run: Run) -> Path:
    """The final model (the best held-out weights under early stopping) and summary.json."""
    acc, state, last, t = run.accelerator, run.state, run.last, run.cfg.train
    inner = acc.unwrap_model(run.loss_model)
    if run.best is not None:
        inner.load_state_dict(run.best, strict=False)
    preference.drop_reference(inner.model)
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_final(run.dir / rundir.FINAL, inner.model, run.tok, run.cfg)
        summary = {
            "steps": state.step,
            "train_seconds": round(state.train_seconds, 2),
            "tokens": state.tokens,
            "train_tokens_per_s": round(state.tokens / max(state.train_seconds, 1e-9), 1),
            "final_train_loss": last.get("loss"),
            "final_eval_loss": last.get("eval_loss"),
            "final_eval_ppl": last.get("eval_ppl"),
            "best_eval_loss": state.best_eval,
            "best_eval_step": state.best_step,
            "skipped_steps": state.skipped,
            "stopped_early": state.step < run.total_steps,
            "device": _describe_device(acc.device),
            "processes": acc.num_processes,
            "method": t.method,
            "objective": t.objective,
            "trainable_params": sum(p.numel() for p in run.trainable),
            "peak_memory_mb": _peak_memory_mb(acc.device),
        }
        (run.dir / rundir.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        acc.print(
            f"done: {state.step} steps in {state.train_seconds:.0f} s, {summary['train_tokens_per_s']:.0f} tokens/s; "
            f"train loss {_fmt(last.get('loss'))}, held-out loss {_fmt(last.get('eval_loss'))}; "
            f"final model in {run.dir / rundir.FINAL}"
        )
    if t.trackers:
        acc.end_training()
    acc.wait_for_everyone()
    return run.dir


def _open_logs(run: Run) -> dict:
    if not run.accelerator.is_main_process:
        return {}
    logs = {"metrics": open(run.dir / rundir.METRICS, "a")}
    if run.cfg.train.log_examples:
        logs["examples"] = open(run.dir / rundir.EXAMPLES, "a")
    return logs


class _SigtermFlag:
    """SIGTERM (a scheduler preempting us, `kill`): the loop finishes its step, saves and exits."""

    def __init__(self):
        self.seen = False
        self.installed = threading.current_thread() is threading.main_thread()  # signals reach only that one
        self.previous = signal.signal(signal.SIGTERM, self._set) if self.installed else None

    def _set(self, *_):
        self.seen = True

    def agreed(self, accelerator) -> bool:
        """Every process must agree, or one would wait forever in the next collective."""
        if accelerator.num_processes == 1:
            return self.seen
        return accelerator.reduce(torch.tensor(float(self.seen), device=accelerator.device), "sum").item() > 0

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous)


# --------------------------------------------------------------------------------------------- model


def build_model(cfg: Config, weight_dtype, accelerator):
    """The base model with adapters (lora, dora, qlora) or all weights trainable (full)."""
    from tunesmith.models import load

    t = cfg.train
    start = starting_point(cfg)
    adapter = start is not None and (start / "adapter_config.json").exists()
    if t.method == "qlora":
        model = _load_4bit(cfg, accelerator)
    else:
        model, _ = load(
            cfg.model.name,
            dtype=str(weight_dtype).replace("torch.", ""),
            device="cpu",
            trust_remote_code=cfg.model.trust_remote_code,
            revision=cfg.model.revision,
            gguf_file=cfg.model.gguf_file,
        )
    _check_head(model)
    model.config.use_cache = False
    if t.packing:
        use_varlen(model)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter:
        from peft import PeftModel

        # the starting adapter: trained on (LoRA) or merged into the weights (full); for DPO with
        # LoRA it is loaded once more, frozen, as the reference (tunesmith.train.preference)
        model = PeftModel.from_pretrained(model, start, is_trainable=t.method != "full")
        if t.method == "full":
            model = model.merge_and_unload()
        elif t.objective == "dpo":
            model.load_adapter(start, adapter_name=preference.REFERENCE, is_trainable=False)
    if t.method == "full":
        model.requires_grad_(True)
    elif not adapter:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        targets = targets if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()]
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=targets,
                use_dora=t.method == "dora",
                task_type="CAUSAL_LM",
            ),
        )
    model.train()
    return model


def _load_4bit(cfg: Config, accelerator):
    import importlib.util

    if accelerator.device.type != "cuda":
        raise UserError(
            "train.method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels). "
            "fix: use train.method=lora on this machine."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("train.method=qlora needs bitsandbytes. fix: pip install bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tunesmith.models import converted_dir, resolve

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        converted_dir(resolve(cfg.model.name, cfg.model.revision, cfg.model.gguf_file)),
        quantization_config=quant,
        device_map={"": accelerator.local_process_index},
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)


def _replay(cfg: Config, n_task: int, accelerator) -> list[dict]:
    """train.replay's examples: the main process has the base model answer (once per base model,
    cached), the others read its cache."""
    from tunesmith.compare.side_effects import replay_examples

    if accelerator.is_main_process:
        replay_examples(cfg, n_task, accelerator.print)
    accelerator.wait_for_everyone()
    return replay_examples(cfg, n_task, accelerator.print)


def starting_point(cfg: Config) -> Path | None:
    """RUN/final of train.init_from, checked; None without one. An adapter there must sit on
    model.name; a full model there becomes model.name (the base any new adapter is saved against)."""
    if not cfg.train.init_from:
        return None
    final = Path(cfg.train.init_from).expanduser().resolve() / rundir.FINAL
    if (final / "adapter_config.json").exists():
        base = json.loads((final / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base != cfg.model.name:
            raise UserError(
                f"train.init_from={cfg.train.init_from} is an adapter on {base}, but model.name={cfg.model.name}. "
                f"fix: model.name={base}"
            )
    elif (final / "config.json").exists():
        cfg.model.name = str(final)
    else:
        raise UserError(
            f"train.init_from={cfg.train.init_from}: no finished run there ({final} holds no adapter or model). "
            f"fix: point it at a run directory that `tunesmith train` completed, or leave it empty."
        )
    return final


def _check_head(model) -> None:
    """Refuse, before training, logits the training loss would compute differently from the model."""
    logit_transform(model.config)


def _tokenizer(cfg: Config):
    from tunesmith.models import load_tokenizer

    m = cfg.model
    return load_tokenizer(m.name, trust_remote_code=m.trust_remote_code, revision=m.revision, gguf_file=m.gguf_file)


def _pin_model(cfg: Config) -> None:
    """Resolve the base model once (a hub id downloads here, on first use) and record the commit it came
    from in cfg.model.revision, so the run's config.yaml names the exact weights it was trained on."""
    from tunesmith.models import resolve

    source = resolve(cfg.model.name, cfg.model.revision, cfg.model.gguf_file)
    cfg.model.revision = source.revision or cfg.model.revision


# ------------------------------------------------------------------------------------------ held-out


def heldout_loss(
    model, tok, examples: list[dict], max_len: int = 1024, batch_size: int = 8, train_on_prompt: bool = False
) -> dict:
    """Mean per-token loss and perplexity of a model on chat examples (assistant tokens by default).

    from tunesmith.models import load; model, tok = load("runs/run")
    heldout_loss(model, tok, load_examples("heldout.jsonl"))  # {"loss", "ppl", "tokens", "examples"}
    """
    encoded, _ = encode_examples(tok, examples, max_len, "truncate", train_on_prompt)
    if not encoded:
        return {"loss": float("nan"), "ppl": float("nan"), "tokens": 0, "examples": 0}
    was_training = model.training
    # padded batches: exact with any attention implementation (pads come last)
    loss = mean_loss(CausalLMLoss(model), encoded, batch_size, packing=False, pad_id=tok.pad_token_id or 0)
    model.train(was_training)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50)),
        "tokens": sum(n_targets(e) for e in encoded),
        "examples": len(encoded),
    }


def mean_loss(loss_model, encoded: list[dict], batch_size: int, packing: bool, pad_id: int, accelerator=None) -> float:
    """Mean token loss of `loss_model` (a CausalLMLoss, or one accelerate prepared) on tokenized
    examples, in eval mode. Under accelerate each process takes every world-th example and the
    sums are reduced, so every process returns the same number."""
    inner = accelerator.unwrap_model(loss_model) if accelerator else loss_model
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(inner.parameters()).device
    inner.eval()
    mine = sorted(encoded[rank::world], key=lambda e: len(e["ids"]))
    total = torch.zeros((), device=device)
    with torch.no_grad(), accelerator.autocast() if accelerator else contextlib.nullcontext():
        for a in range(0, len(mine), batch_size):
            total += inner(**to_device(collate(mine[a : a + batch_size], packing, pad_id), device)).float()
    if accelerator:
        total = accelerator.reduce(total, "sum")
    return total.item() / sum(n_targets(e) for e in encoded)


# --------------------------------------------------------------------------------------- final model


def save_final(out: Path, model, tok, cfg: Config) -> None:
    """RUN/final: a peft adapter whose base is the model spec as the user wrote it, or a full model."""
    impl = model.config._attn_implementation
    plain = "sdpa" if getattr(model, "_supports_sdpa", False) else "eager"  # Gemma 2 has no sdpa (score caps)
    need = sum(
        p.numel() * p.element_size() for p in model.parameters() if cfg.train.method == "full" or p.requires_grad
    )
    with atomic_dir(out, need=need + (8 << 20), what="the final model") as tmp:  # + the tokenizer files
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
            adapter["revision"] = cfg.model.revision or None  # peft's field for the base's version
            (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
        tok.save_pretrained(tmp)


# ------------------------------------------------------------------------------------------- helpers


def _check_options(cfg: Config) -> None:
    t = cfg.train
    closed = {
        "train.method": (t.method, METHODS),
        "train.schedule": (t.schedule, tuple(SCHEDULES)),
        "train.on_nonfinite": (t.on_nonfinite, ("stop", "skip")),
        "train.device": (t.device, ("auto", "cpu", "cuda")),
    }
    for key, (value, allowed) in closed.items():
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not one of {', '.join(allowed)}.")
    if not 0 <= t.replay < 1:
        raise UserError(
            f"train.replay={t.replay} is a share of the training examples. fix: a number from 0 (no replay) "
            f"below 1, e.g. train.replay=0.2."
        )
    for key in ("batch_size", "grad_accum", "log_every", "keep_last"):
        if getattr(t, key) < 1:
            raise UserError(f"train.{key} must be at least 1, got {getattr(t, key)}.")
    preference.check_options(t)


def _check_new_run_dir(run: Path) -> None:
    """train.output_dir is written into (config.yaml, data.json, ...): refuse a file, or a directory
    that holds other things, rather than overwrite a user's own config.yaml or data."""
    if run.exists() and not run.is_dir():
        raise UserError(f"train.output_dir={run} is a file. fix: set train.output_dir to a new directory.")
    # export-*: export's default target
    ours = lambda name: name in rundir.ENTRIES or name.startswith((".", "export-"))  # noqa: E731
    others = sorted(p.name for p in run.iterdir() if not ours(p.name)) if run.is_dir() else []
    if others:
        raise UserError(
            f"train.output_dir={run} holds files that are not a tunesmith run ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); a run writes config.yaml, data.json, checkpoints/ "
            f"and final/ there and would overwrite them. fix: set train.output_dir to a new directory "
            f"(e.g. runs/NAME)."
        )


def _pick_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA GPU is visible. fix: train.device=auto or cpu.")
    return "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def pick_precision(cfg: Config, device: str):
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
        if importlib.util.find_spec(name) is None:
            raise UserError(f"train.trackers={name} needs its package. fix: pip install {name}")
    return chosen or None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _dropped(report: dict) -> str:
    parts = [
        f"{report[k]} {label}"
        for k, label in (
            ("too_long_dropped", "dropped as too long"),
            ("truncated", "truncated"),
            ("no_loss_tokens", "dropped with no loss tokens"),
        )
        if report[k]
    ]
    return ", ".join(parts) or "none dropped"


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _threads_note() -> str:
    n = torch.get_num_threads()
    return f" ({n} thread{'s' if n > 1 else ''})"


def _describe_device(device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


if __name__ == "__main__":
    from tunesmith import cli

    sys.exit(cli.main(["train", *sys.argv[1:]]))
