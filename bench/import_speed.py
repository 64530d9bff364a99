"""How fast `tunesmith import` reads a team's folder: documents per second, per format and in all.

    python bench/import_speed.py                      # a generated 1,000-document folder
    python bench/import_speed.py --docs 200 --markitdown   # also time markitdown on the same files
    python bench/import_speed.py --bundled            # the two bundled examples

Writes a folder of generated documents (markdown, .docx, .pdf, .html, .pptx in a fixed mix, plus a
highlights export and a glossary), imports it with `import_repository`, and prints the wall time
and documents per second, then the time each reader takes per file. With --markitdown (installed
apart: `pip install 'markitdown[docx,pdf,pptx]'`) the same files go through markitdown's converter
for the comparison in docs/data.md. Needs the dev extra (python-docx, fpdf2) to write the files.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from tunesmith.data.readers import DOCUMENT_READERS
from tunesmith.data.repository import import_repository
from tunesmith.testing_docs import write_docx, write_html, write_pdf, write_pptx, write_xlsx

MIX = {".md": 0.4, ".docx": 0.2, ".pdf": 0.2, ".html": 0.15, ".pptx": 0.05}
WORDS = (
    "riders dock slot ride pass unlock rain night commuters price repair crew district map seat lever "
    "morning evening weekend group receipt support ticket saw said wanted chose waited paid left found"
).split()
HEADINGS = ["Summary", "What we did", "What we saw", "What it means", "Recommendations"]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 18))]
    return " ".join(words).capitalize() + "."


def report(rng: random.Random, n: int) -> str:
    parts = [f"# Study {n}: {' '.join(rng.choice(WORDS) for _ in range(4))}"]
    for heading in HEADINGS:
        parts += [f"## {heading}", " ".join(sentence(rng) for _ in range(rng.randint(3, 6)))]
        if heading == "What we saw":
            parts.append("\n".join(f"- {sentence(rng)}" for _ in range(3)))
    return "\n\n".join(parts) + "\n"


def make_folder(root: Path, docs: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    counts = {suffix: round(share * docs) for suffix, share in MIX.items()}
    counts[".md"] += docs - sum(counts.values())
    n = 0
    for suffix, count in counts.items():
        for _ in range(count):
            n += 1
            folder = root / f"project-{n % 25:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            path, text = folder / f"study-{n:04d}{suffix}", report(rng, n)
            if suffix == ".md":
                path.write_text(text)
            elif suffix == ".docx":
                write_docx(path, text)
            elif suffix == ".pdf":
                write_pdf(path, text)
            elif suffix == ".html":
                write_html(path, text)
            else:
                write_pptx(path, f"Study {n}", [(h, [sentence(rng), sentence(rng)]) for h in HEADINGS])
    rows = ["Highlight,Participant,Project,Tags"] + [
        f"{sentence(rng)},P{i % 9},project-{i % 25:02d},tag{i % 4}" for i in range(200)
    ]
    (root / "highlights-export.csv").write_text("\n".join(rows) + "\n")
    write_xlsx(root / "glossary.xlsx", [["Term", "Definition"]] + [[w, sentence(rng)] for w in WORDS[:20]])
    return counts


def bundled() -> None:
    """Files per second on the bundled examples: pantry (our format) and Wheelhouse (documents)."""
    import runpy

    examples = Path(__file__).parents[1] / "src" / "tunesmith" / "examples"
    with tempfile.TemporaryDirectory() as tmp:
        wheelhouse = runpy.run_path(str(examples / "wheelhouse" / "build.py"))["build"](Path(tmp) / "wheelhouse")
        for name, folder in (("pantry", examples / "pantry"), ("wheelhouse", wheelhouse)):
            files = sum(1 for p in folder.rglob("*") if p.is_file())
            import_repository([folder], Path(tmp) / f"warm-{name}")  # libraries loaded once, as in a long import
            t0 = time.perf_counter()
            s = import_repository([folder], Path(tmp) / name)
            took = time.perf_counter() - t0
            examples = s["train"] + s["heldout"]
            print(f"{name}: {files} files, {examples} examples in {took:.2f} s = {files / took:.0f} files/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--markitdown", action="store_true", help="also time markitdown on the same files")
    ap.add_argument("--bundled", action="store_true", help="time the bundled examples instead")
    args = ap.parse_args()
    if args.bundled:
        return bundled()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        t0 = time.perf_counter()
        counts = make_folder(root, args.docs)
        print(f"generated {args.docs} documents {counts} in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        s = import_repository([root], Path(tmp) / "out")
        took = time.perf_counter() - t0
        print(
            f"import: {s['read']['documents']} documents, {s['train'] + s['heldout']} examples in {took:.1f} s "
            f"= {s['read']['documents'] / took:.0f} documents/s"
        )
        files = sorted(p for p in root.rglob("*") if p.suffix in DOCUMENT_READERS)
        print(
            f"\n  {'format':<6} {'files':>5}  tunesmith ms/file" + ("  markitdown ms/file" if args.markitdown else "")
        )
        converter = None
        if args.markitdown:
            from markitdown import MarkItDown

            converter = MarkItDown()
        for suffix in MIX:
            group = [p for p in files if p.suffix == suffix]
            t0 = time.perf_counter()
            for p in group:
                DOCUMENT_READERS[suffix](p, p.name)
            ours = (time.perf_counter() - t0) / len(group) * 1000
            line = f"  {suffix:<6} {len(group):>5}  {ours:>17.1f}"
            if converter:
                t0 = time.perf_counter()
                for p in group:
                    converter.convert(str(p))
                line += f"  {(time.perf_counter() - t0) / len(group) * 1000:>19.1f}"
            print(line)


if __name__ == "__main__":
    main()
