"""A team's files as they are → markdown documents and tables, for `tunesmith import`.

    from tunesmith.data.readers import DOCUMENT_READERS, Unreadable
    doc = DOCUMENT_READERS[".docx"](Path("reports/checkout.docx"), "reports/checkout.docx")  # a Doc

Each format goes through the kept library of its field, chosen in docs/data.md: python-docx (.docx,
its styles giving headings and lists), pypdf (the text layer of a .pdf, page by page),
readability-lxml (the article of an exported .html page, navigation and boilerplate dropped) with
markdownify (its HTML as markdown), python-pptx (.pptx), openpyxl (.xlsx) and the csv module.
Headings, lists and tables survive as markdown. What is ours is only the glue: front matter of any
kind, the page of each line, and one `Unreadable` (what went wrong, how to fix it) for a corrupt,
encrypted, empty or scanned file, so the import can skip it with one line and read the rest.
Libraries are imported where used: `import` on our own markdown never loads them.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# A Notion export names each page "Title <32 hex digits>.md".
NOTION_ID = re.compile(r"\s+[0-9a-f]{32}$")


class Unreadable(Exception):
    """A file the import skips: `what` went wrong and the `fix`, for the one line it prints."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.what, self.fix = what, fix


@dataclass
class Doc:
    """A document as markdown: `lines` are (page or None, line); `meta` is its front matter or properties."""

    source: str
    lines: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    title: str = ""  # from the document itself (metadata or its first heading); "" when it has none
    warnings: list = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@dataclass
class Table:
    """Rows of a spreadsheet, CSV or markdown table: `rows` are (line or row number, {header: cell})."""

    source: str
    header: list
    rows: list
    path: Path | None = None  # the file it came from (a highlights export takes its study from the folder)


def _html_to_markdown(html: str) -> str:
    from markdownify import markdownify

    # a table without <th> (Word's) takes its first row as the header, as a reader of the table would
    md = markdownify(html, heading_style="ATX", bullets="-", strip=["img"], table_infer_header=True)
    return re.sub(r"\n{3,}", "\n\n", md).strip()


def _doc(source: str, markdown: str, page=None, meta=None) -> Doc:
    return Doc(source, [(page, line.rstrip()) for line in markdown.splitlines()], meta or {})


# ------------------------------------------------------------------------------------- text formats


