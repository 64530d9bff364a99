"""Run every arm on the held-out examples and write the verdict.

    tunesmith compare config.yaml                 # trains first (tunesmith.train), then compares
    tunesmith compare config.yaml --run runs/run  # reuses a trained run
    tunesmith compare config.yaml compare.arms=zero-shot,rag compare.max_examples=40

    from tunesmith.compare.run import compare
    report_dir = compare(cfg, run="runs/run")     # report.html, report.md, results.json, samples.jsonl

Steps, top to bottom: check the settings → load the data → pick the held-out examples to score →
(train) → build each arm's prompts, recording what went in → generate with the base model, then
with the fine-tuned one (one model in memory at a time), then compare.against_run's (against.py)
→ score every output → flag arms whose prompts equal another's → bootstrap the differences →
apply the decision rule (stats.decide: numbers) → separate the two levers (2x2) → cost → say it
all in words (compare/verdict.py) → the against-run sentence → the judge, if any → report.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from pathlib import Path

from tunesmith import UserError, cpu, rundir
from tunesmith.compare import against, stats
from tunesmith.compare import verdict as verdict_prose
from tunesmith.compare.arms import ARMS, TUNED, Context, Skipped, build_prompts, prompt_of, reference_of
from tunesmith.compare.metrics import METRICS, load_glossary, load_templates, points, score
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
    check_settings(cfg, names)  # before any training: a bad value must not cost a run
    train_examples, heldout, _ = load_split(cfg, need_train=False)
    train_examples, heldout = [ex for ex in train_examples if has_reply(ex)], [ex for ex in heldout if has_reply(ex)]
    scored = filter_tasks(heldout, c.tasks)
    examples = select_examples(scored, c.max_examples, cfg.data.seed)
    if not examples:
        raise UserError(
            "no held-out examples with an assistant reply to score. "
            "fix: set data.heldout to a non-empty chat JSONL file."
        )
    log(
        f"compare: {len(examples)} of {len(heldout)} held-out examples"
        + (f" (tasks {c.tasks})" if c.tasks else "")
        + f", arms: {', '.join(names)}"
    )

    # what the arms draw on, read before any training: a missing file must not cost a run
    glossary = load_glossary(cfg.data.glossary) if cfg.data.glossary else []
    templates = load_templates(cfg.data.style or None, _templates_dir(cfg))
    ctx = Context(
        train=train_examples,
        glossary=glossary,
        k_shots=c.k_shots,
        rag_k=c.rag_k,
        seed=cfg.data.seed,
        style=Path(cfg.data.style).read_text(encoding="utf-8-sig") if cfg.data.style else "",
        prompt=_read_prompt(cfg.data.prompt),
    )
    if cfg.data.corpus:
        from tunesmith.compare.retrieval import read_corpus

        ctx.passages = read_corpus(cfg.data.corpus, c.passage_words)

    skipped: dict[str, str] = {}
    tuned_wanted = [n for n in names if n in TUNED]
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
    out_dir = Path(c.output_dir) if c.output_dir else (run / rundir.COMPARE if run else Path("runs/compare"))
    out_dir.mkdir(parents=True, exist_ok=True)

    base_spec = _base_model(cfg, run, log)
    effects = None  # side effects of the fine-tune: instructions run in the arms' batches, then drift
    if c.side_effects and any(n not in skipped for n in tuned_wanted):
        from tunesmith.compare import side_effects

        effects = side_effects.prepare(cfg, base_spec)

    # ---- generate: every base arm with the base model, then the fine-tuned arms with the tuned one
    outputs: dict[str, list] = {}  # arm -> [Completion] aligned with examples
    t_generate = time.time()  # model loads included: what scoring more examples would take here
    groups = [
        (base_spec, [n for n in names if n not in TUNED]),
        (str(run) if run else None, [n for n in tuned_wanted if n not in skipped]),
    ]
    for position, (spec, group) in enumerate(groups):
        extra = side_effects.conversations(effects, tuned=position == 1) if effects else {}
        if not group and not extra:
            continue
        outputs.update(
            run_arms(
                cfg,
                spec,
                group,
                examples,
                ctx,
                skipped,
                log,
                tuned=position == 1,
                done=sum(name in outputs for name in names) + len(skipped),  # arms only, not side effects
                total=len(names),
                extra=extra,
            )
        )
    extras = {k: outputs.pop(k) for k in list(outputs) if k.startswith("side-effects:")}
    other = against.arm_name(c.against_run) if c.against_run else None
    if other:  # a second fine-tuned run answers the fine-tuned arm's prompts, as an arm of its own
        outs = run_arms(
            cfg,
            c.against_run,
            ["fine-tuned"],
            examples,
            ctx,
            {},
            log,
            tuned=True,
            done=len(names),
            total=len(names) + 1,
        )
        outputs[other] = outs["fine-tuned"]

    replies = sum(len(outs) for outs in [*outputs.values(), *extras.values()])
    seconds_per_reply = (time.time() - t_generate) / replies if replies else None

    # ---- score, compare, cost
    scores = score_all(examples, outputs, glossary, templates)
    results = summarise(
        cfg,
        examples,
        outputs,
        skipped,
        names,
        glossary,
        templates,
        run,
        ctx.prompt_stats,
        scores=scores,
        heldout_total=len(heldout),
        scorable=len(scored),
        seconds_per_reply=seconds_per_reply,
    )
    if other:
        results["arms"][other] = arm_entry(cfg, outputs[other], scores[other], True, ctx.prompt_stats.get("fine-tuned"))
        against.add(results, other, c.against_run, scores, c.bootstrap, cfg.data.seed)
    if effects:
        results["side_effects"] = side_effects.section(cfg, effects, run, extras, log)
        if "instructions" in _split(c.decide_on):
            side_effects.decide(results["verdict"], results["side_effects"])
        results["verdict"]["paragraph"] += side_effects.recommendation_clause(results["side_effects"])
    if cfg.judge.url:
        results["judge"] = run_judge(cfg, examples, outputs, results, ctx, templates, log)
    if c.learning_curve and run is not None and "fine-tuned" in outputs:
        results["learning_curve"] = learning_curve(
            cfg, train_examples, heldout, examples, results, out_dir, log, glossary, templates
        )
    results["seconds"] = round(time.time() - t_start, 1)

    from tunesmith.compare.report import print_summary, write_report

    write_report(out_dir, results, _samples(examples, outputs, scores), run)
    print_summary(results)
    return out_dir


# ---------------------------------------------------------------------------------------- data


def check_settings(cfg: Config, names: list[str]) -> None:
    """Every setting compare reads after training, checked before it: a typo must not cost a run."""
    from tunesmith.compare import judge

    for key in ("max_new_tokens", "batch_size"):
        if getattr(cfg.generate, key) < 1:
            raise UserError(
                f"generate.{key} must be at least 1, got {getattr(cfg.generate, key)}. "
                f"fix: set generate.{key} in the config or on the command line."
            )
    c = cfg.compare
    decidable = [k for k, m in METRICS.items() if m.higher_is_better is True]
    task_metrics = [v for v in _split(c.decide_on) if v != "instructions"]  # instructions: the side effects' veto
    if "instructions" in _split(c.decide_on) and not c.side_effects:
        raise UserError(
            "compare.decide_on names instructions but compare.side_effects=false, so they are never measured. "
            "fix: set compare.side_effects=true, or drop instructions from compare.decide_on."
        )
    for key, value in [("primary_metric", c.primary_metric)] + [("decide_on", v) for v in task_metrics]:
        if value not in decidable and not (key == "primary_metric" and value == "auto"):
            why = "cannot decide (higher must be better)" if value in METRICS else "is not a metric"
            raise UserError(
                f"compare.{key}: '{value}' {why}. fix: "
                + ("auto or " if key == "primary_metric" else "")
                + f"one of {', '.join(decidable)}."
            )
    for key in _margins(c.margins):
        if key not in decidable:
            raise UserError(
                f"compare.margins: '{key}' is not a metric that can decide. fix: one of {', '.join(decidable)}."
            )
    if cfg.data.prompt:
        _read_prompt(cfg.data.prompt)
    if c.side_effects and c.side_effects_file:
        from tunesmith.compare.instructions import load_instructions

        load_instructions(c.side_effects_file)
    judge.check(cfg.judge, names)
    if c.against_run:
        against.check(c.against_run, names)
    from tunesmith.generation import vllm as vllm_engine

    vllm_engine.choose(cfg.generate.engine)  # generate.engine=vllm without CUDA or vllm: say so now


def _split(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def _read_prompt(path: str) -> str:
    if not path:
        return ""
    if not Path(path).is_file():
        raise UserError(
            f"{path}: data.prompt file not found. fix: point data.prompt at a text file holding your system prompt."
        )
    text = Path(path).read_text(encoding="utf-8-sig")
    if not text.strip():
        raise UserError(f"{path}: data.prompt is empty. fix: write your system prompt in it, or unset data.prompt.")
    return text


def arm_names(spec: str) -> list[str]:
    if not spec or spec.strip() == "all":
        return list(ARMS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise UserError(
            f"compare.arms: unknown arm(s) {', '.join(unknown)}. "
            f"fix: 'all' or a comma-separated list of {', '.join(ARMS)}."
        )
    return names


def _has_model(run: Path) -> bool:
    final = run / rundir.FINAL if (run / rundir.FINAL).is_dir() else run
    return (final / "adapter_config.json").exists() or (final / "config.json").exists()


def _base_model(cfg: Config, run: Path | None, log) -> str:
    """The base model for the prompt-only arms: the run's own base when there is a run, so every
    arm starts from the same weights."""
    spec = cfg.model.name
    if run is not None and (run / rundir.CONFIG).exists():
        try:
            run_spec = load_config(run / rundir.CONFIG).model.name
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


def load_model(cfg: Config, spec: str, tuned: bool):
    """The one way compare loads a model (the arms and the learning curve alike): on vLLM where
    generate.engine chooses it, else with transformers for tunesmith's engine."""
    from tunesmith.generation import vllm as vllm_engine
    from tunesmith.models import load

    if vllm_engine.choose(cfg.generate.engine) == "vllm":
        return vllm_engine.load(spec, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    pinned = {"revision": cfg.model.revision, "gguf_file": cfg.model.gguf_file} if spec == cfg.model.name else {}
    return load(
        spec, dtype=cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code, merge_adapter=tuned, **pinned
    )


def run_arms(
    cfg: Config,
    spec: str,
    group: list[str],
    examples: list[dict],
    ctx: Context,
    skipped: dict,
    log,
    tuned: bool,
    done: int,
    total: int,
    extra: dict[str, list] | None = None,
) -> dict[str, list]:
    """Generate every example's reply for each arm in `group` with one model. Arms that cannot run
    land in `skipped` with their reason. `extra` ({name: conversations}) goes through the same
    batches and its replies come back under its names (the side effects' instructions)."""
    from tunesmith.generation.api import encode_prompts, generate

    g = cfg.generate
    cpu.use_heap()  # prefill caches and prefix copies are short-lived: serve them from the heap
    t0 = time.time()
    model, tok = load_model(cfg, spec, tuned)
    log(f"compare: loaded {'fine-tuned model ' if tuned else 'base model '}{spec} ({time.time() - t0:.0f} s)")
    budget = cfg.compare.max_prompt_tokens
    ctx.fits = lambda messages: len(encode_prompts(tok, [messages])[0]) <= budget
    built: dict[str, list] = {}
    for name in group:
        done += 1
        try:
            built[name] = build_prompts(name, examples, ctx)
        except Skipped as exc:
            skipped[name] = str(exc)
            log(f"[{done}/{total}] {name}: skipped — {exc}")
    extra = extra or {}
    if not built and not extra:
        del model
        return {}
    # every arm of this model goes through the engine together, so no arm waits for another's
    # slowest reply; a prefix prompts share (the engineered arm's style guide, a few-shot block) is
    # prefilled once. Latency is per reply, from its prefill to its last token.
    convs = [c for cs in [*built.values(), *extra.values()] for c in cs]
    tick = _Ticker(f"[{done}/{total}] {', '.join([*built, *(['side effects'] if extra else [])])}", len(convs))
    replies = generate(
        model,
        tok,
        convs,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        batch_size=g.batch_size,
        seed=cfg.data.seed,
        progress=tick,
        reuse_prefix=True,
        stop_on_repeat=g.stop_on_repeat,
    )
    tick.close()
    out, at = {}, 0
    for name, cs in [*built.items(), *extra.items()]:
        out[name], at = replies[at : at + len(cs)], at + len(cs)
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


def score_all(examples: list[dict], outputs: dict, glossary: list, templates: dict) -> dict[str, list[dict]]:
    """{arm: [every metric's score for each example]} aligned with `examples`."""
    refs = [reference_of(ex) for ex in examples]
    return {
        name: [
            score(o.text, ref, task_of(ex), glossary, templates, answer=(ex.get("meta") or {}).get("answer"))
            for o, ref, ex in zip(outs, refs, examples)
        ]
        for name, outs in outputs.items()
    }


def summarise(
    cfg: Config,
    examples: list[dict],
    outputs: dict,
    skipped: dict,
    names: list[str],
    glossary: list,
    templates: dict,
    run: Path | None,
    prompt_stats: dict | None = None,
    scores: dict | None = None,
    heldout_total: int | None = None,
    scorable: int | None = None,
    seconds_per_reply: float | None = None,
) -> dict:
    """Everything the report shows, as plain data (this is results.json). Needs no model: `outputs`
    is {arm: [generate.Completion]} aligned with `examples`; `prompt_stats` is what
    arms.build_prompts recorded; `scores` what score_all gives (computed here when not given);
    `scorable` the held-out examples of the scored tasks (compare.tasks), and `seconds_per_reply` the
    measured generation time per reply: what scoring more examples would give and take."""
    c = cfg.compare
    prompt_stats = prompt_stats or {}
    primary, fits = primary_metric(c.primary_metric, examples)
    scores = scores if scores is not None else score_all(examples, outputs, glossary, templates)
    training = _training(run, c)
    arms = {}
    for name in names:
        if name not in outputs:
            arms[name] = {"status": "skipped", "reason": skipped.get(name, "not run"), "tuned": name in TUNED}
            continue
        arms[name] = arm_entry(cfg, outputs[name], scores[name], name in TUNED, prompt_stats.get(name))
    ran = [n for n in names if n in outputs]
    for n, (twin, why_same) in same_prompts(ran, prompt_stats, c.max_prompt_tokens).items():
        arms[n]["same_as"], arms[n]["same_why"] = twin, why_same
    evidence = [n for n in ran if "same_as" not in arms[n]]  # an arm equal to another is not separate evidence
    deciding, decide_why = decision_metrics(c.decide_on, primary, glossary, templates, scores)
    margins = {k: margin_of(c, k) for k in deciding}

    def in_points(n: str, key: str) -> dict:
        return {str(i): None if s[key] is None else points(key, s[key]) for i, s in enumerate(scores[n])}

    verdict = stats.decide(
        {
            n: {
                "tuned": n in TUNED,
                "cost": arms[n]["cost"]["prompt_tokens"] + arms[n]["cost"]["completion_tokens"],
                "scores": {k: in_points(n, k) for k in deciding},
            }
            for n in evidence
        },
        deciding,
        margins,
        c.bootstrap,
        cfg.data.seed,
    )
    ref = verdict["reference"]
    for n in ran:  # every metric's paired difference from the best cheaper arm
        arms[n]["diff"] = {}
        if ref is None:
            continue
        for key in METRICS:
            a = {str(i): s[key] for i, s in enumerate(scores[n])}
            b = {str(i): s[key] for i, s in enumerate(scores[ref])}
            arms[n]["diff"][key] = list(stats.paired_bootstrap(*stats.paired(a, b), c.bootstrap, cfg.data.seed))
    levers = None
    if all(n in outputs for n in stats.LEVER_ARMS):
        levers = _levers(arms, scores, primary, deciding, c, cfg.data.seed)
    results = {
        "examples": len(examples),
        "heldout_total": heldout_total if heldout_total is not None else len(examples),
        "scorable": scorable or heldout_total or len(examples),
        "tasks_scored": {t: sum(task_of(ex) == t for ex in examples) for t in sorted({task_of(ex) for ex in examples})},
        "task_fit": {t: sorted(kinds) for t, kinds in fits.items()},
        "primary_metric": primary,
        "primary_why": verdict_prose.primary_why(c.primary_metric, primary, fits, len(examples)),
        "decide_on": deciding,
        "decide_why": decide_why,
        "margin": c.margin,
        "margins": margins,
        "seconds_per_reply": seconds_per_reply,
        "base_model": _base_model(cfg, run, lambda *_: None),
        "run": str(run) if run else None,
        "arms": arms,
        "verdict": verdict,
        "levers": levers,
        "training": training,
        "break_even": [row for n in ran if n in TUNED for row in _break_even(arms, n, training, c)],
        "assumptions": {
            "price_per_1k_tokens": c.price_per_1k_tokens,
            "train_cost_per_hour": c.train_cost_per_hour,
            "requests_per_month": c.requests_per_month,
            "generation_batch_size": cfg.generate.batch_size,
            "max_new_tokens": cfg.generate.max_new_tokens,
            "temperature": cfg.generate.temperature,
            "stop_on_repeat": cfg.generate.stop_on_repeat,
            "k_shots": c.k_shots,
            "rag_k": c.rag_k,
            "max_prompt_tokens": c.max_prompt_tokens,
            "passage_words": c.passage_words,
            "bootstrap_resamples": c.bootstrap,
        },
        "templates": templates,
        "glossary_terms": len(glossary),
        "config": to_dict(cfg),
    }
    verdict_prose.write(results)
    return results


def arm_entry(cfg: Config, outs: list, scores: list[dict], tuned: bool, prompts: dict | None) -> dict:
    """One arm's entry in results.json: every metric's mean with its interval, and its cost."""
    import numpy as np

    c = cfg.compare
    lat = np.array([o.latency_s for o in outs])
    prompt_tokens = float(np.mean([o.prompt_tokens for o in outs]))
    completion_tokens = float(np.mean([o.completion_tokens for o in outs]))
    per_request = (prompt_tokens + completion_tokens) / 1000 * c.price_per_1k_tokens
    metrics = {}
    for key in METRICS:
        vals = [s[key] for s in scores if s[key] is not None]
        mean, lo, hi = stats.bootstrap_mean(vals, c.bootstrap, cfg.data.seed) if vals else (math.nan,) * 3
        metrics[key] = {"mean": mean, "lo": lo, "hi": hi, "n": len(vals)}
    return {
        "status": "ok",
        "tuned": tuned,
        "metrics": metrics,
        "prompts": prompts,
        "cost": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "cost_per_1k_requests": per_request * 1000,
            "cost_per_month": per_request * c.requests_per_month,
            "cut_at_limit": sum(o.finish_reason == "length" for o in outs) / len(outs),
            "stopped_looping": sum(o.finish_reason == "repeat" for o in outs) / len(outs),
        },
    }


