"""Office documents written from plain markdown, for the import tests, the import benchmark and the
bundled `meridian` example (whose .docx and .pdf are built from its text sources, not committed).

    python -c "from tunesmith.testing_docs import write_docx; write_docx('r.docx', open('r.md').read())"

Each format is written by the library that writes it (python-docx, fpdf2, python-pptx, openpyxl:
the `dev` extra). The markdown is the small subset our fixtures use: `# title`, `## heading`,
`### heading`, paragraphs, `- bullets` and pipe tables.
"""

from __future__ import annotations

from pathlib import Path


def blocks(markdown: str) -> list[tuple[str, object]]:
    """[(kind, value)]: ("h1".."h3", text), ("p", text), ("ul", [items]), ("table", [[cells]])."""
    out: list[tuple[str, object]] = []
    para: list[str] = []

    def flush():
        if para:
            out.append(("p", " ".join(para)))
            para.clear()

    for line in markdown.splitlines():
        s = line.strip()
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            level = len(s) - len(s.lstrip("#"))
            out.append((f"h{min(level, 3)}", s[level:].strip()))
        elif s.startswith("- "):
            flush()
            if out and out[-1][0] == "ul":
                out[-1][1].append(s[2:])
            else:
                out.append(("ul", [s[2:]]))
        elif s.startswith("|"):
            flush()
            cells = [c.strip() for c in s.strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            if out and out[-1][0] == "table":
                out[-1][1].append(cells)
            else:
                out.append(("table", [cells]))
        else:
            para.append(s)
    flush()
    return out


def write_docx(path, markdown: str, title: str = "") -> None:
    from docx import Document

    doc = Document()
    for kind, value in blocks(markdown):
        if kind == "h1":
            doc.add_heading(value, level=0)  # the Title style
            title = title or value
        elif kind in ("h2", "h3"):
            doc.add_heading(value, level=int(kind[1]) - 1)
        elif kind == "p":
            doc.add_paragraph(value)
        elif kind == "ul":
            for item in value:
                doc.add_paragraph(item, style="List Bullet")
        else:
            table = doc.add_table(rows=len(value), cols=len(value[0]))
            for r, row in enumerate(value):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
    doc.core_properties.title = title
    doc.save(str(path))


def write_pdf(path, markdown: str, blank_pages: tuple = (), password: str = "") -> None:
    """A PDF with a text layer; headings in larger type. `blank_pages`: 1-based pages left with no
    text (a scanned page has none), inserted before the page of that number."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    if password:
        pdf.set_encryption(owner_password=password + "-owner", user_password=password)
    title = next((v for k, v in blocks(markdown) if k == "h1"), "")
    pdf.set_title(title)

    def page():
        pdf.add_page()
        while pdf.page in blank_pages:
            pdf.add_page()

    page()
    sizes = {"h1": 20, "h2": 15, "h3": 13}
    for kind, value in blocks(markdown):
        if kind == "p" or kind == "ul" or kind == "table":
            pdf.set_font("Helvetica", size=11)
            if kind == "p":
                pdf.multi_cell(0, 6, _latin(value), new_x="LMARGIN", new_y="NEXT")
            elif kind == "ul":
                for item in value:
                    pdf.multi_cell(0, 6, _latin("- " + item), new_x="LMARGIN", new_y="NEXT")
            else:
                for row in value:
                    pdf.multi_cell(0, 6, _latin(" | ".join(row)), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
        else:
            if kind == "h2" and pdf.get_y() > 240:
                page()
            pdf.set_font("Helvetica", style="B", size=sizes[kind])
            pdf.multi_cell(0, sizes[kind] * 0.5, _latin(value), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    while pdf.page + 1 in blank_pages:
        pdf.add_page()
    pdf.output(str(path))


def _latin(text: str) -> str:
    """fpdf2's core fonts are Latin-1: typographic quotes and dashes are mapped, the rest replaced."""
    table = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})
    return text.translate(table).replace("\u2026", "...").encode("latin-1", "replace").decode("latin-1")


def write_pptx(path, title: str, slides: list[tuple[str, list[str]]]) -> None:
    from pptx import Presentation

    deck = Presentation()
    deck.core_properties.title = title
    for heading, bullets in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = heading
        frame = slide.placeholders[1].text_frame
        frame.text = bullets[0]
        for item in bullets[1:]:
            frame.add_paragraph().text = item
    deck.save(str(path))


def write_xlsx(path, rows: list[list[str]], sheet: str = "Sheet1") -> None:
    from openpyxl import Workbook

    book = Workbook()
    book.active.title = sheet
    for row in rows:
        book.active.append(row)
    book.save(str(path))


def write_html(path, markdown: str, site: str = "Confluence") -> None:
    """An exported wiki page: the article inside the site's navigation, breadcrumbs and footer."""
    import html

    body = []
    for kind, value in blocks(markdown):
        if kind.startswith("h"):
            body.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(value)}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in value) + "</ul>")
        else:
            head, *rest = value
            body.append(
                "<table><thead><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest)
                + "</tbody></table>"
            )
    title = next((v for k, v in blocks(markdown) if k == "h1"), "Page")
    nav = "".join(f'<li><a href="/wiki/{n}">{n} space home</a></li>' for n in ("Research", "Design", "Support"))
    Path(path).write_text(
        f"<!DOCTYPE html><html><head><title>{html.escape(title)} - {site}</title>"
        "<style>body{font-family:sans-serif}</style><script>window.analytics={};</script></head><body>"
        f'<div id="header"><nav><ul>{nav}</ul></nav><div class="search">Search {site}</div></div>'
        '<div id="breadcrumbs"><a href="/">Home</a> / <a href="/wiki">Research</a></div>'
        f'<div id="main-content" class="wiki-content">{"".join(body)}</div>'
        f'<div id="footer"><p>Powered by {site}. Report a bug. Terms of use. Privacy policy.</p></div>'
        "</body></html>",
        encoding="utf-8",
    )
