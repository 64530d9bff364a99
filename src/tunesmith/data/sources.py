"""Reading a team's sources for `tunesmith import`: folders and .zip files walked, each file to its
reader, tables recognised by their columns, our own repository format checked.

    from tunesmith.data.sources import read_repository
    repo = read_repository(["team-folder/"], style="voice.docx", group_by="folder")

Everything read lands in one `Repo`; repository.py builds the examples from it. A file that cannot
be read is skipped with what went wrong and the fix (`repo.skipped`), never an exception; problems
in our own repository format (a reference to a missing study, a duplicate id) are collected and
raised together, each with its file and line.
"""

from __future__ import annotations

import difflib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith import UserError
from tunesmith.data.documents import guess_columns, kind_of_map, split_list
from tunesmith.data.formats import from_csv_row, parse_map, split_front_matter
from tunesmith.data.readers import DOCUMENT_READERS, Unreadable, markdown_tables, read_csv_table, read_xlsx

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


# File names that describe a folder rather than hold its material.
NOT_MATERIAL = re.compile(r"^(readme|license|licence|changelog|contributing|code_of_conduct)(\.\w+)?$", re.I)
# A style guide says so in its name: style.md, "Voice and tone.docx", writing-guidelines.pdf.
STYLE_NAME = re.compile(r"(^|[\W_])(style|voice|tone|guidelines?)([\W_]|$)", re.I)
OLD_OFFICE = {".doc": ".docx", ".ppt": ".pptx", ".xls": ".xlsx", ".rtf": ".docx", ".odt": ".docx", ".pages": ".docx"}
KNOWN = ".md .txt .docx .pdf .html .pptx .xlsx .csv .jsonl .zip"
ZIP_LIMIT = 2 << 30  # bytes unpacked from one .zip: a zip bomb is refused, not unpacked


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
    documents: list = field(default_factory=list)  # readers.Doc, each with its split group in .meta["_group"]
    export_insights: list = field(default_factory=list)  # insights from a research tool's export
    tables: list = field(default_factory=list)  # (source, kind, {field: column}, guessed?) as printed
    skipped: list = field(default_factory=list)  # (source, what, fix)
    warnings: list = field(default_factory=list)  # "source: what" for files read in part
    errors: list = field(default_factory=list)


# ------------------------------------------------------------------------------------- reading


def read_repository(
    sources: list, csv_preset: str = "auto", csv_map: str = "", style: str = "", group_by: str = "document"
) -> Repo:
    """Read every source (folders walked in sorted order, a .zip as a folder). Unreadable files are
    skipped, each with what and the fix; problems in our own repository format are collected and
    raised together."""
    if csv_preset != "auto" and csv_preset not in CSV_PRESETS:
        raise UserError(f"unknown --csv-preset '{csv_preset}'. fix: auto or one of {', '.join(CSV_PRESETS)}.")
    if group_by not in ("document", "folder"):
        raise UserError(f"unknown --group-by '{group_by}'. fix: document or folder.")
    mapping = parse_map(csv_map) if csv_map else CSV_PRESETS.get(csv_preset)
    repo, tables = Repo(), []
    style_path = Path(style).resolve() if style else None
    if style_path:
        if not style_path.is_file():
            raise UserError(f"--style {style}: not found. fix: pass the style guide's file.")
        _read_style(repo, style_path, style_path.name)
    with tempfile.TemporaryDirectory(prefix="tunesmith-import-") as unpacked:
        for f, label, named in _walk(sources, Path(unpacked), repo):
            if style_path and f.resolve() == style_path:
                continue
            try:
                _read_file(repo, f, label, named, tables, group_by)
            except Unreadable as exc:
                repo.skipped.append((label, exc.what, exc.fix))
            except Exception as exc:  # a damaged file can fail inside a converter with any error
                repo.skipped.append(
                    (label, f"could not be read ({type(exc).__name__}: {exc})"[:200], "open and save it again")
                )
        # CSV highlights take their study from the study.md in their folder, so read them last.
        study_dirs = {doc["_dir"]: sid for sid, doc in repo.studies.items()}
        fitted = [t for t in tables if mapping and all(c in t.header for c in mapping.values())]
        if mapping and csv_map and not fitted:
            for t in tables:
                missing = [c for c in mapping.values() if c not in t.header]
                repo.errors.append(
                    f"{t.source}:1: no column {', '.join(repr(c) for c in missing)} "
                    f"(columns: {', '.join(t.header)}). fix: correct the column map."
                )
        else:
            for t in tables:
                if t in fitted:
                    _read_table(repo, t, kind_of_map(mapping), mapping, study_dirs, guessed=False)
                else:
                    kind, columns = guess_columns(t.header)
                    if kind is None:
                        repo.skipped.append(
                            (
                                t.source,
                                f"columns not recognised ({', '.join(t.header[:8])})",
                                "name them with --csv-map, e.g. text=Highlight,group=Project or term=Term,"
                                "definition=Meaning",
                            )
                        )
                    else:
                        _read_table(repo, t, kind, columns, study_dirs, guessed=True)
    _check_references(repo)
    if repo.errors:
        shown = "\n".join(f"  {e}" for e in repo.errors[:30])
        more = f"\n  … and {len(repo.errors) - 30} more" if len(repo.errors) > 30 else ""
        raise UserError(f"the repository has {len(repo.errors)} problem(s):\n{shown}{more}")
    return repo