def primary_metric(setting: str, examples: list[dict]) -> tuple[str, dict]:
    """(metric, fits) — the setting, or for `auto` the metric that fits the scored examples: answer
    accuracy when every one gives key facts (meta.answer), token F1 when every reference is a short
    answer, chrF (long text) otherwise. fits: {task or "": {metric: examples}}, what each task's
    examples alone would get (compare.verdict says why in words)."""
    from tunesmith.compare.metrics import answer_facts, is_short

    fits: dict[str, dict[str, int]] = {}
    for ex in examples:
        has = bool(answer_facts((ex.get("meta") or {}).get("answer")))
        kind = "answer" if has else "token_f1" if is_short(reference_of(ex)) else "chrf"
        per_task = fits.setdefault(task_of(ex) or "", {})
        per_task[kind] = per_task.get(kind, 0) + 1
    if setting != "auto":
        return setting, fits
    kinds = {k for per_task in fits.values() for k in per_task}
    if kinds == {"answer"}:
        return "answer", fits
    if kinds <= {"answer", "token_f1"} and "token_f1" in kinds:
        return "token_f1", fits
    return "chrf", fits


def decision_metrics(
    spec: str, primary: str, glossary: list, templates: dict, scores: dict
) -> tuple[list[str], dict[str, str]]:
    """(metrics, {metric: why}): compare.decide_on when set; else the task-fit metric, plus glossary
    adherence when the team gave a glossary and template conformance when it gave templates — each
    only where it applies to some scored example."""
    named = [k for k in _split(spec) if k != "instructions"]  # instructions: the side effects' veto, not a metric
    if named:
        return named, {k: "decide_on" for k in named}
    applies = lambda key: any(s[key] is not None for rows in scores.values() for s in rows)  # noqa: E731
    keys, why = [primary], {primary: "task-fit"}
    for key, given, source in (("glossary", glossary, "glossary"), ("template", templates, "templates")):
        if given and key != primary and applies(key):
            keys.append(key)
            why[key] = source
    return keys, why


