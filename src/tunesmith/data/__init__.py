"""The dataset stage: read any supported format into chat examples, validate, import repositories.

    from tunesmith.data import load_examples
    examples = load_examples("train.jsonl")   # [{"messages": [...], "meta": {...}}, ...]

formats.py reads the formats people bring, validate.py says what is wrong with them (code and
line), repository.py turns a research repository into examples (`tunesmith import`), check.py
reports tokens, time and cost (`tunesmith check`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunesmith import UserError

SHOW_ERRORS = 20  # errors listed in a UserError; `tunesmith check` lists them all


def load_examples(path: str | Path, fmt: str = "auto") -> list[dict]:
    """Read a dataset into chat examples: {"messages": [{"role", "content", "weight"?}], "meta": {...}}.

    Any format of formats.py (chat, prompt-completion, alpaca, sharegpt JSONL; CSV, with a map as
    `csv:user=Question,assistant=Answer`). Raises UserError listing every bad record as file:line,
    code and message. Duplicates are kept here (the data is the user's); `tunesmith check` reports them.
    Warnings (a top-level key kept in meta) are printed to stderr, one per key.
    """
    from tunesmith.data.validate import CODES, errors, read_dataset

    ds = read_dataset(path, fmt)
    bad = errors(ds.issues)
    if bad:
        shown = "\n".join(f"  {issue}" for issue in bad[:SHOW_ERRORS])
        more = f"\n  … and {len(bad) - SHOW_ERRORS} more" if len(bad) > SHOW_ERRORS else ""
        fixes = "; ".join(dict.fromkeys(f"{i.code}: {CODES[i.code][1]}" for i in bad[:SHOW_ERRORS]))
        records = len({i.line for i in bad})
        raise UserError(
            f"{path}: {records} of {ds.records} records are bad ({len(bad)} problems):\n{shown}{more}\n"
            f"  fix: {fixes}. `tunesmith check {path}` lists every problem."
        )
    for issue in ds.issues:
        print(f"warning: {issue}", file=sys.stderr)
    return ds.examples