def _walk(sources: list, unpacked: Path, repo: Repo):
    """(path, label, named on the command line) for every file; a .zip is unpacked and walked."""
    for src in map(Path, sources):
        if not src.exists():
            raise UserError(f"{src}: not found. fix: pass a folder, a .zip, or document/CSV/JSONL files.")
        if src.is_dir():
            yield from _walk_dir(src, src.name, unpacked, repo)
        elif src.suffix.lower() == ".zip":
            yield from _walk_zip(src, src.name, unpacked, repo)
        else:
            yield src, src.name, True


def _walk_dir(folder: Path, name: str, unpacked: Path, repo: Repo):
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if not f.is_file() or any(part.startswith((".", "__MACOSX")) for part in rel.parts):
            continue
        label = f"{name}/{rel.as_posix()}"
        if f.suffix.lower() == ".zip":
            yield from _walk_zip(f, label, unpacked, repo)
        else:
            yield f, label, False


def _walk_zip(path: Path, label: str, unpacked: Path, repo: Repo):
    """A .zip's files, unpacked into a temp folder under safe names (a member named ../x stays inside)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > ZIP_LIMIT:
                repo.skipped.append((label, "unpacks to more than 2 GB", "unpack it and import the folder"))
                return
            target = Path(tempfile.mkdtemp(dir=unpacked))
            for m in members:
                parts = [p for p in m.filename.replace("\\", "/").split("/") if p not in ("", ".", "..")]
                if not parts:
                    continue
                out = target.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(m))
    except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as exc:
        what = "encrypted" if "encrypted" in str(exc) else f"not a readable .zip ({exc})"
        repo.skipped.append((label, what, "zip it again without a password, or import the folder"))
        return
    yield from _walk_dir(target, label.removesuffix(".zip").removesuffix(".ZIP"), unpacked, repo)


def _read_file(repo: Repo, f: Path, label: str, named: bool, tables: list, group_by: str) -> None:
    suffix = f.suffix.lower()
    if NOT_MATERIAL.match(f.name):
        repo.skipped.append((label, "describes the folder, not the team's material", "nothing to do"))
        return
    if suffix == ".md" and _read_markdown(repo, f, label):
        return  # our own repository format
    if suffix == ".csv":
        tables.append(read_csv_table(f, label))
    elif suffix in (".xlsx", ".xlsm"):
        tables.extend(read_xlsx(f, label))
    elif suffix == ".jsonl" or (suffix == ".json" and named):
        _read_examples(repo, f, label)
    elif suffix == ".json":
        # A .json file inside a folder is more often tool metadata than a dataset.
        repo.skipped.append((label, "a .json file inside a folder", "name it on the command line if it is examples"))
    elif suffix in DOCUMENT_READERS:
        if f.stat().st_size == 0:
            raise Unreadable("empty", "remove it, or export it again with its text")
        if STYLE_NAME.search(f.stem):
            _read_style(repo, f, label)
            return
        doc = DOCUMENT_READERS[suffix](f, label)
        repo.warnings += [f"{label}: {w}" for w in doc.warnings]
        glossary = [t for t in markdown_tables(doc) if guess_columns(t.header)[0] == "glossary"]
        if glossary:  # a glossary kept as a markdown table
            tables.extend(glossary)
            return
        doc.meta["_group"] = label if group_by == "document" else label.rsplit("/", 1)[0]
        repo.documents.append(doc)
    elif suffix in OLD_OFFICE:
        raise Unreadable(f"an old {suffix} file", f"save it as {OLD_OFFICE[suffix]}")
    else:
        raise Unreadable("not a known file type", f"convert it to one of {KNOWN}")


def _read_style(repo: Repo, path: Path, label: str) -> None:
    reader = DOCUMENT_READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{label}: a style guide must be one of {', '.join(DOCUMENT_READERS)}.")
    doc = reader(path, label)
    text = doc.text.strip()
    if doc.title and not text.startswith("# "):
        text = f"# {doc.title}\n\n{text}"
    repo.style = f"{repo.style}\n\n{text}".strip()
    repo.tables.append((label, "style guide", {}, False))


def _read_markdown(repo: Repo, path: Path, label: str) -> bool:
    """A file of our repository format (front matter with a `type:` we know): read it and say True.
    Anything else is a document for readers.py (False)."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    try:
        meta, body, body_line = split_front_matter(text, label)
    except UserError:
        return False  # not our front matter: any document may start with ---
    if meta is None or "type" not in meta:
        return False
    kind = TYPE_ALIASES.get(str(meta["type"]).lower(), str(meta["type"]).lower())
    if kind not in REQUIRED:
        close = difflib.get_close_matches(kind, REQUIRED, n=1, cutoff=0.8)
        if close:  # a typo in our format, not another tool's front matter
            repo.errors.append(f"{label}:{_key_line(text, 'type')}: unknown type '{meta['type']}'. fix: {close[0]}?")
            return True
        return False
    missing = [k for k in REQUIRED[kind] if not meta.get(k)]
    if missing:
        repo.errors.append(f"{label}:2: a {kind} needs {', '.join(missing)} in its front matter.")
        return True
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
            return True
        table[doc["id"]] = doc
    elif kind == "report":
        repo.reports.append(doc)
    elif kind == "term":
        repo.terms.append(doc)
    else:
        repo.templates[str(meta["name"])] = doc
    return True


