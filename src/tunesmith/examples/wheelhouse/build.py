"""Build the Wheelhouse example folder: a team's material as it would arrive, documents only.

    python src/tunesmith/examples/wheelhouse/build.py wheelhouse/     # then: tunesmith import wheelhouse/ -o data/

Wheelhouse is a fictional bike-share's research team, written for tunesmith. Its reports are kept
here as text (sources/word/*.md, sources/pdf/*.md) and written out as the Word and PDF files a team
would have, by python-docx and fpdf2 (`pip install tunesmith[dev]`), so the repository holds no
binaries. The research tool's exports and the style guide are copied as they are; the glossary
becomes a spreadsheet. Nothing in the output has front matter.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent / "sources"


def build(out: str | Path) -> Path:
    from tunesmith.testing_docs import write_docx, write_pdf, write_xlsx

    out = Path(out)
    for sub in ("reports", "readouts", "exports"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for src in sorted((HERE / "word").glob("*.md")):
        write_docx(out / "reports" / f"{src.stem}.docx", src.read_text(encoding="utf-8"))
    for src in sorted((HERE / "pdf").glob("*.md")):
        write_pdf(out / "readouts" / f"{src.stem}.pdf", src.read_text(encoding="utf-8"))
    shutil.copy(HERE / "insights.csv", out / "exports" / "insights-export.csv")
    shutil.copy(HERE / "highlights.csv", out / "exports" / "highlights-export.csv")
    with (HERE / "glossary.csv").open(encoding="utf-8", newline="") as f:
        write_xlsx(out / "glossary.xlsx", list(csv.reader(f)), sheet="Glossary")
    shutil.copy(HERE / "voice-and-tone.md", out / "voice-and-tone.md")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    print(f"wrote {build(sys.argv[1])}")
