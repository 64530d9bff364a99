"""`tunesmith import`: a team's folder as it is → training and held-out chat examples, a retrieval
corpus, the glossary, the house style guide and a ready config.

    tunesmith import team-folder/ -o data/
    tunesmith import reports.zip insights.csv glossary.xlsx --style voice.docx -o data/ --group-by folder
    tunesmith import src/tunesmith/examples/pantry -o data/

Sources are folders and .zip files (walked in sorted order) or files: documents (.md with any front
matter or none, .txt, .docx, .pdf, .html, .pptx; readers.py), tables (.csv, .xlsx, a markdown pipe
table) recognised by their columns as a glossary, a research tool's highlights or insights export or
ready-made pairs (documents.py), a style guide (a name with style, voice, tone or guidelines in it,
or --style), and examples in any format `tunesmith check` reads. Our own repository format (markdown
with `type:` front matter: study, highlight, insight, recommendation, report, term, template; the
bundled example's README) is read as before. Builders turn it all into instruction → response pairs
whose response is always the team's own text; the split keeps a study, a document or a folder
whole. A file that cannot be read is skipped with one line (what, and the fix) and the rest is
imported. Output is deterministic: the same sources give byte-identical files.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from tunesmith import UserError
from tunesmith.data.documents import document_examples, split_list
from tunesmith.data.formats import jsonl_text
from tunesmith.data.sources import Repo, id_list, read_repository  # noqa: F401 (read_repository: API)
from tunesmith.data.split import split_heldout
from tunesmith.fsutil import check_space, disk_full_error, is_disk_full

# ------------------------------------------------------------------------------------ builders


def _study_context(study: dict) -> str:
    lines = [f"Study {study['id']}: {study.get('title', '')}".rstrip(": ")]
    facts = [str(study[k]) for k in ("method",) if study.get(k)]
    if study.get("participants"):
        facts.append(f"{study['participants']} participants")
    if study.get("date"):
        facts.append(str(study["date"]))
    if facts:
        lines.append("Method: " + " · ".join(facts))
    if study.get("goal"):
        lines.append(f"Goal: {study['goal']}")
    return "\n".join(lines)


def _example(task: str, doc: dict, key: str, user: str, assistant: str, group) -> dict:
    return {
        "messages": [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}],
        "meta": {"source": doc["source"], "id": f"{task}:{key}", "group": group, "task": task},
    }


def build_insights(repo: Repo) -> list[dict]:
    """highlights → insight, draft → insight, insight → its title."""
    out = []
    for iid, doc in sorted(repo.insights.items()):
        study = repo.studies[doc["study"]]
        context = _study_context(study)
        hl = [repo.highlights[h] for h in id_list(doc.get("highlights"))]
        if hl and doc["body"]:
            listed = "\n".join(
                f"- {h['id']}" + (f" ({h['participant']})" if h.get("participant") else "") + f": {h['body']}"
                for h in hl
            )
            out.append(
                _example(
                    "insight",
                    doc,
                    iid,
                    f"Write an insight in our house template from these highlights.\n\n"
                    f"{context}\n\nHighlights:\n{listed}",
                    doc["body"],
                    doc["study"],
                )
            )
        if doc.get("draft") and doc["body"]:
            out.append(
                _example(
                    "insight-from-draft",
                    doc,
                    iid,
                    f"Rewrite this draft insight in our house template "
                    f"and our glossary terms.\n\n{context}\n\nDraft:\n{doc['draft']}",
                    doc["body"],
                    doc["study"],
                )
            )
        if doc.get("title") and doc["body"]:
            out.append(
                _example(
                    "insight-title",
                    doc,
                    iid,
                    f"Write a one-line title for this insight, in our glossary terms.\n\n{doc['body']}",
                    str(doc["title"]),
                    doc["study"],
                )
            )
    return out


def build_recommendations(repo: Repo) -> list[dict]:
    """insights → recommendation, draft → recommendation."""
    out = []
    for rid, doc in sorted(repo.recommendations.items()):
        if not doc["body"]:
            continue
        context = _study_context(repo.studies[doc["study"]])
        cited = [repo.insights[i] for i in id_list(doc["insights"])]
        full = "\n\n".join(f"{i['id']}: {i.get('title', '')}\n{i['body']}" for i in cited)
        out.append(
            _example(
                "recommendation",
                doc,
                rid,
                f"Write a recommendation in our house template that acts on "
                f"these insights.\n\n{context}\n\nInsights:\n{full}",
                doc["body"],
                doc["study"],
            )
        )
        if doc.get("draft"):
            names = "; ".join(f"{i['id']} ({i.get('title', '')})" for i in cited)
            out.append(
                _example(
                    "recommendation-from-draft",
                    doc,
                    rid,
                    f"Rewrite this draft recommendation in our house "
                    f"template and our glossary terms. It acts on {names}.\n\n{context}\n\nDraft:\n{doc['draft']}",
                    doc["body"],
                    doc["study"],
                )
            )
    return out


def build_report_sections(repo: Repo) -> list[dict]:
    """study notes (and the study's insight and recommendation titles) → one report section each."""
    out = []
    for doc in sorted(repo.reports, key=lambda d: (d["study"], d["source"])):
        study = repo.studies[doc["study"]]
        insights = [d for d in repo.insights.values() if d["study"] == doc["study"]]
        recs = [d for d in repo.recommendations.values() if d["study"] == doc["study"]]
        material = [f"Researcher's notes:\n{study['body']}"] if study["body"] else []
        if insights:
            material.append(
                "Insights:\n"
                + "\n".join(
                    f"- {d['id']}: {d.get('title', '')}{_signal(d)}" for d in sorted(insights, key=lambda d: d["id"])
                )
            )
        if recs:
            material.append(
                "Recommendations:\n"
                + "\n".join(f"- {d['id']}: {d.get('title', '')}{_size(d)}" for d in sorted(recs, key=lambda d: d["id"]))
            )
        for heading, text in _sections(doc["body"]):
            slug = "-".join(heading.lower().split())
            out.append(
                _example(
                    "report-section",
                    doc,
                    f"{doc.get('id') or doc['study']}#{slug}",
                    f'Write the "{heading}" section of our report on study {study["id"]}, in house style.\n\n'
                    f"{_study_context(study)}\n\n" + "\n\n".join(material),
                    text,
                    doc["study"],
                )
            )
    return out


def build_definitions(repo: Repo) -> list[dict]:
    """glossary term → its definition in house words. The glossary is what the model must know, not a
    sample to generalise from: every definition trains (meta.split pins it)."""
    out = []
    for doc in sorted(repo.terms, key=lambda d: str(d["term"]).lower()):
        if not doc["body"]:
            continue
        rejected = id_list(doc.get("rejected"))
        avoid = f"\nVariants we do not use: {', '.join(rejected)}." if rejected else ""
        ex = _example(
            "definition",
            doc,
            str(doc["term"]),
            f'Define the glossary term "{doc["term"]}" the way our team does.{avoid}',
            doc["body"],
            None,
        )
        ex["meta"]["split"] = "train"
        if "row" in doc:  # a row of a glossary table: its line (CSV) or row (XLSX)
            ex["meta"]["line"] = doc["row"]
        out.append(ex)
    return out


def _signal(doc: dict) -> str:
    line = next((ln for ln in doc["body"].splitlines() if ln.startswith("**Signal:**")), "")
    return f" ({line.removeprefix('**Signal:**').strip()})" if line else ""


def _size(doc: dict) -> str:
    line = next((ln for ln in doc["body"].splitlines() if ln.startswith("**Size:**")), "")
    return f" (size {line.removeprefix('**Size:**').strip()})" if line else ""


def _sections(body: str) -> list[tuple[str, str]]:
    """A markdown body split at its `## ` headings: [(heading, text)], empty sections left out."""
    out, heading, lines = [], None, []
    for line in body.splitlines() + ["## "]:
        if line.startswith("## "):
            if heading and "\n".join(lines).strip():
                out.append((heading, "\n".join(lines).strip()))
            heading, lines = line[3:].strip(), []
        else:
            lines.append(line)
    return out


def build_documents(repo: Repo) -> list[dict]:
    """Each document → section writing, summary from body, title from body (documents.py)."""
    return [ex for doc in repo.documents for ex in document_examples(doc, doc.meta["_group"])]


def _document_groups(repo: Repo) -> dict[str, str]:
    """{document title, lower case: its split group}: an export row whose project is named like a
    document goes to that document's side of the split, so the study is not on both sides."""
    from tunesmith.data.documents import outline

    return {title.lower(): doc.meta["_group"] for doc in repo.documents if (title := outline(doc)[0])}


def build_export_insights(repo: Repo) -> list[dict]:
    """A research tool's insights → highlights → insight where the export links them, and body → title.
    A link is a highlight id in the insight's row, or the insight's title or id in a highlight's row."""
    by_insight: dict[str, list] = {}
    for h in repo.highlights.values():
        for name in split_list(h.get("insight", "")) if "," in h.get("insight", "") else [h.get("insight", "")]:
            if name:
                by_insight.setdefault(name.strip().lower(), []).append(h)
    out, titled = [], _document_groups(repo)
    for doc in repo.export_insights:
        title, body = doc.get("title", ""), doc.get("text", "")
        key = doc.get("id") or f"{doc['source']}:{doc['line']}"
        linked = [repo.highlights[i] for i in split_list(doc.get("links", "")) if i in repo.highlights]
        for name in (title, doc.get("id", "")):
            linked += [h for h in by_insight.get(name.strip().lower(), []) if h not in linked] if name else []
        group = doc.get("group") or next((h["study"] for h in linked if h.get("study")), None) or key
        group = titled.get(str(group).lower(), group)
        doc["_group"] = group
        answer = f"{title}\n\n{body}".strip()
        if linked and answer:
            listed = "\n".join(
                f"- {h['id']}" + (f" ({h['participant']})" if h.get("participant") else "") + f": {h['body']}"
                for h in linked
            )
            ex = _example(
                "insight", doc, key, f"Write an insight from these highlights.\n\nHighlights:\n{listed}", answer, group
            )
            ex["meta"]["line"] = doc["line"]
            out.append(ex)
        if title and len(body.split()) >= 8:
            ex = _example(
                "insight-title", doc, key, f"Write a one-line title for this insight.\n\n{body}", title, group
            )
            ex["meta"]["line"] = doc["line"]
            out.append(ex)
    return out


# builder name -> function(repo) -> examples. Each response is text the team wrote.
BUILDERS = {
    "insights": build_insights,
    "recommendations": build_recommendations,
    "report sections": build_report_sections,
    "definitions": build_definitions,
    "documents": build_documents,
    "export insights": build_export_insights,
}


# ------------------------------------------------------------------------------------ split and write


def import_repository(
    sources: list,
    out: str | Path,
    heldout_fraction: float = 0.15,
    seed: int = 0,
    csv_preset: str = "auto",
    csv_map: str = "",
    style: str = "",
    group_by: str = "document",
    teacher=None,
) -> dict:
    """Read, build, split and write; returns a summary (counts, held-out groups, files written).
    `teacher` (a config.TeacherConfig with a url) adds restyle pairs and grounded questions."""
    if not 0 <= heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}.")
    if teacher is not None and teacher.url:
        from tunesmith.data import teacher as teaching

        teaching.check(teacher)  # before anything is read or sent
    repo = read_repository(sources, csv_preset, csv_map, style, group_by)
    examples = [ex for build in BUILDERS.values() for ex in build(repo)] + repo.examples
    if not examples:
        skipped = "".join(f"\n  {label}: {what}. fix: {fix}." for label, what, fix in repo.skipped[:20])
        raise UserError(
            f"no examples could be built from {', '.join(map(str, sources))}: no document with sections, "
            f"glossary, insights export or example file was read.{skipped}\n"
            f"fix: pass the folder of the team's documents (.md .docx .pdf .html .pptx), its exports "
            f"(.csv .xlsx) or examples (.jsonl)."
        )
    train, heldout = split_heldout(examples, heldout_fraction, seed)
    held_groups = sorted({g for ex in heldout if (g := (ex.get("meta") or {}).get("group"))})
    taught = None
    if teacher is not None and teacher.url:
        paras = teaching.passages(repo.documents, set(held_groups))
        made, taught = teaching.teacher_examples(teacher, paras, Path(out) / "teacher-cache")
        train, examples = train + made, examples + made

    terms = [
        {"term": str(d["term"]), "rejected": id_list(d.get("rejected")), "definition": d["body"]}
        for d in sorted(repo.terms, key=lambda d: str(d["term"]).lower())
    ]
    docs = _corpus(repo, held_groups)
    files = {
        "train.jsonl": jsonl_text(train),
        "heldout.jsonl": jsonl_text(heldout),
        "glossary.yaml": yaml.safe_dump({"terms": terms}, sort_keys=False, allow_unicode=True, width=100),
        "style.md": _style(repo),
        "config.yaml": _config(examples),
        **{f"corpus/{name}": text for name, text in docs.items()},
    }
    out = Path(out)
    _write_all(out, files)
    corpus = len(docs)

    tasks = sorted({ex["meta"]["task"] for ex in examples})
    return {
        "read": {
            "studies": len(repo.studies),
            "highlights": len(repo.highlights),
            "insights": len(repo.insights),
            "recommendations": len(repo.recommendations),
            "reports": len(repo.reports),
            "terms": len(repo.terms),
            "templates": len(repo.templates),
            "example files": len(repo.examples),
            "documents": len(repo.documents),
            "export insights": len(repo.export_insights),
        },
        "tables": repo.tables,
        "warnings": repo.warnings,
        "train": len(train),
        "heldout": len(heldout),
        "heldout_groups": held_groups,
        "tasks": {
            t: (sum(ex["meta"]["task"] == t for ex in train), sum(ex["meta"]["task"] == t for ex in heldout))
            for t in tasks
        },
        "corpus": corpus,
        "teacher": taught,
        "skipped": repo.skipped,
        "out": str(out),
    }