def read_text(path: Path, source: str) -> Doc:
    """.md / .txt, with YAML (---) or TOML (+++) front matter or none; a Notion page's properties
    (the `Key: value` lines under its title) become its meta."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            raise Unreadable("not text (neither UTF-8 nor Windows-1252)", "save it as UTF-8 text") from None
    text = text.replace("\r\n", "\n")
    meta: dict = {}
    for fence, parse in (("---", yaml.safe_load), ("+++", tomllib.loads)):
        if text.startswith(fence + "\n"):
            end = text.find(f"\n{fence}\n", len(fence))
            if end != -1:
                try:
                    loaded = parse(text[len(fence) + 1 : end + 1])
                except (yaml.YAMLError, tomllib.TOMLDecodeError):
                    loaded = None  # not front matter after all: keep the text whole
                if isinstance(loaded, dict):
                    meta, text = loaded, text[end + len(fence) + 2 :]
            break
    if NOTION_ID.search(path.stem):
        lines = text.lstrip("\n").splitlines()
        if lines and lines[0].startswith("# "):
            n = 1
            while n < len(lines) and (not lines[n].strip() or re.match(r"^[A-Z][\w ]{0,30}: \S", lines[n])):
                if lines[n].strip():
                    key, _, value = lines[n].partition(": ")
                    meta.setdefault(key, value)
                n += 1
            text = "\n".join([lines[0], "", *lines[n:]])
    if not text.strip():
        raise Unreadable("empty", "remove it, or export it again with its text")
    doc = _doc(source, text.strip("\n"), meta=meta)
    doc.title = str(meta.get("title") or "").strip()
    return doc


# Site chrome: a page that has any is a page inside a site (Confluence, a Notion workspace), and
# readability finds its article; a page without (a Google Docs export) is all document.
CHROME = (
    '//nav|//header|//footer|//aside|//*[re:test(@id, "nav|breadcrumb|footer|sidebar|menu|header", "i")]'
    '|//*[re:test(@class, "nav|breadcrumb|footer|sidebar|menu|header", "i")]'
)


def read_html(path: Path, source: str) -> Doc:
    """An exported page (Confluence, Notion, Google Docs): readability keeps the article of a page
    inside a site; a page that is only a document is read whole."""
    from lxml import etree
    from lxml import html as lhtml
    from readability import Document

    raw = path.read_bytes().decode("utf-8", errors="replace")
    if not re.search(r"<[a-zA-Z]", raw):
        raise Unreadable("not HTML", "export the page again as HTML")
    # Google Docs sets its title as <p class="title">: the document's title, and a heading to the reader
    styled = re.compile(r'<p(\s[^>]*class="[^"]*\btitle\b[^"]*"[^>]*)>(.*?)</p>', re.S)
    found = styled.search(raw)
    doc_title = re.sub(r"<[^>]+>", "", found.group(2)).strip() if found else ""
    raw = styled.sub(r"<h1\1>\2</h1>", raw)
    try:
        tree = lhtml.document_fromstring(raw)
    except (etree.ParserError, ValueError):
        raise Unreadable("not HTML", "export the page again as HTML") from None
    if tree.xpath(CHROME, namespaces={"re": "http://exslt.org/regular-expressions"}):
        page = Document(raw)
        # readability's summary drops the page's own <h1> with the site chrome; its title is kept apart
        title = (page.short_title() or "").strip()
        article = page.summary(html_partial=True)
    else:
        for junk in tree.xpath("//script|//style|//noscript|//template"):
            junk.drop_tree()
        title = doc_title or (tree.findtext(".//title") or "").strip()
        article = lhtml.tostring(tree.body if tree.body is not None else tree, encoding="unicode")
    body = _html_to_markdown(article)
    if not body.strip():
        raise Unreadable("no text in the page", "export the page with its content, not only its frame")
    if title and not body.lstrip().startswith("# "):
        body = f"# {title}\n\n{body}"
    doc = _doc(source, body)
    doc.title = title
    return doc


# --------------------------------------------------------------------------------- office formats


def read_docx(path: Path, source: str) -> Doc:
    """Word's own structure as markdown: the Title style `#`, Heading n `#` × (n + 1), list
    paragraphs as bullets, tables as pipe tables, in document order (python-docx reads the file)."""
    import zipfile

    from docx import Document
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table as DocxTable

    try:
        word = Document(str(path))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as exc:
        if _is_ole(path):
            raise Unreadable("encrypted (password-protected)", "save a copy without a password") from None
        raise Unreadable(f"not a readable .docx ({type(exc).__name__})", "open and save it again in Word") from None
    out: list[str] = []
    for block in word.iter_inner_content():
        if isinstance(block, DocxTable):
            rows = [[c.text.strip().replace("\n", " ").replace("|", "\\|") for c in row.cells] for row in block.rows]
            out += ["", *_markdown_table(rows), ""]
            continue
        text = block.text.strip()
        if not text:
            continue
        style = (block.style.name if block.style is not None else "") or ""
        level = _heading_level(style)
        if level:
            out += ["", "#" * level + " " + text, ""]
        elif "List" in style or block._p.pPr is not None and block._p.pPr.numPr is not None:
            depth = block._p.pPr.numPr.ilvl.val if block._p.pPr is not None and block._p.pPr.numPr is not None else 0
            marker = "1." if "Number" in style else "-"
            if out and out[-1].strip() and not re.match(r"^\s*(-|1\.) ", out[-1]):
                out.append("")
            out.append("  " * (depth or 0) + f"{marker} {text}")
        else:
            if out and out[-1].strip() and not out[-1].startswith("#"):
                out.append("")
            out.append(text)
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()
    if not body:
        raise Unreadable("empty", "remove it, or export it again with its text")
    doc = _doc(source, body)
    doc.title = (word.core_properties.title or "").strip()
    return doc


def _heading_level(style: str) -> int:
    if style == "Title":
        return 1
    found = re.fullmatch(r"Heading (\d)", style)
    return min(int(found.group(1)) + 1, 6) if found else 0


def read_pptx(path: Path, source: str) -> Doc:
    """Each slide's title as a `##` heading, its text as paragraphs or bullets, its tables as tables."""
    import zipfile

    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    try:
        deck = Presentation(str(path))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as exc:
        if _is_ole(path):
            raise Unreadable("encrypted (password-protected)", "save a copy without a password") from None
        raise Unreadable(f"not a readable .pptx ({type(exc).__name__})", "open and save it again") from None
    doc = Doc(source)
    doc.title = (deck.core_properties.title or "").strip()
    if doc.title:
        doc.lines += [(None, f"# {doc.title}"), (None, "")]
    for n, slide in enumerate(deck.slides, 1):
        title_shape = slide.shapes.title
        heading = title_shape.text_frame.text.strip() if title_shape is not None else ""
        title_id = title_shape.shape_id if title_shape is not None else None
        out = [f"## {heading or f'Slide {n}'}", ""]
        for shape in slide.shapes:
            if shape.shape_id == title_id:
                continue
            if shape.has_text_frame:
                for p in shape.text_frame.paragraphs:
                    text = "".join(r.text for r in p.runs).strip()
                    if text and len(shape.text_frame.paragraphs) > 1:
                        out.append("  " * p.level + "- " + text)
                    elif text:
                        out.append(text)
                out.append("")
            elif shape.has_table:
                rows = [[c.text.strip().replace("|", "\\|") for c in row.cells] for row in shape.table.rows]
                out += _markdown_table(rows) + [""]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame.text.strip():
            out += [slide.notes_slide.notes_text_frame.text.strip(), ""]
        if len(out) > 2 or heading:
            doc.lines += [(n, line) for line in out]
    if not any(line.strip() for _, line in doc.lines):
        raise Unreadable("no text on any slide", "export the deck with its text, not as pictures")
    return doc


