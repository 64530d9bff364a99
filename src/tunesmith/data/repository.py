"""`tunesmith import`: a research repository → training and held-out chat examples, a retrieval
corpus, the glossary, the house style guide and a ready config.

    tunesmith import src/tunesmith/examples/pantry -o data/
    tunesmith import notes/ highlights.csv extra.jsonl -o data/ --csv-preset generic --csv-map id=ID,text=Note,group=Study

A repository is markdown files with YAML front matter (`type:` study, highlight, insight,
recommendation, report, term, template), a `style.md` house style guide, CSV exports of highlights,
and ready-made examples in any format `tunesmith check` reads. Builders turn it into instruction →
response pairs whose response is always the team's own text; the split is by study, so no study
is on both sides. Output is deterministic: the same sources give byte-identical files.
The format of the bundled example repository is described in its README.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith import UserError
from tunesmith.data.formats import from_csv_row, jsonl_text, parse_map, read_csv, split_front_matter
from tunesmith.data.split import split_heldout
from tunesmith.fsutil import check_space, disk_full_error, is_disk_full

TYPE_ALIASES = {"glossary term": "term", "glossary-term": "term", "glossary": "term"}
REQUIRED = {  # type -> front matter keys it must have
    "study": ("id",),
    "highlight": ("id",),
    "insight": ("id", "study"),
    "recommendation": ("id", "study", "insights"),
    "report": ("study",),
    "term": ("term",),
    "template": ("name",),
}
# CSV column maps: field -> column header. A map with user/assistant columns gives examples;
# one with id/text columns gives highlights.
CSV_PRESETS = {
    "highlights": {
        "id": "Highlight ID",
        "participant": "Participant",
        "text": "Note",
        "tags": "Tags",
        "date": "Created",
    },
    "generic": {"id": "id", "text": "text"},
}


@dataclass
class Repo:
    """Everything read from the sources. A doc is its front matter plus body, source and line."""

    studies: dict = field(default_factory=dict)
    highlights: dict = field(default_factory=dict)
    insights: dict = field(default_factory=dict)
    recommendations: dict = field(default_factory=dict)
    reports: list = field(default_factory=list)
    terms: list = field(default_factory=list)
    templates: dict = field(default_factory=dict)
    style: str = ""
    examples: list = field(default_factory=list)  # ready-made, from JSONL or chat CSV
    skipped: list = field(default_factory=list)
    errors: list = field(default_factory=list)


# ------------------------------------------------------------------------------------- reading


def read_repository(sources: list, csv_preset: str = "highlights", csv_map: str = "") -> Repo:
    """Read every source (directories are walked in sorted order); collect all errors, then raise."""
    if csv_preset not in CSV_PRESETS:
        raise UserError(f"unknown --csv-preset '{csv_preset}'. fix: one of {', '.join(CSV_PRESETS)}.")
    mapping = parse_map(csv_map) if csv_map else CSV_PRESETS[csv_preset]
    repo, csv_files = Repo(), []
    for src in map(Path, sources):
        if not src.exists():
            raise UserError(f"{src}: not found. fix: pass a repository directory or markdown/CSV/JSONL files.")
        root = src if src.is_dir() else src.parent
        files = (
            sorted(
                p
                for p in src.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
            )
            if src.is_dir()
            else [src]
        )
        for f in files:
            label = f"{root.name}/{f.relative_to(root).as_posix()}" if src.is_dir() else f.name
            suffix = f.suffix.lower()
            if suffix == ".md":
                _read_markdown(repo, f, label)
            elif suffix == ".csv":
                csv_files.append((f, label))
            elif suffix == ".jsonl" or (suffix == ".json" and not src.is_dir()):
                # A .json file inside a folder is more often tool metadata than a dataset: only
                # one named on the command line is read as examples.
                _read_examples(repo, f, label)
            else:
                repo.skipped.append(label)
    # CSV highlights take their study from the study.md in their folder, so read them last.
    study_dirs = {doc["_dir"]: sid for sid, doc in repo.studies.items()}
    for f, label in csv_files:
        _read_csv(repo, f, label, mapping, study_dirs)
    _check_references(repo)
    if repo.errors:
        shown = "\n".join(f"  {e}" for e in repo.errors[:30])
        more = f"\n  … and {len(repo.errors) - 30} more" if len(repo.errors) > 30 else ""
        raise UserError(f"the repository has {len(repo.errors)} problem(s):\n{shown}{more}")
    return repo


def _read_markdown(repo: Repo, path: Path, label: str) -> None:
    text = path.read_text(encoding="utf-8-sig")
    try:
        meta, body, body_line = split_front_matter(text, label)
    except UserError as exc:
        repo.errors.append(str(exc))
        return
    if meta is None or "type" not in meta:
        if path.name.lower() == "style.md":
            repo.style = body.strip()
        else:
            repo.skipped.append(label)
        return
    kind = TYPE_ALIASES.get(str(meta["type"]).lower(), str(meta["type"]).lower())
    if kind not in REQUIRED:
        repo.errors.append(
            f"{label}:{_key_line(text, 'type')}: unknown type '{meta['type']}'. fix: one of {', '.join(REQUIRED)}."
        )
        return
    missing = [k for k in REQUIRED[kind] if not meta.get(k)]
    if missing:
        repo.errors.append(f"{label}:2: a {kind} needs {', '.join(missing)} in its front matter.")
        return
    doc = {**meta, "body": body.strip(), "source": label, "line": body_line, "_text": text, "_dir": path.parent}
    for key in ("id", "study"):
        if key in doc:
            doc[key] = str(doc[key])
    table = {
        "study": repo.studies,
        "highlight": repo.highlights,
        "insight": repo.insights,
        "recommendation": repo.recommendations,
    }.get(kind)
    if table is not None:
        if doc["id"] in table:
            repo.errors.append(
                f"{label}:{_key_line(text, 'id')}: id {doc['id']} is also used by {table[doc['id']]['source']}. "
                f"fix: ids must be unique."
            )
            return
        table[doc["id"]] = doc
    elif kind == "report":
        repo.reports.append(doc)
    elif kind == "term":
        repo.terms.append(doc)
    else:
        repo.templates[str(meta["name"])] = doc


def _read_csv(repo: Repo, path: Path, label: str, mapping: dict, study_dirs: dict) -> None:
    try:
        rows = list(read_csv(path, mapping))
    except UserError as exc:
        repo.errors.append(str(exc).replace(str(path), label))
        return
    if "user" in mapping or "assistant" in mapping:  # a CSV of ready-made examples
        for line, row in rows:
            example, problems = from_csv_row(row)
            if problems:
                repo.errors += [f"{label}:{line}: {code}: {text}" for code, text in problems]
                continue
            example["meta"] = {
                "source": label,
                "id": row.get("id") or f"{label}:{line}",
                "group": row.get("group") or f"{label}:{line}",
                "task": "example",
            }
            repo.examples.append(example)
        return
    study = next((study_dirs[d] for d in (path.parent, *path.parents) if d in study_dirs), None)
    for line, row in rows:
        hid, text = row.get("id", "").strip(), row.get("text", "").strip()
        if not hid or not text:
            repo.errors.append(f"{label}:{line}: a highlight needs an id and a text.")
            continue
        if hid in repo.highlights:
            repo.errors.append(f"{label}:{line}: highlight id {hid} is also in {repo.highlights[hid]['source']}.")
            continue
        repo.highlights[hid] = {
            **row,
            "id": hid,
            "body": text,
            "study": row.get("group") or study,
            "source": label,
            "line": line,
        }


def _read_examples(repo: Repo, path: Path, label: str) -> None:
    from tunesmith.data.validate import errors, read_dataset

    ds = read_dataset(path)
    repo.errors += [str(i).replace(str(path), label) for i in errors(ds.issues)]
    for ex, line in zip(ds.examples, ds.lines):
        meta = ex["meta"]
        ex["meta"] = {
            **meta,
            "source": meta.get("source") or label,
            "id": str(meta.get("id") or f"{label}:{line}"),
            "group": str(meta.get("group") or f"{label}:{line}"),
            "task": meta.get("task") or "example",
        }
        repo.examples.append(ex)


def _check_references(repo: Repo) -> None:
    for doc in [*repo.insights.values(), *repo.recommendations.values(), *repo.reports]:
        if doc["study"] not in repo.studies:
            repo.errors.append(
                f"{doc['source']}:{_key_line(doc['_text'], 'study')}: study {doc['study']} is not in the "
                f"repository. fix: add its study.md, or correct the id."
            )
    for doc in repo.insights.values():
        missing = [h for h in _ids(doc.get("highlights")) if h not in repo.highlights]
        if missing:
            repo.errors.append(
                f"{doc['source']}:{_key_line(doc['_text'], 'highlights')}: highlights not found: "
                f"{', '.join(missing)}. fix: correct the ids or add the highlights."
            )
    for doc in repo.recommendations.values():
        missing = [i for i in _ids(doc.get("insights")) if i not in repo.insights]
        if missing:
            repo.errors.append(
                f"{doc['source']}:{_key_line(doc['_text'], 'insights')}: insights not found: "
                f"{', '.join(missing)}. fix: correct the ids."
            )


def _ids(value) -> list[str]:
    if value is None:
        return []
    return (
        [str(v) for v in value] if isinstance(value, list) else [s.strip() for s in str(value).split(",") if s.strip()]
    )


def _key_line(text: str, key: str) -> int:
    """The 1-based line of `key:` in a file's front matter (1 when it is not there)."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:"):
            return n
    return 1


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
        hl = [repo.highlights[h] for h in _ids(doc.get("highlights"))]
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
        cited = [repo.insights[i] for i in _ids(doc["insights"])]
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
        rejected = _ids(doc.get("rejected"))
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