def _corpus(repo: Repo, held_groups: list[str]) -> dict[str, str]:
    """The team's finished documents from training-side studies, one markdown file each, for retrieval:
    {file name: text}. Names come from document ids, made safe as file names (an id is data, and
    `../x` must not write outside the corpus folder)."""
    docs = {}
    for doc in [*repo.insights.values(), *repo.recommendations.values(), *repo.reports]:
        if doc["study"] in held_groups or not doc["body"]:
            continue
        ident = str(doc.get("id") or f"RPT-{doc['study']}")
        study = repo.studies[doc["study"]]
        docs[ident] = (
            f"# {ident}: {doc.get('title', '')}\n\nStudy {study['id']}: {study.get('title', '')}\n\n{doc['body']}\n"
        )
    for doc in repo.terms:
        rejected = id_list(doc.get("rejected"))
        avoid = f"We do not say: {', '.join(rejected)}.\n\n" if rejected else ""
        docs["term-" + "-".join(str(doc["term"]).lower().split())] = f"# {doc['term']}\n\n{avoid}{doc['body']}\n"
    for doc in repo.documents:  # whole documents: retrieval cuts long ones into windows
        if doc.meta["_group"] not in held_groups:
            text = doc.text.strip()
            docs[doc.source] = text if text.startswith("# ") or not doc.title else f"# {doc.title}\n\n{text}"
            docs[doc.source] += "\n"
    for doc in repo.export_insights:
        if doc["_group"] not in held_groups and doc.get("text"):
            docs[f"insight-{doc.get('id') or doc['source'] + '-' + str(doc['line'])}"] = (
                f"# {doc.get('title', '')}\n\n{doc['text']}\n"
            )
    named = {}
    for ident, text in sorted(docs.items()):
        stem = re.sub(r"[^\w.-]+", "-", ident).strip(".-")[:120] or "document"
        name, n = f"{stem}.md", 1
        while name in named:  # two ids that differ only in unsafe characters
            n += 1
            name = f"{stem}-{n}.md"
        named[name] = text
    return named


