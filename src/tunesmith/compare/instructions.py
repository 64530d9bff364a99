"""Verifiable instructions: a general-ability check that needs no network and no judge.

    from tunesmith.compare.instructions import load_instructions, follows, CHECKERS
    items = load_instructions()                          # the bundled set (compare/general/instructions.jsonl)
    strict, loose = follows(reply, items[0]["checks"])   # one bool per check

In the spirit of IFEval (Zhou et al., 2023): each prompt carries one or more instructions whose
following a function can verify ("answer in at most 40 words", "wrap the whole reply in JSON").
Scoring follows IFEval's two readings. *Strict*: the reply as it is. *Loose*: the instruction counts
as followed if any of eight variants passes — the reply, the reply without its first line, without
its last line, without both, and each of those with markdown asterisks removed — so a chatty
"Sure, here it is:" or a bolded word does not hide an instruction that was followed.

The bundled set was written for tunesmith; a user's own set (compare.side_effects_file) uses the
same JSONL format, one prompt per line:

    {"id": "len-1", "prompt": "...", "checks": [{"checker": "word_count", "args": {"at_most": 40}}]}

or, instead of checks, a reference answer ({"id", "prompt", "reference"}) scored with chrF like a task.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from tunesmith import UserError

# ------------------------------------------------------------------------------------- helpers


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*", text)


def _sentences(text: str) -> list[str]:
    # A sentence ends at . ! or ? followed by space or the end; bullets and lines end one too.
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if _words(p)]


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _bullets(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\s*([*-]|\d+[.)])\s+\S", line)]


def _has_word(text: str, word: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(word) + r"(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


def _within(n: int, at_least: int | None, at_most: int | None) -> bool:
    return (at_least is None or n >= at_least) and (at_most is None or n <= at_most)


# ------------------------------------------------------------------------------------ checkers


def word_count(reply: str, at_least: int | None = None, at_most: int | None = None) -> bool:
    return _within(len(_words(reply)), at_least, at_most)


def sentence_count(reply: str, at_least: int | None = None, at_most: int | None = None) -> bool:
    return _within(len(_sentences(reply)), at_least, at_most)


def paragraph_count(reply: str, exactly: int) -> bool:
    """Paragraphs are separated by a blank line."""
    return len(_paragraphs(reply)) == exactly


def bullet_count(reply: str, exactly: int) -> bool:
    """Lines that start with "-", "*" or "1." are bullets; exactly that many."""
    return len(_bullets(reply)) == exactly


def include_words(reply: str, words: list[str]) -> bool:
    return all(_has_word(reply, w) for w in words)


def forbid_words(reply: str, words: list[str]) -> bool:
    return not any(_has_word(reply, w) for w in words)


def word_frequency(reply: str, word: str, at_least: int) -> bool:
    hits = re.findall(r"(?<![A-Za-z0-9])" + re.escape(word) + r"(?![A-Za-z0-9])", reply, re.IGNORECASE)
    return len(hits) >= at_least


def json_format(reply: str) -> bool:
    """The whole reply is JSON (a ```json fence around it is allowed, as IFEval allows it)."""
    text = re.sub(r"^```(?:json|JSON)?\s*|\s*```$", "", reply.strip())
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def markdown_heading(reply: str, at_least: int = 1) -> bool:
    """At least this many markdown headings ("# ..." to "###### ...")."""
    return len(re.findall(r"^#{1,6} \S", reply, re.MULTILINE)) >= at_least


def highlighted(reply: str, at_least: int) -> bool:
    """At least this many *highlighted* or **bold** spans."""
    return len(re.findall(r"\*{1,2}[^*\n]+\*{1,2}", reply)) >= at_least


def starts_with(reply: str, phrase: str) -> bool:
    return reply.strip().lower().startswith(phrase.lower())


def ends_with(reply: str, phrase: str) -> bool:
    return reply.strip().lower().endswith(phrase.lower())


def quoted(reply: str) -> bool:
    """The whole reply is wrapped in double quotation marks."""
    text = reply.strip()
    return len(text) > 1 and text[0] in '"“' and text[-1] in '"”'


def postscript(reply: str, marker: str = "P.S.") -> bool:
    """A postscript: a line that starts with the marker."""
    return re.search(r"^\s*" + re.escape(marker), reply, re.MULTILINE | re.IGNORECASE) is not None


def lowercase(reply: str) -> bool:
    return reply == reply.lower() and any(c.isalpha() for c in reply)


def uppercase(reply: str) -> bool:
    return reply == reply.upper() and any(c.isalpha() for c in reply)


def capital_words(reply: str, at_most: int) -> bool:
    """At most this many words written in capitals (two letters or more)."""
    return sum(1 for w in _words(reply) if len(w) > 1 and w.isupper()) <= at_most


def placeholders(reply: str, at_least: int) -> bool:
    """At least this many [placeholders] in square brackets."""
    return len(re.findall(r"\[[^\[\]\n]+\]", reply)) >= at_least


def no_commas(reply: str) -> bool:
    return "," not in reply


def sections(reply: str, marker: str, exactly: int) -> bool:
    """Exactly this many sections, each opened by a line starting with the marker ("Section 1", ...)."""
    return (
        len(re.findall(r"^\s*[#*]*\s*" + re.escape(marker) + r"\s*\d+", reply, re.MULTILINE | re.IGNORECASE)) == exactly
    )


# name -> (checker, category): the closed set a user's own check file may name
CHECKERS = {
    "word_count": (word_count, "length"),
    "sentence_count": (sentence_count, "length"),
    "paragraph_count": (paragraph_count, "structure"),
    "bullet_count": (bullet_count, "structure"),
    "sections": (sections, "structure"),
    "include_words": (include_words, "keywords"),
    "forbid_words": (forbid_words, "keywords"),
    "word_frequency": (word_frequency, "keywords"),
    "json_format": (json_format, "format"),
    "markdown_heading": (markdown_heading, "format"),
    "highlighted": (highlighted, "format"),
    "placeholders": (placeholders, "placeholders"),
    "starts_with": (starts_with, "start and end"),
    "ends_with": (ends_with, "start and end"),
    "quoted": (quoted, "start and end"),
    "postscript": (postscript, "start and end"),
    "lowercase": (lowercase, "case"),
    "uppercase": (uppercase, "case"),
    "capital_words": (capital_words, "case"),
    "no_commas": (no_commas, "punctuation"),
}


# ------------------------------------------------------------------------------------- scoring


def loose_variants(reply: str) -> list[str]:
    """IFEval's loose reading: the reply, without its first line, without its last, without both,
    and each of the four with every asterisk removed (empty variants dropped)."""
    lines = reply.split("\n")
    cut = [reply, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [v for v in cut + [c.replace("*", "") for c in cut] if v.strip()]


def check(reply: str, item: dict) -> bool:
    """One check ({"checker", "args"}) on one reply, strictly."""
    fn, _ = CHECKERS[item["checker"]]
    return bool(fn(reply, **item.get("args", {})))


def follows(reply: str, checks: list[dict]) -> tuple[list[bool], list[bool]]:
    """(strict, loose): for each check, whether the reply follows it."""
    strict = [check(reply, c) for c in checks]
    variants = loose_variants(reply)
    loose = [s or any(check(v, c) for v in variants) for s, c in zip(strict, checks)]
    return strict, loose


def category(item: dict) -> str:
    return CHECKERS[item["checker"]][1]


# -------------------------------------------------------------------------------------- files


BUNDLED = "instructions.jsonl"
GENERAL_PROMPTS = "prompts.jsonl"


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("tunesmith.compare") / "general" / name))


def load_instructions(path: str | Path | None = None) -> list[dict]:
    """The bundled instructions, or a user's own file, checked line by line: an unknown checker or
    argument names the file, the line and the fix."""
    import inspect

    path = Path(path) if path else bundled_path(BUNDLED)
    if not path.is_file():
        raise UserError(
            f"{path}: general-ability check file not found. fix: point compare.side_effects_file at a JSONL file."
        )
    items, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{where}: not valid JSON ({exc}). fix: one JSON object per line.") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise UserError(f'{where}: each line needs a "prompt" (text). fix: {{"prompt": "...", "checks": [...]}}.')
        has_checks, has_ref = "checks" in item, isinstance(item.get("reference"), str)
        if has_checks == has_ref:
            raise UserError(
                f'{where}: give either "checks" (a list of {{"checker", "args"}}) or a "reference" answer, not '
                f"{'both' if has_checks else 'neither'}. fix: e.g. "
                '"checks": [{"checker": "word_count", "args": {"at_most": 40}}].'
            )
        for c in item.get("checks") or []:
            name = c.get("checker") if isinstance(c, dict) else None
            if name not in CHECKERS:
                raise UserError(f"{where}: unknown checker {name!r}. fix: one of {', '.join(CHECKERS)}.")
            args = c.get("args", {})
            params = inspect.signature(CHECKERS[name][0]).parameters
            wrong = [a for a in args if a not in params or a == "reply"] if isinstance(args, dict) else ["args"]
            if wrong:
                allowed = ", ".join(p for p in params if p != "reply") or "none"
                raise UserError(f"{where}: {name} takes no argument {wrong[0]!r}. fix: its arguments are {allowed}.")
        if item.get("checks") == []:
            raise UserError(f'{where}: "checks" is empty. fix: name at least one checker.')
        item.setdefault("id", f"{path.stem}:{n}")
        if item["id"] in seen:
            raise UserError(f"{where}: id {item['id']!r} appears twice. fix: give every line its own id.")
        seen.add(item["id"])
        items.append(item)
    if not items:
        raise UserError(f"{path}: no instructions in the file. fix: one JSON object per line.")
    return items


def load_general_prompts() -> list[str]:
    """The bundled general prompts (drift and replay): everyday questions, none about any team's material."""
    lines = bundled_path(GENERAL_PROMPTS).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]
