"""Examples from a team's documents and exports, no teacher: every response is text the team wrote.

    from tunesmith.data.documents import outline, document_examples, guess_columns
    title, intro, sections = outline(doc)
    examples = document_examples(doc, group="reports/checkout.docx")
    kind, columns = guess_columns(["Highlight ID", "Highlight", "Participant", "Project"])

A document (any format, once readers.py has made it markdown) is a title, an introduction and
sections at its top heading level. It gives three tasks: write one section from the title, the
summary and the other sections; write the summary from the body; write the title from the body.
A table (CSV, XLSX or a markdown pipe table) is recognised by its column names: a glossary, a
research tool's highlights or insights export, or ready-made question/answer pairs. The names each
field goes by are below, lower case with spaces and punctuation dropped; `--csv-map` overrides.
"""

from __future__ import annotations

import re

# A section whose heading says it summarises the document.
SUMMARY = re.compile(
    r"^(executive summary|summary|tl;? ?dr|abstract|overview|key findings|key takeaways|at a glance|in brief|"
    r"in short|synopsis)$",
    re.I,
)
MIN_WORDS = 12  # a section shorter than this is a caption or a stub, not writing to learn from
CONTEXT_WORDS = 60  # each other section, as context for writing one
BODY_WORDS = 700  # the body given for a summary or a title

# the project or study a row belongs to, the same in a highlights sheet and an insights sheet
GROUP_HEADERS = ["project", "projecttitle", "projectname", "study", "studyid", "researchproject", "board", "collection"]

# kind -> field -> the header names it goes by (normalised: lower case, letters and digits only).
# A kind is recognised when its required fields are all found (see KIND_NEEDS).
COLUMNS = {
    "glossary": {
        "term": ["term", "glossaryterm", "preferredterm", "word", "phrase", "concept", "useterm", "weuse", "use"],
        "definition": ["definition", "meaning", "whatitmeans", "description", "explanation", "definitionmeaning"],
        "rejected": [
            "dontuse",
            "donotuse",
            "avoid",
            "rejected",
            "rejectedterms",
            "rejectedvariants",
            "insteadof",
            "deprecated",
            "notthis",
            "wedontsay",
            "dontsay",
            "donotsay",
            "wordstoavoid",
            "synonymstoavoid",
            "variantstoavoid",
        ],
    },
    "highlights": {
        "id": ["highlightid", "id", "noteid", "quoteid", "ref", "reference", "key"],
        "text": ["highlight", "highlighttext", "note", "notetext", "quote", "excerpt", "snippet", "text", "content"],
        "participant": ["participant", "participantname", "speaker", "interviewee", "respondent", "customer", "person"],
        "tags": ["tags", "tag", "labels", "codes", "themes"],
        "group": GROUP_HEADERS,
        "date": ["created", "createdat", "createddate", "date", "timestamp"],
        "insight": ["insight", "insights", "linkedinsight", "linkedinsights", "insighttitle"],
    },
    "insights": {
        "id": ["insightid", "id", "ref", "key"],
        "title": ["insight", "insighttitle", "title", "headline", "name"],
        "text": ["description", "insightdescription", "details", "body", "summary", "content", "text", "explanation"],
        "links": [
            "highlights",
            "linkedhighlights",
            "highlightids",
            "supportinghighlights",
            "evidence",
            "supportingevidence",
            "linkednotes",
            "notes",
            "quotes",
        ],
        "group": GROUP_HEADERS,
        "tags": ["tags", "tag", "labels", "themes"],
    },
    "examples": {
        "user": ["question", "prompt", "instruction", "input", "user", "query"],
        "assistant": ["answer", "response", "output", "completion", "assistant", "reply"],
        "id": ["id"],
        "group": ["group", "topic", "category"],
    },
}
# Tried in this order: a glossary's "description" must not make it an insights table, an insight
# that lists its highlights is surely one, and a highlight's own text column comes before an
# insight's title and text.
KIND_NEEDS = [
    ("glossary", lambda f: "term" in f and ("definition" in f or "rejected" in f)),
    ("insights", lambda f: "title" in f and "links" in f),
    ("highlights", lambda f: "text" in f),
    ("insights", lambda f: "title" in f and "text" in f),
    ("examples", lambda f: "user" in f and "assistant" in f),
]


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


def guess_columns(header: list[str]) -> tuple[str | None, dict[str, str]]:
    """(kind, {field: column header}) for a table's header; (None, {}) when no kind fits."""
    normal = {_norm(h): h for h in reversed(header) if h}  # the first of two equal names wins
    for kind, needs in KIND_NEEDS:
        found: dict[str, str] = {}
        for name, aliases in COLUMNS[kind].items():
            hit = next((normal[a] for a in aliases if a in normal and normal[a] not in found.values()), None)
            if hit:
                found[name] = hit
        if needs(found):
            return kind, found
    return None, {}


