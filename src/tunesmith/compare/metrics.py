"""Per-example metrics: is the answer right (the key facts, exact match, token F1), how close is
the output to the team's own text (chrF, ROUGE-L), and does it follow the house rules (glossary,
templates).

    from tunesmith.compare.metrics import load_glossary, load_templates, score
    row = score(output, reference, task="insight", glossary=load_glossary("glossary.yaml"),
                templates=load_templates("style.md"), answer=None)
    # {"answer": None, "exact_match": None, "token_f1": None, "chrf": 41.2, "rougeL": 33.0, "glossary": 0.67, ...}

Every score is per example; `None` means "does not apply here" (no key facts given, a reference too
long for exact match, no preferred term in the reference, no template for this kind of output) and
is left out of that metric's mean, never counted as 0.

Answer accuracy reads meta.answer: one key fact (a string) or a list of them, every one of which a
correct reply must contain; a fact may itself be a list of alternatives, any one of which will do
(`["180 days", ["legal hold", "litigation hold"]]`). A fact is contained when its words, normalised
as SQuAD normalises answers (lower case, punctuation and a/an/the dropped), appear in the reply in
that order as whole words: "180 days" is in "Kept for 180 days.", "18 days" is not. It checks the
facts are stated, not that they are asserted ("not 180 days" contains "180 days"); that is the
judge's job.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import yaml

from tunesmith import UserError


class Metric(NamedTuple):
    label: str  # in tables and sentences
    higher_is_better: bool | None  # None: neither direction is better (length ratio: 1.0 is best)
    percent: bool  # scores are shares 0-1, shown as percent; differences in percentage points


# A closed set: a dict literal, in the order tables show them.
METRICS = {
    "answer": Metric("answer accuracy", True, True),
    "exact_match": Metric("exact match", True, True),
    "token_f1": Metric("token F1", True, True),
    "chrf": Metric("chrF", True, False),
    "rougeL": Metric("ROUGE-L", True, False),
    "glossary": Metric("glossary adherence", True, True),
    "rejected_per_100w": Metric("rejected terms /100 words", False, False),
    "template": Metric("template conformance", True, True),
    "length_ratio": Metric("length ratio", None, False),
}
SHORT_ANSWER_WORDS = 12  # references up to this long are short answers: exact match and token F1 apply


def points(key: str, value: float) -> float:
    """A score on the scale differences and margins are stated in: percentage points for shares."""
    return 100.0 * value if METRICS[key].percent else value


# ------------------------------------------------------------------------------ answers (SQuAD)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation out, the articles a/an/the out, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation) | set("‘’“”–—…")


def exact_match(output: str, reference: str) -> float:
    return float(normalize_answer(output) == normalize_answer(reference))


def token_f1(output: str, reference: str) -> float:
    """F1 of the normalised words the output shares with the reference (SQuAD's token F1)."""
    out, ref = normalize_answer(output).split(), normalize_answer(reference).split()
    if not out or not ref:
        return float(out == ref)
    common = sum((Counter(out) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(out), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(output: str, fact: str) -> bool:
    """The fact's normalised words, in order, as whole words of the normalised output."""
    words = normalize_answer(fact)
    return bool(words) and f" {words} " in f" {normalize_answer(output)} "


def answer_facts(answer) -> list[list[str]]:
    """meta.answer as [[alternatives of fact 1], [alternatives of fact 2], ...]; [] when absent."""
    if answer is None or answer == "" or answer == []:
        return []
    facts = answer if isinstance(answer, list) else [answer]
    return [[str(a) for a in f] if isinstance(f, list) else [str(f)] for f in facts]


def answer_accuracy(output: str, answer) -> float | None:
    """1.0 when the output contains every key fact of meta.answer (any alternative of each), else
    0.0; None when the example gives no key facts."""
    facts = answer_facts(answer)
    if not facts:
        return None
    return float(all(any(contains(output, alt) for alt in alts) for alts in facts))


# ---------------------------------------------------------------------------------- similarity


def chrf(output: str, reference: str) -> float:
    """Character n-gram F-score (sacrebleu's chrF, 0-100)."""
    return float(_chrf().sentence_score(output, [reference]).score)


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), scaled to 0-100 like chrF."""
    return 100.0 * _rouge().score(reference, output)["rougeL"].fmeasure


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def length_ratio(output: str, reference: str) -> float:
    """Words in the output per word of the reference: 1.0 is the team's length."""
    return len(output.split()) / max(1, len(reference.split()))


# ------------------------------------------------------------------------------------ glossary


@dataclass
class Term:
    term: str
    rejected: list[str] = field(default_factory=list)
    definition: str = ""


def load_glossary(path: str | Path) -> list[Term]:
    """glossary.yaml: `terms: [{term, rejected: [...], definition}]`."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path}: glossary not found. fix: set data.glossary to the glossary.yaml `tunesmith import` wrote, "
            "or leave it empty."
        )
    data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    terms = data.get("terms") if isinstance(data, dict) else None
    if not isinstance(terms, list):
        raise UserError(f"{path}:1: expected `terms:` followed by a list of {{term, rejected, definition}}.")
    out = []
    for n, t in enumerate(terms, 1):
        if not isinstance(t, dict) or not str(t.get("term") or "").strip():
            raise UserError(
                f"{path}: entry {n} of `terms` has no `term`. fix: give every entry `term: <preferred word>`."
            )
        rejected = t.get("rejected") or []
        out.append(
            Term(
                str(t["term"]).strip(),
                [str(r).strip() for r in rejected if str(r).strip()],
                str(t.get("definition") or "").strip(),
            )
        )
    return out


def _phrase_pattern(phrases: list[str]) -> re.Pattern:
    """Whole words, case-insensitive, a plural ending allowed; longest phrase first so
    "shopping cart" is one hit, not also a "cart"."""
    alts = sorted({p.lower() for p in phrases}, key=len, reverse=True)
    body = "|".join(re.escape(p).replace(r"\ ", r"[\s-]+") for p in alts)
    return re.compile(rf"(?<![\w-])(?:{body})(?:s|es)?(?![\w-])", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _pattern(phrases: tuple[str, ...]) -> re.Pattern:
    return _phrase_pattern(list(phrases))


def uses(text: str, phrase: str) -> bool:
    return _pattern((phrase,)).search(text) is not None


def glossary_adherence(output: str, reference: str, glossary: list[Term]) -> float | None:
    """Share of the preferred terms the reference uses that the output uses too.
    None when the reference uses none (nothing is expected)."""
    expected = [t.term for t in glossary if uses(reference, t.term)]
    if not expected:
        return None
    return sum(uses(output, term) for term in expected) / len(expected)


def rejected_per_100_words(output: str, glossary: list[Term]) -> float:
    """Occurrences of retired variants ("cart" for "basket") per 100 words of output."""
    rejected = tuple(r for t in glossary for r in t.rejected)
    words = len(output.split())
    if not rejected or not words:
        return 0.0
    return 100.0 * len(_pattern(rejected).findall(output)) / words


# ----------------------------------------------------------------------------------- templates


def _labels(block: str) -> list[str]:
    """The fixed parts of a template: the bold label or heading that opens each line."""
    labels = []
    for line in block.splitlines():
        m = re.match(r"\s*(\*\*[^*\n]+\*\*)", line) or re.match(r"\s*(#{1,6} [^<\n]+?)\s*$", line)
        if m:
            labels.append(m.group(1).strip())
    return labels


def load_templates(style: str | Path | None = None, templates_dir: str | Path | None = None) -> dict[str, list[str]]:
    """{template name: [labels in order]} read from the house style guide (fenced blocks under a
    heading naming the template, e.g. "## The insight template") and/or a templates/ folder of
    `name.md` files (front matter `name:`). Blocks with fewer than two labels are not templates."""
    found: dict[str, list[str]] = {}
    if templates_dir and Path(templates_dir).is_dir():
        for path in sorted(Path(templates_dir).glob("*.md")):
            text = path.read_text(encoding="utf-8-sig")
            name = path.stem
            if text.startswith("---"):
                head, _, text = text[3:].partition("\n---")
                meta = yaml.safe_load(head) or {}
                name = str(meta.get("name") or name)
            labels = _labels(text)
            if len(labels) >= 2:
                found[name.lower()] = labels
    if style and Path(style).is_file():
        heading = ""
        text = Path(style).read_text(encoding="utf-8-sig")
        for m in re.finditer(r"^(#{1,6} [^\n]+)$|^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            if m.group(1):
                heading = m.group(1).lower()
                continue
            labels = _labels(m.group(2))
            # "## The insight template" in a guide, or "### insight" above a template copied verbatim
            name = re.search(r"the (\w+) template", heading) or re.fullmatch(r"#+ (\w+)", heading.strip())
            if len(labels) >= 2 and name:
                found.setdefault(name.group(1), labels)
    return found


def _find_in_order(text: str, labels: list[str]) -> bool:
    pos = 0
    for label in labels:
        # the label itself, tolerant of spacing inside the markup (**We saw ** is still the label)
        inner = re.escape(label.strip("*# ")).replace(r"\ ", r"\s+")
        pattern = rf"\*\*\s*{inner}\s*\*\*" if label.startswith("**") else rf"^#{{1,6}}\s+{inner}\s*$"
        m = re.compile(pattern, re.MULTILINE).search(text, pos)
        if m is None:
            return False
        pos = m.end()
    return True


def template_for(reference: str, task: str, templates: dict[str, list[str]]) -> str | None:
    """Which template an example's output should follow: the one its reference follows; else the
    one its meta.task names (a task like "draft-to-insight" names "insight")."""
    for name, labels in templates.items():
        if _find_in_order(reference, labels):
            return name
    words = re.split(r"[^a-z]+", (task or "").lower())
    named = [name for name in templates if words and words[-1] == name]
    return named[0] if named else None


def template_conformance(output: str, labels: list[str]) -> float:
    """1.0 when every required label is present in order, else 0.0."""
    return 1.0 if _find_in_order(output, labels) else 0.0


# ---------------------------------------------------------------------------------------- all


def is_short(reference: str) -> bool:
    return len(reference.split()) <= SHORT_ANSWER_WORDS


def score(
    output: str,
    reference: str,
    task: str = "",
    glossary: list[Term] = (),
    templates: dict[str, list[str]] | None = None,
    answer=None,
) -> dict:
    """Every metric for one output. Answer accuracy is None without meta.answer, exact match and
    token F1 are None for a long reference; glossary metrics are None without a glossary; template
    is None when no template applies to this example."""
    templates = templates or {}
    name = template_for(reference, task, templates)
    short = is_short(reference)
    return {
        "answer": answer_accuracy(output, answer),
        "exact_match": exact_match(output, reference) if short else None,
        "token_f1": token_f1(output, reference) if short else None,
        "chrf": chrf(output, reference),
        "rougeL": rouge_l(output, reference),
        "glossary": glossary_adherence(output, reference, list(glossary)) if glossary else None,
        "rejected_per_100w": rejected_per_100_words(output, list(glossary)) if glossary else None,
        "template": template_conformance(output, templates[name]) if name else None,
        "length_ratio": length_ratio(output, reference),
    }