def read_pdf(path: Path, source: str) -> Doc:
    """The text layer, page by page. A line in a larger font than the page's body text becomes a
    heading (`##`, the largest on the first page `#`): a PDF keeps no structure, only sizes."""
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FileNotDecryptedError("password")
        pages = list(reader.pages)
    except (FileNotDecryptedError, NotImplementedError):
        raise Unreadable("encrypted (password-protected)", "save a copy without a password") from None
    except (PdfReadError, ValueError, OSError, KeyError) as exc:
        raise Unreadable(f"not a readable PDF ({exc})", "export it again as PDF") from None
    except Exception as exc:  # a damaged file can fail deep inside the parser with any error
        raise Unreadable(f"not a readable PDF ({type(exc).__name__})", "export it again as PDF") from None
    doc = Doc(source)
    doc.title = str((reader.metadata or {}).get("/Title") or "").strip()
    empty = []
    for n, page in enumerate(pages, 1):
        lines = _pdf_lines(page)
        if not lines:
            empty.append(n)
            continue
        chars: dict[float, int] = {}
        for text, size, _ in lines:
            chars[round(size, 1)] = chars.get(round(size, 1), 0) + len(text)
        body = max(chars, key=chars.get)  # the size most of the page's characters are set in
        top = max(chars)
        first = not any(ln.startswith("# ") for _, ln in doc.lines)
        para: list[str] = []
        for i, (text, size, gap) in enumerate(lines):
            if size > body * 1.15 and len(text.split()) <= 14:
                level = "#" if n == 1 and round(size, 1) == top and first else "##"
                doc.lines += _paragraph(n, para) + [(n, f"{level} {text}"), (n, "")]
                para = []
                continue
            # a gap wider than a line and a half, or a list item, starts a new paragraph
            if para and (gap > body * 1.8 or re.match(r"^([-•*]|\d+[.)])\s", text)):
                doc.lines += _paragraph(n, para)
                para = []
            para.append(text)
        doc.lines += _paragraph(n, para)
    if not doc.lines:
        raise Unreadable(
            f"no text layer on any of its {len(pages)} page(s) (scanned?)",
            "run OCR on it (e.g. ocrmypdf) or export the original document",
        )
    doc.warnings += [f"page {n}: no text layer (scanned?); the page is left out" for n in empty]
    return doc


def _paragraph(page: int, lines: list[str]) -> list[tuple[int, str]]:
    """Lines wrapped by the PDF's layout joined back into one paragraph (list items stay apart)."""
    if not lines:
        return []
    out = [lines[0]]
    for line in lines[1:]:
        if re.match(r"^([-•*]|\d+[.)])\s", line) or " | " in line:
            out.append(line)
        else:
            out[-1] = f"{out[-1]} {line}"
    return [(page, line) for line in out] + [(page, "")]