def margin_of(c, key: str) -> float:
    """The margin for one metric, in its own points: compare.margins' entry, else compare.margin."""
    return _margins(c.margins).get(key, c.margin)


def _margins(spec: str) -> dict[str, float]:
    out = {}
    for part in _split(spec):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise UserError(
                f"compare.margins: '{part}' is not metric=number. fix: e.g. compare.margins=glossary=5,template=5."
            ) from None
    return out


def same_prompts(ran: list[str], prompt_stats: dict, budget: int) -> dict[str, tuple[str, str]]:
    """{arm: (the earlier arm it equals, why)}: same weights and the same prompt for every example
    is one arm under two names, whatever it was meant to add."""
    out = {}
    for i, n in enumerate(ran):
        mine = prompt_stats.get(n)
        if not mine:
            continue
        for m in ran[:i]:
            theirs = prompt_stats.get(m)
            if m in out or not theirs or (n in TUNED) != (m in TUNED) or mine["fingerprint"] != theirs["fingerprint"]:
                continue
            if mine["adds"] and mine["mean_added"] == 0:
                cause = (
                    f"none of the {mine['adds']} found fit the {budget}-token prompt budget"
                    if mine["none_fit"]
                    else f"no {mine['adds']} were found"
                )
                out[n] = (m, f"it added no {mine['adds']} to any prompt ({cause})")
            else:
                out[n] = (m, "its prompts are identical to those of " + m)
            break
    return out


