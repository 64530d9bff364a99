"""Write the verdict: report.html (self-contained, inline SVG plots), report.md, results.json,
samples.jsonl, and a summary table in the terminal.

    from tunesmith.compare.report import write_report, print_summary
    write_report(out_dir, results, samples, run_dir)

`results` is what compare.run.summarise returns; nothing here computes a statistic, it only shows.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from tunesmith.compare import side_effects
from tunesmith.compare.metrics import METRICS

SHORT = {
    "answer": "answer",
    "exact_match": "EM",
    "token_f1": "F1",
    "chrf": "chrF",
    "rougeL": "ROUGE-L",
    "glossary": "glossary",
    "rejected_per_100w": "rej/100w",
    "template": "template",
    "length_ratio": "length",
}
BASE_COLOUR, TUNED_COLOUR, PICK_COLOUR = "#5b7fa6", "#d9822b", "#2e8b57"


def write_report(out_dir: Path, results: dict, samples: list[dict], run: Path | None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(_clean(results), indent=2) + "\n")
    with open(out_dir / "samples.jsonl", "w") as f:
        for row in samples:
            f.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    losses = read_losses(run / "metrics.jsonl") if run is not None and (run / "metrics.jsonl").exists() else []
    (out_dir / "report.md").write_text(markdown(results))
    (out_dir / "report.html").write_text(render_html(results, samples, losses))


def read_losses(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a run killed mid-line leaves a partial last line
            continue
        if "step" in row and ("loss" in row or "eval_loss" in row):
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ formatting


def _clean(obj):
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if METRICS[key].percent:
        return f"{100 * value:.0f}%"
    if key == "length_ratio":
        return f"{value:.2f}"
    return f"{value:.1f}"


def fmt_ci(key: str, m: dict) -> str:
    if m["n"] == 0:
        return "–"
    if METRICS[key].percent:
        return f"{fmt(key, m['mean'])} [{100 * m['lo']:.0f}–{100 * m['hi']:.0f}]"
    return f"{fmt(key, m['mean'])} [{fmt(key, m['lo'])}–{fmt(key, m['hi'])}]"


def fmt_diff(key: str, d) -> str:
    if not d or d[0] is None or math.isnan(d[0]):
        return "–"
    scale = 100 if METRICS[key].percent else 1
    return f"{scale * d[0]:+.1f} [{scale * d[1]:+.1f}, {scale * d[2]:+.1f}]"


def _ok(results: dict) -> list[str]:
    return [n for n, a in results["arms"].items() if a["status"] == "ok"]


def shown(results: dict) -> list[str]:
    """The metrics that apply to some arm here, in METRICS order (no column of dashes)."""
    return [k for k in METRICS if any(results["arms"][n]["metrics"][k]["n"] for n in _ok(results))]


def went_in(arm: dict) -> str:
    """What an arm put into its prompts, in words."""
    p = arm.get("prompts")
    if not p:
        return "–"
    if not p["adds"]:
        return "nothing added: the example's own prompt"
    if p["adds"] == "system prompt":
        return "a system prompt on every prompt"
    text = f"{p['mean_added']:.1f} {p['adds']} per prompt"
    if p["none_fit"]:
        text += f"; none fit in {p['none_fit']} of {p['prompts']} prompts"
    if p["none_found"]:
        text += f"; none found for {p['none_found']} of {p['prompts']}"
    return text


def same_as_lines(results: dict) -> list[str]:
    return [
        f"{n} = {a['same_as']}: {a['same_why']}, so it is {a['same_as']} under another name and is not counted as "
        f"separate evidence."
        for n, a in results["arms"].items()
        if a.get("same_as")
    ]


# -------------------------------------------------------------------------------------- terminal


def print_summary(results: dict) -> None:
    """The verdict table, as it appears in the terminal."""
    print("\n" + summary_table(results))
    for line in same_as_lines(results):
        print("\n" + _wrap("warning: " + line))
    print("\n" + _wrap(results["verdict"]["paragraph"]))
    if results.get("levers") and results["levers"].get("paragraph"):
        print("\n" + _wrap("The two levers apart: " + results["levers"]["paragraph"]))
    if results.get("judge"):
        print("\n" + _wrap(judge_summary(results["judge"])))
    if results.get("side_effects"):
        print("\n" + _wrap("Side effects: " + results["side_effects"]["sentence"]))


def summary_table(results: dict) -> str:
    key = results["primary_metric"]
    ref = results["verdict"]["reference"]
    keys = shown(results)
    head = [
        "arm",
        *(SHORT[k] for k in keys),
        f"Δ{SHORT[key]} vs {ref} [95% CI]",
        "prompt tok",
        "p50 s",
        "what went into the prompts",
    ]
    rows = []
    for name, arm in results["arms"].items():
        if arm["status"] != "ok":
            rows.append([name, "skipped: " + arm["reason"].split(". fix:")[0]] + [""] * (len(head) - 2))
            continue
        m = arm["metrics"]
        mark = " *" if name == results["verdict"]["recommend"] else " =" if arm.get("same_as") else ""
        rows.append(
            [
                name + mark,
                *(fmt(k, m[k]["mean"]) for k in keys),
                fmt_diff(key, arm["diff"].get(key)),
                f"{arm['cost']['prompt_tokens']:.0f}",
                f"{arm['cost']['latency_p50_s']:.1f}",
                went_in(arm),
            ]
        )
    widths = [
        max(
            len(head[i]),
            max((len(str(r[i])) for r in rows if not str(r[1]).startswith("skipped") or i == 0), default=0),
        )
        for i in range(len(head))
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        if str(r[1]).startswith("skipped"):
            lines.append(r[0].ljust(widths[0]) + "  " + r[1])
        else:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    lines.append(
        f"({results['examples']} held-out examples; * = recommended; = : the same prompts as another arm, not "
        f"separate evidence; Δ is the paired difference from {ref}, the best arm that needs no training; "
        f"primary metric {METRICS[key].label}: {results.get('primary_why', '')})"
    )
    return "\n".join(lines)


def judge_summary(j: dict) -> str:
    if j["status"] == "skipped":
        return f"Judge: skipped — {j['reason']}"
    head = f"Judge ({j['model']} at {j['url']}), blind, both orders, against {j['reference']}: "
    parts = []
    for name, a in j["arms"].items():
        if a["win_rate"] is None:
            parts.append(
                f"{name}: no verdict on any of {a['pairs']} pairs ({a['off_format']} off-format, {a['failed']} failed)"
            )
            continue
        text = (
            f"{name} wins {100 * a['win_rate']:.0f}% [{100 * a['lo']:.0f}–{100 * a['hi']:.0f}] of {a['judged']} pairs "
            f"(ties count half; the two orders disagree on {100 * a['disagree_share']:.0f}% of pairs asked)"
            if a["disagree_share"] is not None
            else f"{name} wins {100 * a['win_rate']:.0f}% of {a['judged']} pairs (all identical replies)"
        )
        if a["off_format"] or a["failed"]:
            text += f"; {a['off_format']} pairs off-format, {a['failed']} failed (listed in the report)"
        parts.append(text)
    tokens = j["prompt_tokens"] + j["completion_tokens"]
    tail = (
        f" Judge: {j['requests']} requests ({j['retries']} retries), {tokens:,} tokens"
        + (f" (usage not reported for {j['usage_missing']} answers)" if j["usage_missing"] else "")
        + f", ${j['cost']:.4f}."
    )
    if j["status"] == "failed":
        tail += f" Stopped: {j['reason']}"
    return head + "; ".join(parts) + "." + tail


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return textwrap.fill(text, width)


# -------------------------------------------------------------------------------------- markdown


def markdown(results: dict) -> str:
    v, a = results["verdict"], results["assumptions"]
    key = results["primary_metric"]
    ref = v["reference"]
    keys = shown(results)
    out = [f"# Verdict: {v['recommend']}", "", v["paragraph"], ""]
    out += [f"> **Warning.** {line}" for line in same_as_lines(results)] + ([""] if same_as_lines(results) else [])
    out += [
        f"> **Decision rule.** {v['rule']} Primary score: {METRICS[key].label} ({results.get('primary_why', '')}); "
        f"margin: {results['margin']:g} points"
        + (" (percentage points for shares)" if METRICS[key].percent else "")
        + ".",
        "",
    ]
    several = v.get("several")
    if several and several["rows"]:
        out += [
            "## The decision on each metric (Holm-corrected)",
            "",
            "Per metric, the best fine-tuned arm against the best arm that needs no training. It *wins* when ahead by more "
            "than the margin with the one-sided test surviving Holm's correction at 2.5 %; it *loses* when the test of "
            "being behind survives. Fine-tuning is recommended when it wins at least one and loses none.",
            "",
            "| metric | fine-tuned arm | against | difference (points) | 95 % interval | Holm p (ahead) | Holm p (behind) | outcome |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in several["rows"]:
            out.append(
                f"| {r['label']} | {r['tuned']} | {r['reference']} | {r['diff']:+.1f} | {r['lo']:+.1f} to {r['hi']:+.1f} "
                f"| {r['holm_ahead']:.3f} | {r['holm_behind']:.3f} | **{r['outcome']}** |"
            )
        out.append("")
    tasks = ", ".join(f"{t or 'no task'} {n}" for t, n in results.get("tasks_scored", {}).items())
    out += [
        f"## Quality on {results['examples']} held-out examples",
        "",
        (
            f"A fixed subset of the {results['heldout_total']} held-out examples"
            if results.get("heldout_total", 0) > results["examples"]
            else "Every held-out example"
        )
        + f", by task: {tasks}. Mean with 95 % bootstrap interval. "
        + _metric_notes(keys),
        "",
        "| arm | " + " | ".join(METRICS[k].label for k in keys) + f" | Δ {METRICS[key].label} vs {ref} |",
        "|" + "---|" * (len(keys) + 2),
    ]
    for name, arm in results["arms"].items():
        if arm["status"] != "ok":
            out.append(f"| {name} | skipped: {arm['reason']} |" + " |" * len(keys))
            continue
        label = (
            f"**{name}**" if name == v["recommend"] else f"{name} (= {arm['same_as']})" if arm.get("same_as") else name
        )
        out.append(
            f"| {label} | "
            + " | ".join(fmt_ci(k, arm["metrics"][k]) for k in keys)
            + f" | {fmt_diff(key, arm['diff'].get(key))} |"
        )
    out += [
        "",
        f"### Differences from {ref} on every metric (paired, 95 % interval)",
        "",
        "| arm | " + " | ".join(METRICS[k].label for k in keys) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for name in _ok(results):
        out.append(f"| {name} | " + " | ".join(fmt_diff(k, results["arms"][name]["diff"].get(k)) for k in keys) + " |")
    out += [
        "",
        "## What went into the prompts",
        "",
        f"Few-shot examples and passages are added, best first, while the prompt fits {a['max_prompt_tokens']} tokens "
        f"(passages: at most {a.get('passage_words', '?')} words each). An arm that added nothing is its base arm under "
        "another name.",
        "",
        "| arm | prompt tokens (mean) | what went in |",
        "|---|---|---|",
    ]
    for name in _ok(results):
        arm = results["arms"][name]
        out.append(
            f"| {name} | {arm['cost']['prompt_tokens']:.0f} | {went_in(arm)}"
            + (f" — **same prompts as {arm['same_as']}**" if arm.get("same_as") else "")
            + " |"
        )
    out += _levers_md(results.get("levers"))
    out += side_effects.markdown(results.get("side_effects"))
    out += _judge_md(results.get("judge"))
    out += [
        "",
        "## Cost",
        "",
        f"Per request, measured on this machine (up to {a['generation_batch_size']} replies generated together; latency is a "
        f"reply's own, from the start of its prefill to its last token). Serving price assumed: ${a['price_per_1k_tokens']:g} per 1,000 tokens; "
        f"volume assumed: {a['requests_per_month']:,} requests a month.",
        "",
        "| arm | prompt tokens | completion tokens | replies cut at max tokens | replies stopped looping | p50 latency (s) "
        "| p95 latency (s) | $ per 1k requests | $ per month |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in _ok(results):
        c = results["arms"][name]["cost"]
        out.append(
            f"| {name} | {c['prompt_tokens']:.0f} | {c['completion_tokens']:.0f} | {c['cut_at_limit']:.0%} | "
            f"{c['stopped_looping']:.0%} | "
            f"{c['latency_p50_s']:.2f} | {c['latency_p95_s']:.2f} | {c['cost_per_1k_requests']:.3f} | {c['cost_per_month']:.2f} |"
        )
    t = results.get("training")
    if t:
        out += [
            "",
            f"**Training (one-off):** {t.get('steps', '?')} steps, {t.get('train_seconds', 0) / 60:.1f} minutes on "
            f"{t.get('device', 'this machine')}, {t.get('tokens', 0):,} tokens; at an assumed "
            f"${a['train_cost_per_hour']:g}/hour that is ${t['train_cost']:.3f}.",
        ]
    if results.get("break_even"):
        out += [
            "",
            f"**Break-even.** Requests after which the tokens {results['break_even'][0]['tuned']} saves per request "
            f"repay the one-off training (at ${a['price_per_1k_tokens']:g} per 1,000 tokens):",
            "",
            "| against | tokens saved per request | break-even requests | months at the assumed volume |",
            "|---|---|---|---|",
        ]
        for r in results["break_even"]:
            if r["requests"] is None:
                out.append(f"| {r['against']} | {r['tokens_saved_per_request']:.0f} | never (no saving) | – |")
            else:
                out.append(
                    f"| {r['against']} | {r['tokens_saved_per_request']:.0f} | {r['requests']:,.0f} | {r['months']:.2f} |"
                )
    if results.get("learning_curve"):
        out += [
            "",
            "## Learning curve",
            "",
            "Would more data help? The fine-tuned arm trained on part of the data:",
            "",
            f"| share of training data | examples | {METRICS[key].label} |",
            "|---|---|---|",
        ]
        for p in results["learning_curve"]:
            out.append(f"| {p['fraction']:.0%} | {p['examples']} | {fmt(key, p[key])} |")
    out += ["", "## Assumptions and settings", ""]
    out += [f"- {k.replace('_', ' ')}: {val}" for k, val in a.items()]
    out += [
        f"- base model: {results['base_model']}",
        f"- run: {results['run']}",
        f"- templates checked: {', '.join(results['templates']) or 'none found'}; glossary terms: {results['glossary_terms']}",
        f"- compare took {results.get('seconds', 0):.0f} s",
        "",
    ]
    return "\n".join(out)


_NOTES = {
    "answer": "answer accuracy is the share of replies containing every key fact of meta.answer (normalised, whole words)",
    "exact_match": "exact match and token F1 compare SQuAD-normalised words, for references of up to 12 words",
    "chrf": "chrF and ROUGE-L are 0–100 against the team's own text",
    "glossary": "glossary adherence is the share of the reference's preferred terms the output uses",
    "rejected_per_100w": "rejected terms are retired variants per 100 words (lower is better)",
    "template": "template conformance is the share of template-bound outputs with every required label in order",
    "length_ratio": "length is output words per reference word",
}


def _metric_notes(keys: list[str]) -> str:
    notes = [_NOTES[k] for k in _NOTES if k in keys or (k == "exact_match" and "token_f1" in keys)]
    text = "; ".join(notes)
    return text[:1].upper() + text[1:] + "." if notes else ""


def _levers_md(levers: dict | None) -> list[str]:
    if not levers:
        return []
    out = ["", "## The two levers apart: retrieval and fine-tuning", "", levers["paragraph"], ""]
    if not levers["metrics"]:
        return out
    out += [
        "Means of the four arms on the same examples, and each lever's effect averaged over the other lever's two "
        "settings (paired, 95 % bootstrap interval; points are percentage points for shares). The interaction is how "
        "much more retrieval adds on the fine-tuned model than on the base model.",
        "",
        "| metric | zero-shot | rag | fine-tuned | fine-tuned+rag | effect of retrieval | effect of fine-tuning | interaction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in levers["metrics"]:
        m = t["means"]
        eff = lambda e: f"{e[0]:+.1f} [{e[1]:+.1f}, {e[2]:+.1f}]"  # noqa: E731
        out.append(
            f"| {t['label']} | {m['zero-shot']:.1f} | {m['rag']:.1f} | {m['fine-tuned']:.1f} | {m['fine-tuned+rag']:.1f} "
            f"| {eff(t['retrieval'])} | {eff(t['fine-tuning'])} | {eff(t['interaction'])} |"
        )
    return out


def _judge_md(j: dict | None) -> list[str]:
    if not j:
        return []
    out = ["", "## The judge", "", judge_summary(j), ""]
    if j["status"] == "skipped" or not j["arms"]:
        return out
    out += [
        "Each pair was judged blind (the judge sees Reply A and Reply B, never the arm names), in both orders; a pair "
        "scores the mean of its two verdicts (win 1, tie 0.5, loss 0), so a judge that favours the first reply cannot "
        "tilt the result. Pairs whose answers were off-format or failed are left out of the win rate and listed below.",
        "",
        f"| arm vs {j['reference']} | pairs | judged | win rate [95 % CI] | won both orders | lost both | tie or split "
        "| orders disagree | identical replies | off-format | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in j["arms"].items():
        rate = "–" if a["win_rate"] is None else f"{100 * a['win_rate']:.0f}% [{100 * a['lo']:.0f}–{100 * a['hi']:.0f}]"
        disagree = "–" if a["disagree_share"] is None else f"{100 * a['disagree_share']:.0f}%"
        out.append(
            f"| {name} | {a['pairs']} | {a['judged']} | {rate} | {a['wins']} | {a['losses']} | {a['ties']} | {disagree} "
            f"| {a['identical']} | {a['off_format']} | {a['failed']} |"
        )
    problems = [(name, p) for name, a in j["arms"].items() for p in a["problems"]]
    if problems:
        out += ["", "Pairs without a verdict (never guessed):", ""]
        out += [f"- {name}, example {p['index']}: {p['status']} — {p['detail']}" for name, p in problems[:30]]
        if len(problems) > 30:
            out.append(f"- … and {len(problems) - 30} more in results.json")
    return out


# ------------------------------------------------------------------------------------------ html


def render_html(results: dict, samples: list[dict], losses: list[dict]) -> str:
    """One file, no external assets: tables, three inline SVG plots, and sample outputs."""
    v, key = results["verdict"], results["primary_metric"]
    e = html.escape
    parts = [
        f"<h1>Verdict: {e(str(v['recommend']))}</h1>",
        f"<p class=verdict>{e(v['paragraph'])}</p>",
        *(f"<p class=warn><b>Warning.</b> {e(line)}</p>" for line in same_as_lines(results)),
        f"<p class=rule><b>Decision rule.</b> {e(v['rule'])} Primary score: {e(METRICS[key].label)} "
        f"({e(results.get('primary_why', ''))}); margin: {results['margin']:g} points.</p>",
    ]
    parts.append(f"<h2>Quality on {results['examples']} held-out examples</h2>")
    parts.append(
        "<p>Bars are means; whiskers are 95 % bootstrap intervals. Orange arms are fine-tuned; the "
        "recommended arm is green.</p><div class=grid>"
    )
    for k in shown(results):
        parts.append(f"<figure><figcaption>{e(METRICS[k].label)}</figcaption>{bars_svg(results, k)}</figure>")
    parts.append("</div>")
    md = markdown(results).split("\n")
    parts.append(_md_tables_to_html(md))
    parts.append("<h2>Quality against cost</h2><figure>" + scatter_svg(results, key) + "</figure>")
    if losses:
        parts.append("<h2>Training loss</h2><figure>" + loss_svg(losses) + "</figure>")
    parts.append("<h2>Sample outputs</h2>")
    for row in samples[:6]:
        meta = row.get("meta") or {}
        user = "\n\n".join(m["content"] for m in row["prompt"] if m["role"] == "user")
        parts.append(
            f"<details><summary>{e(str(meta.get('id', row['index'])))} · {e(str(meta.get('task', '')))}</summary>"
            f"<h4>prompt</h4><pre>{e(user)}</pre><h4>reference (the team's text)</h4><pre>{e(row['reference'])}</pre>"
        )
        for name, o in row["outputs"].items():
            parts.append(
                f"<h4>{e(name)} · {METRICS[key].label} {fmt(key, o['metrics'][key])}</h4><pre>{e(o['text'])}</pre>"
            )
        parts.append("</details>")
    parts.append("<p class=small>Every output is in samples.jsonl; every number in results.json.</p>")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>tunesmith verdict: {e(str(v['recommend']))}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


_CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1080px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}.verdict{font-size:1.1em;background:#f3f7f4;border-left:4px solid #2e8b57;padding:.6em 1em}
.rule{color:#555}.warn{background:#fff4e5;border-left:4px solid #d9822b;padding:.4em 1em}table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f5f5f5}.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}figure{margin:0}figcaption{font-weight:600}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.5em}.small{color:#777;font-size:12px}
svg text{font:11px system-ui,sans-serif}"""