def _write_all(out: Path, files: dict[str, str]) -> None:
    """Write every output or none: staged in a temp folder inside `out`, then renamed into place (a
    rename needs no space). A full disk or a crash leaves the previous import as it was."""
    out.mkdir(parents=True, exist_ok=True)
    data = {name: text.encode("utf-8") for name, text in files.items()}
    need = sum(len(b) for b in data.values()) + 4096 * len(data)  # + a block per file
    check_space(out, need, "the imported dataset")
    stage = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    try:
        try:
            (stage / "corpus").mkdir()
            for name, blob in data.items():
                (stage / name).write_bytes(blob)
        except OSError as exc:
            if not is_disk_full(exc, out):
                raise
            raise disk_full_error(out, need, "the imported dataset") from exc
        # the corpus folder is replaced whole: a re-import must not keep documents of a previous split
        old = out / f"{stage.name}-old-corpus"
        if (out / "corpus").is_dir() and not (out / "corpus").is_symlink():
            os.replace(out / "corpus", old)
        os.replace(stage / "corpus", out / "corpus")
        for name in data:
            if "/" not in name:
                os.replace(stage / name, out / name)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _style(repo: Repo) -> str:
    parts = [repo.style or "# House style\n\nNo style guide (style.md) was found in the sources."]
    if repo.templates:
        parts.append(
            "## The templates, verbatim\n\nEach file in the repository's templates folder, as the team wrote it."
        )
        for name, doc in sorted(repo.templates.items()):
            parts.append(f"### {name}\n\n```\n{doc['body']}\n```")
    return "\n\n".join(parts) + "\n"