# builder name -> function(repo) -> examples. Each response is text the team wrote.
BUILDERS = {
    "insights": build_insights,
    "recommendations": build_recommendations,
    "report sections": build_report_sections,
    "definitions": build_definitions,
}


# ------------------------------------------------------------------------------------ split and write


def import_repository(
    sources: list,
    out: str | Path,
    heldout_fraction: float = 0.15,
    seed: int = 0,
    csv_preset: str = "highlights",
    csv_map: str = "",
) -> dict:
    """Read, build, split and write; returns a summary (counts, held-out groups, files written)."""
    if not 0 <= heldout_fraction < 1:
        raise UserError(f"--heldout-fraction must be in [0, 1), got {heldout_fraction}.")
    repo = read_repository(sources, csv_preset, csv_map)
    examples = [ex for build in BUILDERS.values() for ex in build(repo)] + repo.examples
    if not examples:
        raise UserError(
            f"no examples could be built from {', '.join(map(str, sources))}: no insights, "
            f"recommendations, reports, glossary terms or example files found. "
            f"fix: check the `type:` front matter (see the bundled example's README)."
        )
    train, heldout = split_heldout(examples, heldout_fraction, seed)
    held_groups = sorted({g for ex in heldout if (g := (ex.get("meta") or {}).get("group"))})

    terms = [
        {"term": str(d["term"]), "rejected": _ids(d.get("rejected")), "definition": d["body"]}
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
        },
        "train": len(train),
        "heldout": len(heldout),
        "heldout_groups": held_groups,
        "tasks": {
            t: (sum(ex["meta"]["task"] == t for ex in train), sum(ex["meta"]["task"] == t for ex in heldout))
            for t in tasks
        },
        "corpus": corpus,
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
        rejected = _ids(doc.get("rejected"))
        avoid = f"We do not say: {', '.join(rejected)}.\n\n" if rejected else ""
        docs["term-" + "-".join(str(doc["term"]).lower().split())] = f"# {doc['term']}\n\n{avoid}{doc['body']}\n"
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
    s = import_repository(args.sources, args.out, args.heldout_fraction, args.seed, args.csv_preset, args.csv_map)
    read = ", ".join(f"{n} {k}" for k, n in s["read"].items() if n)
    print(f"read {read}")
    held = ", ".join(s["heldout_groups"]) or "none"
    print(f"examples: {s['train']} train, {s['heldout']} held out (held-out groups: {held})\n")
    width = max(len(t) for t in s["tasks"])
    print(f"  {'task':<{width}}  train  held-out")
    for task, (tr, ho) in s["tasks"].items():
        print(f"  {task:<{width}}  {tr:>5}  {ho:>8}")
    out = Path(s["out"])
    print(
        f"\nwrote {out / 'train.jsonl'}, {out / 'heldout.jsonl'}, {out / 'corpus'}/ ({s['corpus']} documents), "
        f"{out / 'glossary.yaml'}, {out / 'style.md'}, {out / 'config.yaml'}"
    )
    if s["skipped"]:
        print(
            f"skipped (no front matter or not a known file type): {', '.join(s['skipped'][:8])}"
            + (f" and {len(s['skipped']) - 8} more" if len(s["skipped"]) > 8 else "")
        )
    print(f"next: tunesmith check {out / 'config.yaml'}   then   tunesmith train {out / 'config.yaml'}")
    return 0
