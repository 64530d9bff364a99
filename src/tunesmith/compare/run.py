"""Run every arm on the held-out examples and write the verdict.

    tunesmith compare config.yaml                 # trains first (tunesmith.train), then compares
    tunesmith compare config.yaml --run runs/run  # reuses a trained run
    tunesmith compare config.yaml compare.arms=zero-shot,rag compare.max_examples=40

    from tunesmith.compare.run import compare
    report_dir = compare(cfg, run="runs/run")     # report.html, report.md, results.json, samples.jsonl

Steps, top to bottom: load the data → pick the held-out examples to score → build each arm's
prompts → generate with the base model, then with the fine-tuned one (one model in memory at a
time) → score every output → bootstrap the differences → apply the decision rule → cost → report.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from pathlib import Path

from tunesmith import UserError, cpu
from tunesmith.compare import arms as A
from tunesmith.compare import metrics as M
from tunesmith.compare import stats as S
from tunesmith.config import Config, load_config, to_dict
from tunesmith.data.split import filter_tasks, has_reply, load_split, select_examples, task_of


def cli_compare(args) -> int:
    cfg = load_config(args.config, args.overrides)
    out = compare(cfg, run=args.run)
    print(f"\nreport: {out / 'report.html'}  (also report.md, results.json, samples.jsonl)")
    return 0


def compare(cfg: Config, run: str | Path | None = None, log=None) -> Path:
    """Score every arm of cfg.compare.arms on the held-out split and write the report; returns
    the report directory. Without `run`, trains one first when a fine-tuned arm is asked for."""
    log = log or _say
    c = cfg.compare
    t_start = time.time()
    names = arm_names(c.arms)
    for key in ("max_new_tokens", "batch_size"):  # before any training: a bad value must not cost a run
        if getattr(cfg.generate, key) < 1:
            raise UserError(f"generate.{key} must be at least 1, got {getattr(cfg.generate, key)}. "
                            f"fix: set generate.{key} in the config or on the command line.")
    from tunesmith.vllm_engine import choose

    choose(cfg.generate.engine)
    train_examples, heldout, _ = load_split(cfg, need_train=False)
    train_examples, heldout = [ex for ex in train_examples if has_reply(ex)], [ex for ex in heldout if has_reply(ex)]
    scored = filter_tasks(heldout, c.tasks)
    examples = select_examples(scored, c.max_examples, cfg.data.seed)
    if not examples:
        raise UserError("no held-out examples with an assistant reply to score. fix: set data.heldout to a non-empty chat JSONL file.")
    log(f"compare: {len(examples)} of {len(heldout)} held-out examples"
        + (f" (tasks {c.tasks})" if c.tasks else "") + f", arms: {', '.join(names)}")

    skipped: dict[str, str] = {}
    tuned_wanted = [n for n in names if n in A.TUNED]
    if tuned_wanted and run is None and not cfg.data.train:
        for n in tuned_wanted:
            skipped[n] = "no run and no training data to make one. fix: pass --run RUN, or set data.train."
    elif tuned_wanted and run is None:
        log("compare: no --run given, so training one first (tunesmith.train)")
        from tunesmith.train import train

        run = train(cfg)
    run = Path(run) if run else None
    if tuned_wanted and run is not None and not _has_model(run):
        for n in tuned_wanted:
            skipped[n] = f"{run} holds no final model (RUN/final). fix: finish the training run, or pass another --run."
    out_dir = Path(c.output_dir) if c.output_dir else (run / "compare" if run else Path("runs/compare"))
    out_dir.mkdir(parents=True, exist_ok=True)

    base_spec = _base_model(cfg, run, log)
    glossary = M.load_glossary(cfg.data.glossary) if cfg.data.glossary else []
    templates = M.load_templates(cfg.data.style or None, _templates_dir(cfg))
    ctx = A.Context(train=train_examples, glossary=glossary, k_shots=c.k_shots, rag_k=c.rag_k, seed=cfg.data.seed,
                    style=Path(cfg.data.style).read_text(encoding="utf-8-sig") if cfg.data.style else "")
    if cfg.data.corpus:
        from tunesmith.compare.retrieval import read_corpus

        ctx.passages = read_corpus(cfg.data.corpus, c.passage_words)

    # ---- generate: every base arm with the base model, then the fine-tuned arms with the tuned one
    outputs: dict[str, list] = {}  # arm -> [Completion] aligned with examples
    groups = [(base_spec, [n for n in names if n not in A.TUNED]),
              (str(run) if run else None, [n for n in tuned_wanted if n not in skipped])]
    for position, (spec, group) in enumerate(groups):
        if not group:
            continue
        outputs.update(run_arms(cfg, spec, group, examples, ctx, skipped, log, tuned=position == 1,
                                done=len(outputs) + len(skipped), total=len(names)))

    # ---- score, compare, cost
    results = summarise(cfg, examples, outputs, skipped, names, glossary, templates, run)
    if c.learning_curve and run is not None and "fine-tuned" in outputs:
        results["learning_curve"] = learning_curve(cfg, train_examples, heldout, examples, results, out_dir, log,
                                                   glossary, templates)
    results["heldout_total"] = len(heldout)
    results["tasks_scored"] = {t: sum(task_of(ex) == t for ex in examples) for t in sorted({task_of(ex) for ex in examples})}
    results["seconds"] = round(time.time() - t_start, 1)

    from tunesmith.compare.report import print_summary, write_report

    write_report(out_dir, results, _samples(examples, outputs, results), run)
    print_summary(results)
    return out_dir


# ---------------------------------------------------------------------------------------- data


def arm_names(spec: str) -> list[str]:
    if not spec or spec.strip() == "all":
        return list(A.ARMS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in A.ARMS]
    if unknown:
        raise UserError(f"compare.arms: unknown arm(s) {', '.join(unknown)}. fix: 'all' or a comma-separated list of {', '.join(A.ARMS)}.")
    return names


def _has_model(run: Path) -> bool:
    final = run / "final" if (run / "final").is_dir() else run
    return (final / "adapter_config.json").exists() or (final / "config.json").exists()


def _base_model(cfg: Config, run: Path | None, log) -> str:
    """The base model for the prompt-only arms: the run's own base when there is a run, so every
    arm starts from the same weights."""
    spec = cfg.model.name
    if run is not None and (run / "config.yaml").exists():
        try:
            run_spec = load_config(run / "config.yaml").model.name
        except UserError:
            return spec
        if run_spec and run_spec != spec:
            log(f"compare: using the run's base model {run_spec} (config says {spec}) so all arms share weights")
            return run_spec
    return spec


def _templates_dir(cfg: Config) -> Path | None:
    """A templates/ folder next to the style guide, when there is one."""
    if not cfg.data.style:
        return None
    folder = Path(cfg.data.style).parent / "templates"
    return folder if folder.is_dir() else None


# ----------------------------------------------------------------------------------- generation


def run_arms(cfg: Config, spec: str, group: list[str], examples: list[dict], ctx: A.Context, skipped: dict,
             log, tuned: bool, done: int, total: int) -> dict[str, list]:
    """Generate every example's reply for each arm in `group` with one model. Arms that cannot run
    land in `skipped` with their reason."""
    from tunesmith.generate import encode_prompts, generate
    from tunesmith.models import load

    from tunesmith import vllm_engine

    g = cfg.generate
    cpu.use_heap()  # prefill caches and prefix copies are short-lived: serve them from the heap
    t0 = time.time()
    if vllm_engine.choose(g.engine) == "vllm":
        model, tok = vllm_engine.load(spec, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    else:
        model, tok = load(spec, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code,
                          merge_adapter=tuned)
    log(f"compare: loaded {'fine-tuned model ' if tuned else 'base model '}{spec} ({time.time() - t0:.0f} s)")
    budget = cfg.compare.max_prompt_tokens
    ctx.fits = lambda messages: len(encode_prompts(tok, [messages])[0]) <= budget
    built: dict[str, list] = {}
    for name in group:
        done += 1
        try:
            built[name] = [A.ARMS[name](ex, ctx) for ex in examples]
        except A.Skipped as exc:
            skipped[name] = str(exc)
            log(f"[{done}/{total}] {name}: skipped — {exc}")
    if not built:
        del model
        return {}
    # every arm of this model goes through the engine together, so no arm waits for another's
    # slowest reply; a prefix prompts share (the engineered arm's style guide, a few-shot block) is
    # prefilled once. Latency is per reply, from its prefill to its last token.
    convs = [c for cs in built.values() for c in cs]
    tick = _Ticker(f"[{done}/{total}] {', '.join(built)}", len(convs))
    replies = generate(model, tok, convs, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                       batch_size=g.batch_size, seed=cfg.data.seed, progress=tick, reuse_prefix=True,
                       stop_on_repeat=g.stop_on_repeat)
    tick.close()
    out, at = {}, 0
    for name, cs in built.items():
        out[name], at = replies[at:at + len(cs)], at + len(cs)
    del model
    return out


class _Ticker:
    """One progress line per arm: examples done, elapsed time, and an ETA."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.n, self.t0 = label, total, 0, time.time()
        self.tty = sys.stdout.isatty()
        self._show()

    def __call__(self, n: int):
        self.n += n
        self._show()

    def _show(self):
        dt = time.time() - self.t0
        eta = f", ~{dt / self.n * (self.total - self.n):.0f} s left" if 0 < self.n < self.total else ""
        line = f"{self.label}: {self.n}/{self.total} examples, {dt:.0f} s{eta}"
        print(("\r" + line.ljust(78)) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def close(self):
        if self.tty:
            print(flush=True)


# -------------------------------------------------------------------------------------- results


def summarise(cfg: Config, examples: list[dict], outputs: dict, skipped: dict, names: list[str],
              glossary: list, templates: dict, run: Path | None) -> dict:
    """Everything the report shows, as plain data (this is results.json)."""
    import numpy as np

    c = cfg.compare
    if c.primary_metric not in M.METRICS or M.METRICS[c.primary_metric][1] is not True:
        usable = [k for k, v in M.METRICS.items() if v[1] is True]
        raise UserError(f"compare.primary_metric '{c.primary_metric}' cannot decide (higher must be better). fix: one of {', '.join(usable)}.")
    refs = [A.reference_of(ex) for ex in examples]
    scores: dict[str, list[dict]] = {
        name: [M.score(o.text, ref, task_of(ex), glossary, templates) for o, ref, ex in zip(outs, refs, examples)]
        for name, outs in outputs.items()
    }
    training = _training(run, c)
    arms = {}
    for name in names:
        if name not in outputs:
            arms[name] = {"status": "skipped", "reason": skipped.get(name, "not run"), "tuned": name in A.TUNED}
            continue
        outs = outputs[name]
        lat = np.array([o.latency_s for o in outs])
        prompt_tokens = float(np.mean([o.prompt_tokens for o in outs]))
        completion_tokens = float(np.mean([o.completion_tokens for o in outs]))
        per_request = (prompt_tokens + completion_tokens) / 1000 * c.price_per_1k_tokens
        metrics = {}
        for key in M.METRICS:
            vals = [s[key] for s in scores[name] if s[key] is not None]
            mean, lo, hi = S.bootstrap_mean(vals, c.bootstrap, cfg.data.seed) if vals else (math.nan,) * 3
            metrics[key] = {"mean": mean, "lo": lo, "hi": hi, "n": len(vals)}
        arms[name] = {
            "status": "ok", "tuned": name in A.TUNED, "metrics": metrics,
            "cost": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "latency_p50_s": float(np.percentile(lat, 50)), "latency_p95_s": float(np.percentile(lat, 95)),
                     "cost_per_1k_requests": per_request * 1000, "cost_per_month": per_request * c.requests_per_month,
                     "cut_at_limit": sum(o.finish_reason == "length" for o in outs) / len(outs),
                     "stopped_looping": sum(o.finish_reason == "repeat" for o in outs) / len(outs)},
        }
    ran = [n for n in names if n in outputs]
    primary = {n: {str(i): s[c.primary_metric] for i, s in enumerate(scores[n])} for n in ran}
    verdict = S.decide({n: {"scores": primary[n], "tuned": n in A.TUNED,
                            "cost": arms[n]["cost"]["prompt_tokens"] + arms[n]["cost"]["completion_tokens"]} for n in ran},
                       c.primary_metric, c.margin, c.bootstrap, cfg.data.seed, M.METRICS[c.primary_metric][0])
    ref = verdict["reference"]
    for n in ran:  # every metric's paired difference from the best cheaper arm
        arms[n]["diff"] = {}
        if ref is None:
            continue
        for key in M.METRICS:
            a = {str(i): s[key] for i, s in enumerate(scores[n])}
            b = {str(i): s[key] for i, s in enumerate(scores[ref])}
            arms[n]["diff"][key] = list(S.paired_bootstrap(*S.paired(a, b), c.bootstrap, cfg.data.seed))
    # break-even is about the plain fine-tuned arm's short prompts; its +rag twin pays for passages
    break_even = _break_even(arms, "fine-tuned" if "fine-tuned" in outputs else verdict.get("best_tuned"), training, c)
    verdict["paragraph"] += _cost_sentence(verdict, arms, training, break_even, c)
    return {
        "examples": len(examples), "primary_metric": c.primary_metric, "margin": c.margin,
        "base_model": _base_model(cfg, run, lambda *_: None), "run": str(run) if run else None,
        "arms": arms, "verdict": verdict, "training": training, "break_even": break_even,
        "assumptions": {
            "price_per_1k_tokens": c.price_per_1k_tokens, "train_cost_per_hour": c.train_cost_per_hour,
            "requests_per_month": c.requests_per_month, "generation_batch_size": cfg.generate.batch_size,
            "max_new_tokens": cfg.generate.max_new_tokens, "temperature": cfg.generate.temperature,
            "stop_on_repeat": cfg.generate.stop_on_repeat,
            "k_shots": c.k_shots, "rag_k": c.rag_k, "max_prompt_tokens": c.max_prompt_tokens,
            "bootstrap_resamples": c.bootstrap,
        },
        "templates": templates, "glossary_terms": len(glossary),
        "config": to_dict(cfg), "_scores": scores,
    }