def _config(examples: list[dict]) -> str:
    """A config ready for `tunesmith train`; data paths are relative to it (config.py anchors them)."""
    from tunesmith.models import DEFAULT_MODEL

    # About 3.5 characters per token for English under small models' BPE vocabularies, plus the
    # chat template; rounded up so the longest example fits. `tunesmith check` measures exactly.
    longest = max(sum(len(m["content"]) for m in ex["messages"]) for ex in examples)
    max_len = max(1024, math.ceil((longest / 3.5 + 64) / 256) * 256)
    return (
        "# Written by `tunesmith import`. Paths are relative to this file; `tunesmith config` lists every key.\n"
        f"model:\n  name: {DEFAULT_MODEL}\n"
        "data:\n  train: train.jsonl\n  heldout: heldout.jsonl\n  corpus: corpus\n  glossary: glossary.yaml\n"
        f"  style: style.md\n  max_len: {max_len}\n"
        "train:\n  method: lora\n  epochs: 3\n  batch_size: 4\n  lr: 0.0002\n  warmup_steps: 10\n"
    )


# ------------------------------------------------------------------------------------------ CLI


def cli_import(args) -> int:
    """tunesmith import SRC… -o DIR"""
    s = import_repository(
        args.sources,
        args.out,
        args.heldout_fraction,
        args.seed,
        args.csv_preset,
        args.csv_map,
        getattr(args, "style", ""),
        getattr(args, "group_by", "document"),
        _teacher(getattr(args, "config", "")),
    )
    shapes: dict[tuple, list[str]] = {}  # tables read the same way are printed once
    for source, kind, columns, guessed in s["tables"]:
        shapes.setdefault((kind, tuple(columns.items()), guessed), []).append(source)
    for (kind, columns, guessed), names in shapes.items():
        shown = ", ".join(f"{f}={c!r}" for f, c in columns)
        how = "guessed from its columns; --csv-map overrides" if guessed else "as mapped"
        more = f" and {len(names) - 1} more like it" if len(names) > 1 else ""
        print(f"{names[0]}{more}: {kind}" + (f" ({how}): {shown}" if columns else ""))
    for line in s["warnings"]:
        print(f"warning: {line}")
    for source, what, fix in s["skipped"]:
        print(f"skipped {source}: {what}. fix: {fix}.")
    read = ", ".join(f"{n} {k}" for k, n in s["read"].items() if n)
    print(f"read {read}")
    held = ", ".join(s["heldout_groups"][:6]) or "none"
    more = f" and {len(s['heldout_groups']) - 6} more" if len(s["heldout_groups"]) > 6 else ""
    print(f"examples: {s['train']} train, {s['heldout']} held out (held-out groups: {held}{more})\n")
    width = max(len(t) for t in s["tasks"])
    print(f"  {'task':<{width}}  train  held-out")
    for task, (tr, ho) in s["tasks"].items():
        print(f"  {task:<{width}}  {tr:>5}  {ho:>8}")
    if s["teacher"]:
        t = s["teacher"]
        print(
            f"\nteacher: {t['requests']} requests ({t['retries']} retries), {t['cached']} answered from the cache; "
            f"{t['prompt_tokens']:,} prompt + {t['completion_tokens']:,} completion tokens, ${t['cost_usd']:.4f}"
        )
        for task, c in t["filters"].items():
            print(f"  {task}: " + ", ".join(f"{n} {k}" for k, n in c.items()))
    out = Path(s["out"])
    print(
        f"\nwrote {out / 'train.jsonl'}, {out / 'heldout.jsonl'}, {out / 'corpus'}/ ({s['corpus']} documents), "
        f"{out / 'glossary.yaml'}, {out / 'style.md'}, {out / 'config.yaml'}"
    )
    if s["skipped"]:
        reasons: dict[str, int] = {}
        for _, what, _ in s["skipped"]:
            reason = what.split(" (")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        print(f"skipped {len(s['skipped'])} file(s): " + "; ".join(f"{n} {r}" for r, n in reasons.items()))
    print(f"next: tunesmith check {out / 'config.yaml'}   then   tunesmith train {out / 'config.yaml'}")
    return 0


def _teacher(config: str):
    """The `teacher:` section of --config, or None."""
    if not config:
        return None
    from tunesmith.config import load_config

    return load_config(config).teacher
