"""What the workbench's pages show, worked out from the files the stages wrote: config values for
the advanced form, a job's progress and ETA, an export's verification line, glossary marks,
markdown, and the base and fine-tuned models for chat.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import warnings
from pathlib import Path

from tunesmith import rundir


def config_values(cfg) -> list[tuple[str, str, object, str]]:
    import dataclasses

    rows = []
    for sec in dataclasses.fields(cfg):
        section = getattr(cfg, sec.name)
        for f in dataclasses.fields(section):
            rows.append((f"{sec.name}.{f.name}", "", getattr(section, f.name), ""))
    return rows


def progress(job: dict, rows: list[dict]) -> dict:
    """Steps done, total steps (from the run's data.json) and ETA from the steps' own training time."""
    total = None
    if job.get("run_dir"):
        try:
            total = json.loads((Path(job["run_dir"]) / rundir.DATA).read_text()).get("steps")
        except (FileNotFoundError, ValueError):
            pass
    train_rows = [r for r in rows if r.get("tokens_per_s")]
    step = max((r.get("step", 0) for r in rows), default=0)
    eta = None
    if total and len(train_rows) >= 2 and job.get("status") == "running":
        # A row's tokens_per_s is its own step's; rows may be log_every steps apart, so a step's time
        # is the tokens per step since the previous row over that rate.
        secs, prev = [], None
        for r in train_rows:
            if prev is not None and r["tokens"] > prev["tokens"] and r["step"] > prev["step"]:
                secs.append((r["tokens"] - prev["tokens"]) / (r["step"] - prev["step"]) / r["tokens_per_s"])
            prev = r
        if secs:
            eta = round(sum(secs) / len(secs) * max(0, total - step), 1)
    return {"step": step, "total": total, "eta_s": eta}


def verified_line(log: Path) -> str:
    try:
        return next(
            (x for x in reversed(log.read_text(errors="replace").splitlines()) if x.startswith("verified:")), ""
        )
    except FileNotFoundError:
        return ""


def glossary_marker(job: dict):
    """text -> HTML with preferred glossary terms and rejected variants marked (escaped otherwise)."""
    import html
    import re

    from tunesmith.compare.metrics import load_glossary
    from tunesmith.config import load_config

    cfg = load_config(Path(job["run_dir"]) / rundir.CONFIG)
    terms = load_glossary(cfg.data.glossary) if cfg.data.glossary and Path(cfg.data.glossary).exists() else []
    kinds = {t.term.lower(): "pref" for t in terms}
    kinds.update({r.lower(): "rej" for t in terms for r in t.rejected})
    if not kinds:
        return lambda text: html.escape(text)
    alts = sorted(kinds, key=len, reverse=True)  # the longest phrase wins, as in the metric
    pattern = re.compile(
        r"(?<![\w-])(" + "|".join(re.escape(a).replace(r"\ ", r"[\s-]+") for a in alts) + r")(?:s|es)?(?![\w-])",
        re.IGNORECASE,
    )

    def mark(text: str) -> str:
        out, at = [], 0
        for m in pattern.finditer(text):
            key = re.sub(r"[\s-]+", " ", m.group(1).lower())
            kind = kinds.get(key, "pref")
            title = "preferred glossary term" if kind == "pref" else "rejected variant"
            out.append(html.escape(text[at : m.start()]))
            out.append(f'<mark class="{kind}" title="{title}">{html.escape(m.group(0))}</mark>')
            at = m.end()
        out.append(html.escape(text[at:]))
        return "".join(out)

    return mark


def markdown(text: str) -> str:
    """A model's reply as HTML: raw HTML in it is shown as text, never run, and an image loads only
    from this page's own origin (an image elsewhere would tell that server who read the reply)."""
    return _markdown().render(text)


@functools.cache
def _markdown():
    import html

    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False})
    default_image = md.renderer.rules["image"]

    def image(renderer, tokens, idx, options, env):
        src = tokens[idx].attrGet("src") or ""
        if src.startswith("/") and not src.startswith("//"):  # this origin's own path
            return default_image(tokens, idx, options, env)
        return html.escape(f"[image: {tokens[idx].content or src}]")

    md.add_render_rule("image", image)
    return md


def pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"


def num(v, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


class Chat:
    """Base and fine-tuned model of one run, loaded on first use; one generation at a time (CPU)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.loaded: dict[str, tuple] = {}

    def _get(self, spec: str):
        from tunesmith.models import load

        if spec not in self.loaded:
            if len(self.loaded) >= 2:
                self.loaded.clear()
            with warnings.catch_warnings():  # peft calls a method transformers deprecated; theirs, not the user's
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                self.loaded[spec] = load(spec, merge_adapter=True)
        return self.loaded[spec]

    def reply(self, job: dict, messages: dict[str, list[dict]], max_tokens: int, temperature: float = 0.0) -> dict:
        from tunesmith.config import load_config
        from tunesmith.generation.api import generate

        base = load_config(Path(job["run_dir"]) / rundir.CONFIG).model.name
        out = {}
        with self.lock:
            for side, spec in (("base", base), ("tuned", job["run_dir"])):
                model, tok = self._get(spec)
                out[side] = generate(model, tok, [messages[side]], max_new_tokens=max_tokens, temperature=temperature)[
                    0
                ].text
        return out