def _levers(arms: dict, scores: dict, primary: str, deciding: list[str], c, seed: int) -> dict:
    """Retrieval and fine-tuning apart (the 2x2 of zero-shot, rag, fine-tuned, fine-tuned+rag)."""
    degenerate = [n for n in ("rag", "fine-tuned+rag") if "same_as" in arms[n]]
    if degenerate:
        n = degenerate[0]
        return {"metrics": [], "same_as": [n, arms[n]["same_as"], arms[n]["same_why"]]}
    wanted = list(dict.fromkeys([primary, *deciding, "answer", "chrf", "template", "glossary"]))
    keys = [k for k in wanted if all(arms[n]["metrics"][k]["n"] for n in stats.LEVER_ARMS)][:5]
    table = {
        k: {n: [None if s[k] is None else points(k, s[k]) for s in scores[n]] for n in stats.LEVER_ARMS} for k in keys
    }
    return {"metrics": stats.two_by_two(table, keys, c.bootstrap, seed)}


def run_judge(
    cfg: Config, examples: list[dict], outputs: dict, results: dict, ctx: Context, templates: dict, log
) -> dict:
    """The judge's verdict: every judged arm against the best arm that needs no training."""
    from tunesmith.compare.judge import judge, rubric

    reference = results["verdict"]["reference"]
    if reference is None:
        return {
            "status": "skipped",
            "reason": "no arm that needs no training ran, so there is nothing to judge against.",
        }
    ok = [n for n, a in results["arms"].items() if a["status"] == "ok" and "same_as" not in a and n != reference]
    wanted = _split(cfg.judge.arms) or ok
    texts = {n: [o.text for o in outputs[n]] for n in outputs}
    return judge(
        cfg.judge,
        examples,
        texts,
        reference,
        [n for n in wanted if n in ok],
        rubric(ctx.style, ctx.glossary, templates, ctx.prompt),
        cfg.compare.bootstrap,
        cfg.data.seed,
        log,
    )