def _md_tables_to_html(lines: list[str]) -> str:
    """The markdown report from its first table on, as HTML: headings, paragraphs, tables, lists."""
    import re

    e = html.escape
    start = next(i for i, l in enumerate(lines) if l.startswith("| "))
    start = max(i for i in range(start) if lines[i].startswith("## "))
    out, table, para = [], [], []

    def inline(text):
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e(text))

    def flush():
        if table:
            rows = [r.strip("|").split(" | ") for r in table if not set(r) <= set("|-")]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{inline(c.strip())}</th>" for c in rows[0])
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{inline(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
                + "</table>"
            )
            table.clear()
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()

    for line in lines[start:]:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            para.append(line)
    flush()
    return "\n".join(out)


def _colour(results: dict, name: str) -> str:
    if name == results["verdict"]["recommend"]:
        return PICK_COLOUR
    return TUNED_COLOUR if results["arms"][name]["tuned"] else BASE_COLOUR


def bars_svg(results: dict, key: str, width: int = 520) -> str:
    """Horizontal bars, one per arm, with the 95 % interval as a whisker; skipped arms say so."""
    names = list(results["arms"])
    pct = METRICS[key].percent
    scale = 100 if pct else 1
    row, left, right = 22, 130, 60
    vals = [results["arms"][n]["metrics"][key] for n in names if results["arms"][n]["status"] == "ok"]
    top = max([m["hi"] * scale for m in vals if m["n"]] + [m["mean"] * scale for m in vals if m["n"]] + [1e-9])
    top = 100 if pct else top * 1.1
    plot = width - left - right
    x = lambda val: left + plot * max(0.0, val * scale) / top  # noqa: E731
    h = row * len(names) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, name in enumerate(names):
        y = 5 + i * row
        arm = results["arms"][name]
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{html.escape(name)}</text>')
        if arm["status"] != "ok":
            out.append(f'<text x="{left + 4}" y="{y + 14}" fill="#999">skipped</text>')
            continue
        m = arm["metrics"][key]
        if not m["n"]:
            out.append(f'<text x="{left + 4}" y="{y + 14}" fill="#999">does not apply</text>')
            continue
        out.append(
            f'<rect x="{left}" y="{y + 3}" width="{x(m["mean"]) - left:.1f}" height="{row - 8}" fill="{_colour(results, name)}"/>'
        )
        out.append(
            f'<line x1="{x(m["lo"]):.1f}" x2="{x(m["hi"]):.1f}" y1="{y + row / 2:.1f}" y2="{y + row / 2:.1f}" stroke="#222"/>'
        )
        for end in (m["lo"], m["hi"]):
            out.append(f'<line x1="{x(end):.1f}" x2="{x(end):.1f}" y1="{y + 6}" y2="{y + row - 6}" stroke="#222"/>')
        out.append(f'<text x="{min(x(m["hi"]), left + plot) + 5:.1f}" y="{y + 14}">{fmt(key, m["mean"])}</text>')
    out.append("</svg>")
    return "".join(out)


def scatter_svg(results: dict, key: str, width: int = 680, height: int = 340) -> str:
    """Primary score (with interval) against tokens per request: up and to the left is better."""
    names = _ok(results)
    pts = [
        (
            n,
            results["arms"][n]["cost"]["prompt_tokens"] + results["arms"][n]["cost"]["completion_tokens"],
            results["arms"][n]["metrics"][key],
        )
        for n in names
    ]
    if not pts:
        return ""
    left, bottom, top, right = 60, 40, 16, 150  # the right margin holds the labels of the costliest arms
    xticks = _ticks(max(p[1] for p in pts))
    yticks = _ticks(max(p[2]["hi"] for p in pts if p[2]["n"]) if any(p[2]["n"] for p in pts) else 1)
    X = lambda v: left + (width - left - right) * v / xticks[-1]  # noqa: E731
    Y = lambda v: height - bottom - (height - bottom - top) * max(v, 0) / yticks[-1]  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
        f'<text x="{(width - right + left) / 2}" y="{height - 6}" text-anchor="middle">tokens per request (prompt + completion)</text>',
        f'<text x="14" y="{(height - bottom) / 2}" transform="rotate(-90 14 {(height - bottom) / 2})" text-anchor="middle">'
        f"{html.escape(METRICS[key].label)}</text>",
    ]
    for t in xticks:
        out.append(f'<text x="{X(t):.0f}" y="{height - bottom + 14}" text-anchor="middle">{t:g}</text>')
    for t in yticks:
        out.append(f'<text x="{left - 5}" y="{Y(t) + 4:.0f}" text-anchor="end">{t:g}</text>')
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#eee"/>')
    placed: list[tuple[float, float, float]] = []
    for n, cost, m in sorted(pts, key=lambda p: (p[1], -p[2]["mean"] if p[2]["n"] else 0)):
        if not m["n"]:
            continue
        c = _colour(results, n)
        x, y = X(cost), Y(m["mean"])
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{Y(m["lo"]):.1f}" y2="{Y(m["hi"]):.1f}" stroke="{c}"/>')
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{c}"/>')
        x0, x1 = x + 8, x + 8 + 6.5 * len(n)  # the label's extent at 11 px type
        for shift in (0, -12, 12, -24, 24, -36, 36, -48, 48):  # nearest free line, inside the plot
            ly = y + 4 + shift
            free = all(abs(ly - py) >= 12 or x1 < px0 or x0 > px1 for px0, px1, py in placed)
            if free and top + 8 <= ly <= height - bottom - 2:
                break
        placed.append((x0, x1, ly))
        out.append(f'<text x="{x0:.1f}" y="{ly:.1f}">{html.escape(n)}</text>')
    out.append("</svg>")
    return "".join(out)