def _training(run: Path | None, c) -> dict | None:
    if run is None or not (run / "summary.json").exists():
        return None
    summary = json.loads((run / "summary.json").read_text())
    seconds = float(summary.get("train_seconds") or 0.0)
    return {**summary, "train_cost": seconds / 3600 * c.train_cost_per_hour}


def _break_even(arms: dict, tuned: str | None, training: dict | None, c) -> list[dict]:
    """How many requests the fine-tuned arm's shorter prompts need to pay back training, against
    each arm that needs no training."""
    if training is None or tuned is None:
        return []
    mine = arms[tuned]["cost"]["prompt_tokens"] + arms[tuned]["cost"]["completion_tokens"]
    rows = []
    for name, arm in arms.items():
        if arm["status"] != "ok" or arm["tuned"]:
            continue
        saved = arm["cost"]["prompt_tokens"] + arm["cost"]["completion_tokens"] - mine  # tokens per request
        per_request = saved / 1000 * c.price_per_1k_tokens
        requests = training["train_cost"] / per_request if per_request > 0 else None
        rows.append({"tuned": tuned, "against": name, "tokens_saved_per_request": saved, "requests": requests,
                     "months": requests / c.requests_per_month if requests is not None and c.requests_per_month else None})
    return rows


def _cost_sentence(verdict: dict, arms: dict, training: dict | None, break_even: list, c) -> str:
    if training is None or verdict.get("best_tuned") is None:
        return ""
    minutes = training.get("train_seconds", 0) / 60
    text = f" Training took {minutes:.1f} minutes (${training['train_cost']:.2f} at ${c.train_cost_per_hour:g}/hour)"
    row = next((r for r in break_even if r["against"] == verdict["recommend"]), None) or \
        next((r for r in break_even if r["against"] == verdict["reference"]), None)
    if row and verdict["diffs"][row["tuned"]][0] <= -c.margin:
        return text + "."  # serving savings of an arm that scores clearly worse are beside the point
    if row and row["requests"] is not None:
        text += (f"; {row['tuned']}'s shorter prompts save {row['tokens_saved_per_request']:.0f} tokens per request against "
                 f"{row['against']}, which repays training after {row['requests']:,.0f} requests "
                 f"(at ${c.price_per_1k_tokens:g} per 1,000 tokens)")
    elif row:
        text += (f"; {row['tuned']} does not use fewer tokens per request than {row['against']}, so serving "
                 f"savings never pay the training back")
    return text + "."


