"""Write the verdict: report.html (self-contained, inline SVG plots), report.md, results.json,
samples.jsonl, and a summary table in the terminal.

    from tunesmith.compare.report import write_report, print_summary
    write_report(out_dir, results, samples, run_dir)

`results` is what compare.run.summarise returns; nothing here computes a statistic or writes the
verdict's sentences (compare/verdict.py does), it only shows. The pages are Jinja2 templates in
compare/templates: report.md.j2 and report.html.j2 frame a list of sections (SECTIONS, one
template each under templates/sections/), and report.html renders each section's markdown with
markdown-it, raw HTML escaped.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tunesmith import rundir
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
    (out_dir / rundir.RESULTS).write_text(json.dumps(_clean(results), indent=2) + "\n")
    with open(out_dir / rundir.SAMPLES, "w") as f:
        for row in samples:
            f.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    losses = read_losses(run / rundir.METRICS) if run is not None and (run / rundir.METRICS).exists() else []
    (out_dir / rundir.REPORT_MD).write_text(markdown(results))
    (out_dir / rundir.REPORT_HTML).write_text(render_html(results, samples, losses))


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
    """The metrics the report draws, in METRICS order: those with a score for some arm, less those
    that fit none of the scored tasks (see left_out)."""
    out = left_out(results)
    return [k for k in METRICS if k not in out and any(results["arms"][n]["metrics"][k]["n"] for n in _ok(results))]


# Metrics that fit some kinds of example only (compare.run.primary_metric says which fits each task);
# the others apply to any reply.
TASK_FIT = ("answer", "exact_match", "token_f1")


def left_out(results: dict) -> dict[str, str]:
    """{metric: why}: scored somewhere, yet it fits none of the scored tasks and decides nothing — a
    row of near-zero bars on long text would read as a result. results.json keeps them."""
    fit = {k for kinds in results.get("task_fit", {}).values() for k in kinds}
    fit |= set(results.get("decide_on") or []) | {results["primary_metric"]}
    out = {}
    for k in TASK_FIT:
        scored = sum(results["arms"][n]["metrics"][k]["n"] for n in _ok(results))
        if scored and k not in fit:
            named = sorted(t for t in results.get("task_fit", {}) if t)
            out[k] = (
                f"fits none of the scored tasks: {', '.join(named)}" if named else "fits none of the scored examples"
            )
    return out


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
    for k, why in left_out(results).items():
        lines.append(f"({METRICS[k].label} left out: it {why}; its numbers are in results.json)")
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


# ------------------------------------------------------------------------------ the report's sections


@dataclass
class Section:
    """One part of the report: a heading, its markdown, and (report.html only) a figure after the heading."""

    key: str
    title: str
    markdown: str
    figure: str = ""


# The report's sections, in order: each is templates/sections/KEY.md.j2, which sets `title` and
# renders nothing when its data is absent (no judge, no learning curve). A new section is a template
# here and a name in this tuple.
SECTIONS = ("decision", "quality", "prompts", "levers", "side_effects", "judge", "cost", "learning_curve", "settings")


def sections(results: dict) -> list[Section]:
    ctx = _context(results)
    out = []
    for key in SECTIONS:
        module = _env().get_template(f"sections/{key}.md.j2").make_module(ctx)
        text = str(module).strip()
        if text:
            figure = _bars_grid(results) if key == "quality" else ""
            out.append(Section(key, module.title, text, figure))
    return out


def markdown(results: dict) -> str:
    """report.md: the verdict, the rule, then every section."""
    return _env().get_template("report.md.j2").render(_context(results), sections=sections(results))


def render_html(results: dict, samples: list[dict], losses: list[dict]) -> str:
    """One file, no external assets: the sections' markdown as HTML, inline SVG plots, and sample outputs."""
    key = results["primary_metric"]
    shown_samples = [
        {
            **row,
            "meta": {
                "id": (row.get("meta") or {}).get("id", row["index"]),
                "task": (row.get("meta") or {}).get("task"),
            },
            "user": "\n\n".join(m["content"] for m in row["prompt"] if m["role"] == "user"),
        }
        for row in samples[:6]
    ]
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            _context(results),
            sections=sections(results),
            scatter=scatter_svg(results, key),
            loss=loss_svg(losses) if losses else "",
            samples=shown_samples,
        )
    )


