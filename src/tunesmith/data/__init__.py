"""The dataset stage: read any supported format into chat examples, validate, import repositories.

    from tunesmith.data import load_examples
    examples = load_examples("train.jsonl")   # [{"messages": [...], "meta": {...}}, ...]
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith import UserError


def load_examples(path: str | Path, fmt: str = "auto") -> list[dict]:
    """Read a dataset into chat examples: {"messages": [{"role", "content", "weight"?}], "meta": {...}}.

    Raises UserError naming the file and line of the first bad record.
    (Minimal chat-JSONL reader; the full multi-format validating reader replaces this body.)
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: dataset file not found.")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: invalid JSON ({exc.msg}).") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
            raise UserError(f"{path}:{n}: expected an object with a 'messages' list.")
        out.append({"messages": rec["messages"], "meta": rec.get("meta", {})})
    return out