def _samples(examples: list[dict], outputs: dict, results: dict) -> list[dict]:
    scores = results.pop("_scores")
    rows = []
    for i, ex in enumerate(examples):
        rows.append({
            "index": i, "meta": ex.get("meta") or {}, "prompt": A.prompt_of(ex), "reference": A.reference_of(ex),
            "outputs": {name: {"text": outs[i].text, "prompt_tokens": outs[i].prompt_tokens,
                               "completion_tokens": outs[i].completion_tokens, "latency_s": round(outs[i].latency_s, 3),
                               "finish_reason": outs[i].finish_reason, "metrics": scores[name][i]}
                        for name, outs in outputs.items()},
        })
    return rows


# ------------------------------------------------------------------------------- learning curve


def learning_curve(cfg: Config, train_examples: list[dict], heldout: list[dict], examples: list[dict],
                   results: dict, out_dir: Path, log, glossary: list, templates: dict) -> list[dict]:
    """Train on 25 % and 50 % of the training examples (same settings, same held-out split) and
    score the fine-tuned arm on the same examples: does the primary score still rise at 100 %?"""
    from tunesmith.data.formats import write_jsonl
    from tunesmith.generate import generate
    from tunesmith.models import load
    from tunesmith.train import train

    key = cfg.compare.primary_metric
    folder = out_dir / "learning-curve"
    folder.mkdir(parents=True, exist_ok=True)
    heldout_path = folder / "heldout.jsonl"
    write_jsonl(heldout_path, heldout)
    order = list(range(len(train_examples)))
    random.Random(cfg.data.seed).shuffle(order)
    points = []
    for fraction in (0.25, 0.5):
        subset = [train_examples[i] for i in sorted(order[:max(1, round(fraction * len(order)))])]
        sub_cfg = copy.deepcopy(cfg)
        sub_cfg.data.train = str(folder / f"train-{int(fraction * 100)}.jsonl")
        write_jsonl(sub_cfg.data.train, subset)
        sub_cfg.data.heldout = str(heldout_path)
        sub_cfg.train.output_dir = str(folder / f"run-{int(fraction * 100)}")
        log(f"learning curve: training on {len(subset)} examples ({fraction:.0%})")
        sub_run = train(sub_cfg)
        model, tok = load(str(sub_run), dtype=cfg.model.dtype, merge_adapter=True)
        tick = _Ticker(f"learning curve {fraction:.0%}", len(examples))
        outs = generate(model, tok, [A.prompt_of(ex) for ex in examples], max_new_tokens=cfg.generate.max_new_tokens,
                        temperature=cfg.generate.temperature, top_p=cfg.generate.top_p,
                        batch_size=cfg.generate.batch_size, seed=cfg.data.seed, progress=tick,
                        stop_on_repeat=cfg.generate.stop_on_repeat)
        tick.close()
        del model
        vals = [M.score(o.text, A.reference_of(ex), task_of(ex), glossary, templates)[key] for o, ex in zip(outs, examples)]
        vals = [v for v in vals if v is not None]
        points.append({"fraction": fraction, "examples": len(subset), key: sum(vals) / len(vals) if vals else None})
    full = results["arms"]["fine-tuned"]["metrics"][key]["mean"]
    points.append({"fraction": 1.0, "examples": len(train_examples), key: full})
    return points


def _say(*parts):
    print(*parts, flush=True)