def _bars_grid(results: dict) -> str:
    figures = "".join(
        f"<figure><figcaption>{html.escape(METRICS[k].label)}</figcaption>{bars_svg(results, k)}</figure>"
        for k in shown(results)
    )
    return (
        "<p>Bars are means; whiskers are 95 % bootstrap intervals. Orange arms are fine-tuned; the "
        f"recommended arm is green.</p><div class=grid>{figures}</div>"
    )


def _context(results: dict) -> dict:
    """What every template sees: the results and the helpers that format them."""
    v, key = results["verdict"], results["primary_metric"]
    keys = shown(results)
    tasks = results.get("tasks_scored", {})
    if any(tasks):
        scope = ", by task: " + ", ".join(f"{t or 'without meta.task'} {n}" for t, n in tasks.items()) + "."
    else:
        scope = "."
    every = results.get("heldout_total", 0) <= results["examples"]
    margins = results.get("margins") or {key: results["margin"]}
    return {
        "results": results,
        "v": v,
        "a": results["assumptions"],
        "key": key,
        "keys": keys,
        "ok": _ok(results),
        "levers": results.get("levers"),
        "j": results.get("judge"),
        "warnings": same_as_lines(results),
        "scope": (
            "Every held-out example" if every else f"A fixed subset of the {results['heldout_total']} held-out examples"
        )
        + scope,
        "metric_notes": _metric_notes(keys),
        "left_out": [f"{METRICS[k].label}, which {why}" for k, why in left_out(results).items()],
        "margin_words": "; ".join(
            f"{m:g} " + ("percentage points" if METRICS[k].percent else "points") + f" of {METRICS[k].label}"
            for k, m in margins.items()
        ),
    }


def _env():
    global _ENV
    if _ENV is None:
        from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

        _ENV = Environment(
            loader=PackageLoader("tunesmith.compare", "templates"),
            autoescape=select_autoescape(["html.j2"]),  # the .md templates write markdown, escaped when rendered
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _ENV.filters.update(markdown=_md_to_html, label=lambda k: METRICS[k].label)
        _ENV.globals.update(
            label=lambda k: METRICS[k].label,
            fmt=fmt,
            fmt_ci=fmt_ci,
            fmt_diff=fmt_diff,
            went_in=went_in,
            judge_summary=judge_summary,
            side_effects_body=lambda s: "\n".join(side_effects.markdown(s)[2:]).strip(),  # its own "##" dropped
            judge_problems=lambda j: [(n, p) for n, a in j["arms"].items() for p in a["problems"]],
            effect=lambda e: f"{e[0]:+.1f} [{e[1]:+.1f}, {e[2]:+.1f}]",
            points_ci=lambda d: "–" if math.isnan(d[0]) else f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]",
        )
    return _ENV


_ENV = None


def _md_to_html(text: str):
    """Markdown (tables included) as HTML; raw HTML in it is shown as text, never passed through."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    return Markup(MarkdownIt("commonmark", {"html": False}).enable("table").render(text))


_NOTES = {
    "answer": "answer accuracy is the share of replies containing every key fact of meta.answer "
    "(normalised, whole words)",
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


# ------------------------------------------------------------------------------------------ plots


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
            f'<rect x="{left}" y="{y + 3}" width="{x(m["mean"]) - left:.1f}" height="{row - 8}" '
            f'fill="{_colour(results, name)}"/>'
        )
        out.append(
            f'<line x1="{x(m["lo"]):.1f}" x2="{x(m["hi"]):.1f}" y1="{y + row / 2:.1f}" y2="{y + row / 2:.1f}" '
            'stroke="#222"/>'
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
        f'<text x="{(width - right + left) / 2}" y="{height - 6}" text-anchor="middle">'
        "tokens per request (prompt + completion)</text>",
        f'<text x="14" y="{(height - bottom) / 2}" transform="rotate(-90 14 {(height - bottom) / 2})" '
        f'text-anchor="middle">{html.escape(METRICS[key].label)}</text>',
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