def _ticks(top: float) -> list[float]:
    """0 and a few round steps up to at least `top` (1, 2 or 5 times a power of ten)."""
    top = top if top > 0 else 1.0
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [round(i * step, 10) for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def loss_svg(rows: list[dict], width: int = 640, height: int = 260) -> str:
    """Training loss per step (line) and held-out loss where it was measured (dots)."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    allpts = train + evals
    if not allpts:
        return ""
    left, bottom, pad = 50, 36, 16
    smax = max(s for s, _ in allpts) or 1
    lo, hi = min(v for _, v in allpts), max(v for _, v in allpts)
    span = (hi - lo) or 1.0
    X = lambda s: left + (width - left - pad) * s / smax  # noqa: E731
    Y = lambda v: pad + (height - bottom - pad) * (hi - v) / span  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - pad}" y2="{height - bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
        f'<text x="{(width + left) / 2}" y="{height - 6}" text-anchor="middle">step</text>',
        f'<text x="{left - 5}" y="{Y(hi) + 4:.0f}" text-anchor="end">{hi:.2f}</text>',
        f'<text x="{left - 5}" y="{Y(lo) + 4:.0f}" text-anchor="end">{lo:.2f}</text>',
        f'<text x="{width - pad}" y="{height - bottom + 14}" text-anchor="end">{smax}</text>',
    ]
    if train:
        out.append(
            '<polyline fill="none" stroke="#5b7fa6" stroke-width="1.5" points="'
            + " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in train)
            + '"/>'
        )
    for s, v in evals:
        out.append(f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="4" fill="#d9822b"/>')
    legend = '<tspan fill="#5b7fa6">— train loss</tspan>'
    if evals:
        legend += '  <tspan fill="#d9822b">● held-out loss</tspan>'
    out.append(f'<text x="{width - pad}" y="{pad + 4}" text-anchor="end">{legend}</text>')
    out.append("</svg>")
    return "".join(out)
