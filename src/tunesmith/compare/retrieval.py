"""BM25 retrieval for the few-shot-retrieved and RAG arms: a small wrapper around `bm25s`.

    from tunesmith.compare.retrieval import BM25Index, read_corpus
    index = BM25Index([p.text for p in read_corpus("data/corpus")])
    hits = index.search("why do planners drop the weekly plan?", k=3)   # [(position, score), ...]

Tokenization is ours (lowercase words, English stop words out, a plural "s" folded) so queries and
documents are cut the same way and an unknown query word simply scores nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith import UserError

_WORD = re.compile(r"\w\w+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    from bm25s.stopwords import STOPWORDS_EN

    words = []
    for w in _WORD.findall(text.lower()):
        if w in STOPWORDS_EN:
            continue
        # "baskets" and "basket" should meet; no stemmer dependency for that
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        words.append(w)
    return words


class BM25Index:
    """A BM25 index over a fixed list of texts; `search` returns positions into that list."""

    def __init__(self, texts: list[str]):
        import bm25s

        self.size = len(texts)
        self._bm25 = bm25s.BM25()
        if self.size:
            # bm25s wants at least one token per document; "" stands in for an empty one
            self._bm25.index([tokenize(t) or [""] for t in texts], show_progress=False)

    def search(self, query: str, k: int, allowed: list[int] | None = None) -> list[tuple[int, float]]:
        """The k best (position, score) pairs, best first; ties keep corpus order (deterministic).
        `allowed` restricts the result to those positions (e.g. examples of the same task)."""
        import numpy as np

        if not self.size or k <= 0:
            return []
        scores = self._bm25.get_scores(tokenize(query) or [""])  # (N,)
        pool = np.arange(self.size) if allowed is None else np.asarray(sorted(allowed), dtype=int)
        if pool.size == 0:
            return []
        order = pool[np.argsort(-scores[pool], kind="stable")][:k]
        return [(int(i), float(scores[i])) for i in order]


@dataclass
class Passage:
    source: str  # file name inside the corpus directory
    text: str


def read_corpus(directory: str | Path, max_words: int = 120) -> list[Passage]:
    """Every .md/.txt file under `directory`, cut into passages of at most ~max_words words: whole
    paragraphs gathered while they fit, and a longer paragraph cut into overlapping windows (see
    `windows`). Front matter is dropped."""
    root = Path(directory)
    if not root.is_dir():
        raise UserError(
            f"{root}: corpus directory not found. fix: set data.corpus to the directory `tunesmith import` wrote "
            "(OUT/corpus)."
        )
    if max_words < 10:
        raise UserError(
            f"compare.passage_words={max_words} is too small for a passage to say anything. "
            "fix: 40 or more (default 120)."
        )
    passages = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".md", ".txt") and p.is_file()):
        text = path.read_text(encoding="utf-8-sig", errors="replace").replace("\r\n", "\n")
        if text.startswith("---\n"):
            end = text.find("\n---", 4)
            if end != -1:
                text = text[end + 4 :]
        name = str(path.relative_to(root))
        current: list[str] = []
        for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
            if not para:
                continue
            if current and len(" ".join(current).split()) + len(para.split()) > max_words:
                passages.append(Passage(name, "\n\n".join(current)))
                current = []
            if len(para.split()) > max_words:
                # a file without blank lines (one record per line, a transcript) is one paragraph:
                # whole it would never fit a prompt, and the rag arm would silently add nothing
                passages += [Passage(name, w) for w in windows(para, max_words)]
                continue
            current.append(para)
        if current:
            passages.append(Passage(name, "\n\n".join(current)))
    return passages


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def windows(paragraph: str, max_words: int) -> list[str]:
    """A paragraph longer than max_words as windows of at most max_words words, cut at line breaks
    (one record per line), else at sentence ends, else between words. Each window repeats the last
    unit of the one before (more, up to a fifth of max_words, when they are short), so a fact that
    spans a boundary is whole in one of them."""
    lines = [line.strip() for line in paragraph.split("\n") if line.strip()]
    units = lines if len(lines) > 1 else [s for s in _SENTENCE_END.split(paragraph.strip()) if s]
    pieces: list[str] = []  # units, with any unit still too long cut between words
    for u in units:
        words = u.split()
        pieces += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)] or []
    joiner = "\n" if len(lines) > 1 else " "
    size = [len(p.split()) for p in pieces]
    overlap = max_words // 5
    out, start = [], 0
    while start < len(pieces):
        end, words = start, 0
        while end < len(pieces) and words + size[end] <= max_words:
            words += size[end]
            end += 1
        out.append(joiner.join(pieces[start:end]))
        if end == len(pieces):
            break
        back, kept = end, 0  # repeat the last unit, and more while they fit the overlap
        while back - 1 > start and (back == end or kept + size[back - 1] <= overlap):
            back -= 1
            kept += size[back]
        start = back
    return out