def kind_of_map(mapping: dict[str, str]) -> str:
    """The table kind a `--csv-map` names by its fields."""
    if "user" in mapping or "assistant" in mapping:
        return "examples"
    if "term" in mapping:
        return "glossary"
    if "title" in mapping or "links" in mapping:
        return "insights"
    return "highlights"


def split_list(cell: str) -> list[str]:
    """A cell holding several values: "a, b", "a; b" or one per line."""
    return [v.strip() for v in re.split(r"[;,\n]", cell or "") if v.strip()]


# ------------------------------------------------------------------------------------ documents


def outline(doc) -> tuple[str, list, list]:
    """(title, intro lines, sections) of a document; a section is {heading, lines, page}.

    The title is the document's own (its metadata) or its first heading when that heading is the only
    one of its level; sections are cut at the shallowest heading level left."""
    lines = list(doc.lines)
    heads = [(i, len(m.group(1)), m.group(2).strip()) for i, (_, ln) in enumerate(lines) if (m := _HEAD.match(ln))]
    title = doc.title
    first = next((i for i, (_, ln) in enumerate(lines) if ln.strip()), None)
    if heads and heads[0][0] == first:
        _, level, text = heads[0]
        same_level = sum(h[1] == level for h in heads)
        if same_level == 1 or text.lower() == title.lower():
            title = title or text
            heads = heads[1:]
            lines[first] = (lines[first][0], "")
    if not heads:
        return title, lines, []
    top = min(h[1] for h in heads)
    cuts = [h for h in heads if h[1] == top]
    sections = []
    for n, (i, _, heading) in enumerate(cuts):
        end = cuts[n + 1][0] if n + 1 < len(cuts) else len(lines)
        body = lines[i + 1 : end]
        page = next((p for p, ln in lines[i:end] if p is not None), None)
        sections.append({"heading": heading, "lines": body, "page": page})
    return title, lines[: cuts[0][0]], sections


_HEAD = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def _text(lines: list) -> str:
    return re.sub(r"\n{3,}", "\n\n", "\n".join(ln for _, ln in lines)).strip()


def _words(text: str, limit: int) -> str:
    words = text.split(" ")
    return text if len(words) <= limit else " ".join(words[:limit]) + " …"


def document_examples(doc, group: str) -> list[dict]:
    """section writing, summary from body and title from body, for one document."""
    title, intro, sections = outline(doc)
    name = title or doc.source.rsplit("/", 1)[-1]
    secs = [{**s, "text": _text(s["lines"])} for s in sections]
    summary = next((s for s in secs if SUMMARY.match(s["heading"]) and s["text"]), None)
    body_parts = ([_text(intro)] if _text(intro) else []) + [
        f"## {s['heading']}\n\n{s['text']}" for s in secs if s is not summary and s["text"]
    ]
    body = "\n\n".join(body_parts)
    out = []

    def example(task, key, user, assistant, section=None, page=None):
        meta = {"source": doc.source, "id": f"{task}:{doc.source}#{key}", "group": group, "task": task}
        if section:
            meta["section"] = section
        if page is not None:
            meta["page"] = page
        out.append(
            {
                "messages": [
                    {"role": "user", "content": user.strip()},
                    {"role": "assistant", "content": assistant.strip()},
                ],
                "meta": meta,
            }
        )

    for s in secs:
        if s is summary or len(s["text"].split()) < MIN_WORDS:
            continue
        context = [f'Document: "{name}"']
        if summary and summary is not s:
            context.append(f"Summary:\n{summary['text']}")
        others = [o for o in secs if o is not s and o is not summary and o["text"]]
        if others:
            context.append(
                "The other sections:\n"
                + "\n\n".join(f"## {o['heading']}\n{_words(o['text'], CONTEXT_WORDS)}" for o in others)
            )
        example(
            "section",
            _slug(s["heading"]),
            f'Write the "{s["heading"]}" section of "{name}", in our house style.\n\n' + "\n\n".join(context),
            s["text"],
            section=s["heading"],
            page=s["page"],
        )
    if summary and len(body.split()) >= 2 * MIN_WORDS:
        example(
            "summary",
            _slug(summary["heading"]),
            f'Write the {summary["heading"].lower()} of "{name}" from its body.\n\n{_words(body, BODY_WORDS)}',
            summary["text"],
            section=summary["heading"],
            page=summary["page"],
        )
    if title and len(body.split()) >= 2 * MIN_WORDS:
        text = (f"{summary['heading']}:\n{summary['text']}\n\n" if summary else "") + body
        example("title", "title", f"Write the title of this document.\n\n{_words(text, BODY_WORDS)}", title)
    return out


def _slug(text: str) -> str:
    return "-".join(re.sub(r"[^\w\s-]", "", text.lower()).split())[:80]
