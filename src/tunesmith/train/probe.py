"""`tunesmith check`: the data layer's report (tunesmith.data.check: validation, token counts, the
estimate) with the speed probe, which times the trainer's own step on rows of the data.

    tunesmith check train.jsonl [heldout.jsonl] [--model M] [--max-len 1024] [--no-probe] [--json]
    tunesmith check data/config.yaml          # the config's data files, model and max_len
    from tunesmith.train.probe import probe; run_check(path, probe=probe)

The probe lives with training because it runs the trainer's set-up, loss and optimizer step; the
data layer takes it as an argument and imports nothing of training.
"""

from __future__ import annotations

import json
import time

from tunesmith import UserError

PROBE = {"steps": 2, "budget_s": 10.0, "cpu_row": 256, "gpu_rows": 4}


def probe(spec, tok, examples: list[dict], max_len: int, method: str = "lora") -> dict:
    """Training tokens/s here: after a warm-up, PROBE['steps'] timed steps of the trainer itself
    (its model set-up with adapters and packed attention, its loss that runs the LM head only on
    loss tokens, AdamW) on packed rows of the data's examples, as many as PROBE['budget_s'] allows.
    On a CPU the rows are short and the rate is extrapolated to rows of max_len; on a GPU they are
    max_len long."""
    import torch
    from accelerate import Accelerator

    from tunesmith.config import load_config
    from tunesmith.data.batches import collate, encode_examples
    from tunesmith.models import default_device
    from tunesmith.train.loop import build_model, pick_precision
    from tunesmith.train.loss import CausalLMLoss

    device = "cuda" if default_device().startswith("cuda") else "cpu"
    cfg = load_config(None, [f"model.name={spec}", f"train.method={method}", "train.packing=true"])
    weight_dtype, precision = pick_precision(cfg, device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    loss_model = CausalLMLoss(build_model(cfg, weight_dtype, accelerator).to(accelerator.device))
    trainable = [p for p in loss_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-6, fused=device == "cuda")
    # CPU: one row of at most cpu_row tokens (a step takes seconds); GPU: a few full rows (it needs
    # work to be busy).
    rows, width = (1, min(max_len, PROBE["cpu_row"])) if device == "cpu" else (PROBE["gpu_rows"], max_len)
    encoded, _ = encode_examples(tok, examples, max_len, "truncate")
    if not encoded:
        raise UserError("no example with loss tokens to probe with. fix: check the dataset, or pass --no-probe.")

    def packed_row(w: int) -> list[dict]:
        """Examples back to back, to exactly w tokens (a small dataset repeats). The one that does not
        fit keeps its end, where the reply and so the loss tokens are."""
        row, n, k = [], 0, 0
        while n < w:
            e = encoded[k % len(encoded)]
            take = min(len(e["ids"]), w - n)
            row.append({"ids": e["ids"][-take:], "targets": e["targets"][-take:]})
            n, k = n + take, k + 1
        return row

    def step(w: int) -> float:
        batches = [
            {
                k: v.to(accelerator.device) if torch.is_tensor(v) else v
                for k, v in collate(packed_row(w), packing=True).items()
            }
            for _ in range(rows)
        ]
        t0 = time.perf_counter()
        with accelerator.autocast():
            for batch in batches:
                loss_model(**batch).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    start = time.perf_counter()
    # Warm up (allocations, kernel choice) on a short row, then time one more: on a slow or busy
    # CPU that time picks a row short enough for the timed steps to fit the budget.
    short = min(width, 32)
    step(short)
    small = step(short)
    if device == "cpu":
        fit = PROBE["budget_s"] / PROBE["steps"] / small * short
        width = max(short, min(width, int(fit) // 16 * 16))
    times = [small] if width == short else []
    while len(times) < PROBE["steps"] and (not times or time.perf_counter() - start < PROBE["budget_s"]):
        times.append(step(width))
    step_s = sorted(times)[len(times) // 2]
    tokens_per_s = rows * width / step_s
    if device == "cpu" and short < width < max_len and step_s > small:
        # A CPU step costs a fixed part (optimizer, Python) plus a part per token: fit both from the
        # two row lengths, and quote the rate for rows as long as training packs them (max_len).
        per_token = (step_s - small) / (width - short)
        tokens_per_s = max_len / (small - per_token * short + per_token * max_len)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return {
        "device": name,
        "tokens_per_step": rows * width,
        "steps": len(times),
        "step_s": round(step_s, 4),
        "row": max_len,
        "tokens_per_s": round(tokens_per_s, 1),
    }


def cli_check(args) -> int:
    """tunesmith check DATA [HELDOUT] [--model M] [--max-len L] [--json]"""
    from tunesmith.config import DataConfig, load_config
    from tunesmith.data.check import format_report, run_check

    data = list(args.data)
    model, max_len, too_long, fmt = args.model, args.max_len, args.too_long, args.format
    if len(data) == 1 and data[0].endswith((".yaml", ".yml")):
        cfg = load_config(data[0])
        if not cfg.data.train:
            raise UserError(f"{data[0]}: data.train is not set. fix: point it at a dataset file.")
        data = [cfg.data.train] + ([cfg.data.heldout] if cfg.data.heldout else [])
        model, max_len = model or cfg.model.name, max_len or cfg.data.max_len
        too_long, fmt = too_long or cfg.data.too_long, fmt or cfg.data.format
    if len(data) > 2:
        raise UserError("check takes one training file and at most one held-out file.")
    heldout = args.heldout or (data[1] if len(data) == 2 else None)
    defaults = DataConfig()
    report = run_check(
        data[0],
        heldout,
        model,
        max_len or defaults.max_len,
        too_long or defaults.too_long,
        fmt or defaults.format,
        None if args.no_probe else probe,
        args.method,
        args.gpu_price,
    )
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0 if report["ok"] else 1