def _pdf_lines(page) -> list[tuple[str, float, float]]:
    """[(line, font size, gap above it)] of a page's text layer, in reading order."""
    parts: list[tuple[str, float, float]] = []

    def visit(text, cm, tm, font, size):
        scale = abs(tm[3] * cm[3]) or 1.0
        parts.append((text, size * scale, tm[5] * (cm[3] or 1.0) + cm[5]))

    try:
        page.extract_text(visitor_text=visit)
    except Exception:  # a damaged content stream: treat the page as empty
        return []
    lines, current, size, y = [], "", 0.0, None
    for text, s, top in parts:
        for i, piece in enumerate(text.split("\n")):
            if i:
                lines.append((current, size, y))
                current, size, y = "", 0.0, None
            if piece.strip():
                size, y = max(size, s), top if y is None else y
            current += piece
    lines.append((current, size, y))
    kept = [(re.sub(r"\s+", " ", t).strip(), s, y) for t, s, y in lines if t.strip()]
    # y grows up the page: the gap above a line is the previous line's y minus its own
    return [
        (t, s, (kept[i - 1][2] - y) if i and y is not None and kept[i - 1][2] is not None else 0.0)
        for i, (t, s, y) in enumerate(kept)
    ]


# ----------------------------------------------------------------------------------------- tables


def read_csv_table(path: Path, source: str) -> Table:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # Excel's "CSV" on Windows
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise Unreadable("empty (no header row)", "export it again with its header row")
    header = [h.strip() for h in header]
    rows, start = [], reader.line_num + 1
    for row in reader:
        if any(cell.strip() for cell in row):
            rows.append((start, {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header) if h}))
        start = reader.line_num + 1
    return Table(source, header, rows, path)


def read_xlsx(path: Path, source: str) -> list[Table]:
    """One table per sheet that has a header row (its first non-empty row)."""
    import zipfile

    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if _is_ole(path):
            raise Unreadable("encrypted (password-protected)", "save a copy without a password") from None
        raise Unreadable(f"not a readable .xlsx ({type(exc).__name__})", "open and save it again in Excel") from None
    tables = []
    for sheet in book.worksheets:
        header, rows = None, []
        for n, values in enumerate(sheet.iter_rows(values_only=True), 1):
            cells = ["" if v is None else str(v).strip() for v in values]
            if header is None:
                if any(cells):
                    header = cells
                continue
            if any(cells):
                rows.append((n, {h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header) if h}))
        if header:
            label = source if len(book.worksheets) == 1 else f"{source}[{sheet.title}]"
            tables.append(Table(label, header, rows, path))
    book.close()
    if not tables:
        raise Unreadable("empty (no sheet has a header row)", "put the column names in the first row")
    return tables


def markdown_tables(doc: Doc) -> list[Table]:
    """The pipe tables of a markdown document (a glossary kept as a table), with their lines."""
    tables, lines = [], doc.lines
    i = 0
    while i < len(lines) - 1:
        head, rule = lines[i][1].strip(), lines[i + 1][1].strip()
        if head.startswith("|") and re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?", rule):
            header = _cells(head)
            rows, j = [], i + 2
            while j < len(lines) and lines[j][1].strip().startswith("|"):
                cells = _cells(lines[j][1])
                rows.append((j + 1, {h: (cells[k] if k < len(cells) else "") for k, h in enumerate(header) if h}))
                j += 1
            tables.append(Table(doc.source, header, rows))
            i = j
        else:
            i += 1
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _markdown_table(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    return ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * width] + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _is_ole(path: Path) -> bool:
    """An Office file saved with a password is an OLE container, not a zip."""
    with path.open("rb") as f:
        return f.read(8) == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


# suffix -> reader(path, source) -> Doc. Tables (.csv, .xlsx) and datasets (.jsonl) are read apart.
DOCUMENT_READERS = {
    ".md": read_text,
    ".markdown": read_text,
    ".txt": read_text,
    ".docx": read_docx,
    ".pdf": read_pdf,
    ".html": read_html,
    ".htm": read_html,
    ".pptx": read_pptx,
}