def _read_table(repo: Repo, table, kind: str, columns: dict, study_dirs: dict, guessed: bool) -> None:
    """The rows of a recognised table: glossary terms, highlights, export insights or examples."""
    label = table.source
    repo.tables.append((label, kind, columns, guessed))
    rows = [(line, {f: row.get(col, "").strip() for f, col in columns.items()}) for line, row in table.rows]
    if kind == "examples":
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
    elif kind == "glossary":
        for line, row in rows:
            if row.get("term") and (row.get("definition") or row.get("rejected")):
                repo.terms.append(
                    {
                        "term": row["term"],
                        "rejected": split_list(row.get("rejected", "")),
                        "body": row.get("definition", ""),
                        "source": label,
                        "row": line,
                    }
                )
    elif kind == "insights":
        for line, row in rows:
            if row.get("title") or row.get("text"):
                repo.export_insights.append({**row, "source": label, "line": line})
    else:
        here = table.path.parent if table.path else None
        study = next((study_dirs[d] for d in (here, *here.parents) if d in study_dirs), None) if here else None
        for line, row in rows:
            hid, text = row.get("id", ""), row.get("text", "")
            if not text or (not hid and not guessed):
                if not guessed:
                    repo.errors.append(f"{label}:{line}: a highlight needs an id and a text.")
                continue
            hid = hid or f"{label}:{line}"
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
        missing = [h for h in id_list(doc.get("highlights")) if h not in repo.highlights]
        if missing:
            repo.errors.append(
                f"{doc['source']}:{_key_line(doc['_text'], 'highlights')}: highlights not found: "
                f"{', '.join(missing)}. fix: correct the ids or add the highlights."
            )
    for doc in repo.recommendations.values():
        missing = [i for i in id_list(doc.get("insights")) if i not in repo.insights]
        if missing:
            repo.errors.append(
                f"{doc['source']}:{_key_line(doc['_text'], 'insights')}: insights not found: "
                f"{', '.join(missing)}. fix: correct the ids."
            )


def id_list(value) -> list[str]:
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