def _training(run: Path | None, c) -> dict | None:
    if run is None or not (run / rundir.SUMMARY).exists():
        return None
    summary = json.loads((run / rundir.SUMMARY).read_text())
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
        rows.append(
            {
                "tuned": tuned,
                "against": name,
                "tokens_saved_per_request": saved,
                "requests": requests,
                "months": requests / c.requests_per_month if requests is not None and c.requests_per_month else None,
            }
        )
    return rows


def _samples(examples: list[dict], outputs: dict, scores: dict) -> list[dict]:
    rows = []
    for i, ex in enumerate(examples):
        rows.append(
            {
                "index": i,
                "meta": ex.get("meta") or {},
                "prompt": prompt_of(ex),
                "reference": reference_of(ex),
                "outputs": {
                    name: {
                        "text": outs[i].text,
                        "prompt_tokens": outs[i].prompt_tokens,
                        "completion_tokens": outs[i].completion_tokens,
                        "latency_s": round(outs[i].latency_s, 3),
                        "finish_reason": outs[i].finish_reason,
                        "metrics": scores[name][i],
                    }
                    for name, outs in outputs.items()
                },
            }
        )
    return rows


# ------------------------------------------------------------------------------- learning curve


def learning_curve(
    cfg: Config,
    train_examples: list[dict],
    heldout: list[dict],
    examples: list[dict],
    results: dict,
    out_dir: Path,
    log,
    glossary: list,
    templates: dict,
) -> list[dict]:
    """Train on 25 % and 50 % of the training examples (same settings, same held-out split) and
    score the fine-tuned arm on the same examples: does the primary score still rise at 100 %?"""
    from tunesmith.data.formats import write_jsonl
    from tunesmith.generation.api import generate
    from tunesmith.train import train

    key = results["primary_metric"]
    folder = out_dir / "learning-curve"
    folder.mkdir(parents=True, exist_ok=True)
    heldout_path = folder / "heldout.jsonl"
    write_jsonl(heldout_path, heldout)
    order = list(range(len(train_examples)))
    random.Random(cfg.data.seed).shuffle(order)
    points = []
    for fraction in (0.25, 0.5):
        subset = [train_examples[i] for i in sorted(order[: max(1, round(fraction * len(order)))])]
        sub_cfg = copy.deepcopy(cfg)
        sub_cfg.data.train = str(folder / f"train-{int(fraction * 100)}.jsonl")
        write_jsonl(sub_cfg.data.train, subset)
        sub_cfg.data.heldout = str(heldout_path)
        sub_cfg.train.output_dir = str(folder / f"run-{int(fraction * 100)}")
        log(f"learning curve: training on {len(subset)} examples ({fraction:.0%})")
        sub_run = train(sub_cfg)
        model, tok = load_model(cfg, str(sub_run), tuned=True)
        tick = _Ticker(f"learning curve {fraction:.0%}", len(examples))
        outs = generate(
            model,
            tok,
            [prompt_of(ex) for ex in examples],
            max_new_tokens=cfg.generate.max_new_tokens,
            temperature=cfg.generate.temperature,
            top_p=cfg.generate.top_p,
            batch_size=cfg.generate.batch_size,
            seed=cfg.data.seed,
            progress=tick,
            stop_on_repeat=cfg.generate.stop_on_repeat,
        )
        tick.close()
        del model
        vals = [
            score(o.text, reference_of(ex), task_of(ex), glossary, templates, (ex.get("meta") or {}).get("answer"))[key]
            for o, ex in zip(outs, examples)
        ]
        vals = [v for v in vals if v is not None]
        points.append({"fraction": fraction, "examples": len(subset), key: sum(vals) / len(vals) if vals else None})
    full = results["arms"]["fine-tuned"]["metrics"][key]["mean"]
    points.append({"fraction": 1.0, "examples": len(train_examples), key: full})
    return points


def _say(*parts):
    print(*parts, flush=True)
