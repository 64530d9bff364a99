"""Validation: every bad record gets a code and its 1-based line; the good ones are kept.

    from tunesmith.data.validate import read_dataset, dataset_issues, overlap_issues
    ds = read_dataset("train.jsonl")          # ds.examples, ds.lines, ds.issues
    issues = dataset_issues(ds) + overlap_issues(ds, read_dataset("heldout.jsonl"))

Record problems (unreadable line, wrong shape, a conversation that makes no sense) drop the record
and are errors. Dataset problems (duplicates, too few examples, train/held-out overlap) are found
afterwards. Length against a tokenizer's max_len is check.py's (it needs the model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith import UserError
from tunesmith.data.formats import FORMATS, detect_format, from_csv_row, parse_map, read_csv, read_records

# code -> (severity, how to fix it). The closed set of everything `tunesmith check` reports.
CODES = {
    "bad-encoding": ("error", "save the file as UTF-8; a binary file is not a dataset"),
    "invalid-json": ("error", "each line must be one complete JSON object"),
    "truncated": ("error", "the file was cut short: re-export it, or delete the partial last line"),
    "wrong-type": ("error", "give the value the type the format expects"),
    "missing-messages": ("error", 'a chat record is {"messages": [{"role": ..., "content": ...}, ...]}'),
    "missing-field": ("error", "every message needs both 'role' and 'content'"),
    "unknown-role": ("error", "roles are system, user and assistant"),
    "unknown-key": ("error", 'remove the key, or move it into "meta": {...}'),
    "extra-key": ("warning", "nothing to do if it is yours: it is kept in meta (a top-level group is the split group)"),
    "empty-content": ("error", "write the message, or remove it"),
    "no-assistant": ("error", "add the assistant reply the model should learn"),
    "system-not-first": ("error", "put the system message first, once"),
    "same-role-twice": ("error", "merge the two messages, or add the missing turn between them"),
    "bad-weight": ("error", "weight is 0 or 1, and only on assistant messages"),
    "too-long": (
        "error",
        "raise --max-len or shorten the example; --too-long drop|truncate|error decides what training does",
    ),
    "duplicate": ("warning", "remove the copy; duplicates are dropped from training"),
    "overlap": ("error", "remove the example from one side: held-out results are only honest on unseen data"),
    "too-few": ("error", "collect at least 10 examples; 100s make a fine-tune worth measuring"),
    "no-trainable": ("warning", "set weight 1 on at least one assistant message, or drop the example"),
    "same-reply": ("error", "a pair teaches only where its replies differ: fix the rejected reply, or drop the pair"),
    "prompts-disagree": ("error", "both replies answer one prompt: give the pair a single 'prompt', or fix the copy"),
    "pair-shape": ("error", "'chosen' and 'rejected' are each one assistant reply: a string, or [{role, content}]"),
}

ROLES = ("system", "user", "assistant")
MIN_EXAMPLES = 10


@dataclass
class Issue:
    file: str
    line: int | None  # None: about the whole file
    code: str
    message: str
    level: str = ""  # overrides the code's severity (too-long is a warning under drop/truncate)

    @property
    def severity(self) -> str:
        return self.level or CODES[self.code][0]

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.code}: {self.message}"

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "fix": CODES[self.code][1],
        }


@dataclass
class Dataset:
    path: str
    format: str
    examples: list[dict] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # lines[i]: where examples[i] starts
    issues: list[Issue] = field(default_factory=list)
    records: int = 0  # records read, good and bad
    extra_keys: dict = field(default_factory=dict)  # top-level key -> [first line, records], warned once each


# ------------------------------------------------------------------------------------ per record


def check_messages(messages: list[dict]) -> list[tuple[str, str]]:
    """What is wrong with a conversation, whatever format it came from: [(code, text)]."""
    problems = []
    for i, m in enumerate(messages, 1):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(("unknown-role", f"message {i}: unknown role {role!r}"))
        if not isinstance(content, str):
            problems.append(("wrong-type", f"message {i}: content must be a string, got {type(content).__name__}"))
        elif not content.strip():
            problems.append(("empty-content", f"message {i} ({role}) is empty"))
        elif not _encodable(content):
            problems.append(
                (
                    "bad-encoding",
                    f"message {i} ({role}) holds an unpaired surrogate (a \\ud800-\\udfff "
                    f"escape without its pair), which is not a character",
                )
            )
        if role == "system" and i > 1:
            problems.append(("system-not-first", f"message {i} is a system message"))
        if i > 1 and role == messages[i - 2].get("role") and role in ROLES:
            problems.append(("same-role-twice", f"messages {i - 1} and {i} are both {role}"))
        if "weight" in m and (role != "assistant" or m["weight"] not in (0, 1) or isinstance(m["weight"], bool)):
            problems.append(("bad-weight", f"message {i} ({role}) has weight {m['weight']!r}"))
    if messages and not any(m.get("role") == "assistant" for m in messages):
        problems.append(("no-assistant", "no assistant message"))
    if not messages:
        problems.append(("no-assistant", "the conversation is empty"))
    return problems


def check_pair(example: dict) -> list[tuple[str, str]]:
    """What is wrong with a preference pair beyond its chosen conversation: the rejected reply."""
    if "rejected" not in example:
        return []
    rejected, chosen = example["rejected"], example["messages"][-1]
    # the prompt was checked with the chosen reply: here the rejected reply alone
    problems = [(code, text.replace("message 1", "the rejected reply")) for code, text in check_messages([rejected])]
    if "weight" in rejected:
        problems.append(("bad-weight", "the rejected reply has a weight; a pair trains on both replies"))
    same = isinstance(rejected.get("content"), str) and isinstance(chosen.get("content"), str)
    if same and " ".join(rejected["content"].split()) == " ".join(chosen["content"].split()) and chosen["content"]:
        problems.append(("same-reply", "the chosen and the rejected reply are the same text"))
    return problems


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_dataset(path: str | Path, fmt: str = "auto") -> Dataset:
    """Read and validate one file. Bad records become issues; good ones examples (with lines)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: dataset file not found.")
    if path.is_dir():
        raise UserError(
            f"{path}: is a directory. fix: pass a dataset file (a directory of markdown is a "
            f"repository for `tunesmith import` or a corpus for data.corpus)."
        )
    if path.suffix.lower() in (".md", ".txt"):
        raise UserError(
            f"{path}: plain text is a retrieval corpus, not training examples. fix: set it as "
            f"data.corpus, or turn a research repository into examples with `tunesmith import`."
        )
    name = str(path)
    if fmt.startswith("csv") or (fmt == "auto" and path.suffix.lower() == ".csv"):
        mapping = parse_map(fmt.partition(":")[2]) if ":" in fmt else None
        ds = Dataset(name, "csv")
        for line, row in read_csv(path, mapping):
            _add(ds, line, *from_csv_row(row))
        return ds

    records = list(read_records(path))
    if fmt == "auto":
        fmt = detect_format([r for _, r, p in records[:200] if p is None])
        if fmt is None:
            first = next((r for _, r, p in records if p is None), None)
            if first is None and records:
                fmt = "chat"  # nothing readable: report every line's problem as it stands
            elif first is None:
                raise UserError(f"{name}: the file has no records.")
            else:
                keys = ", ".join(map(str, first)) if isinstance(first, dict) else type(first).__name__
                raise UserError(
                    f"{name}: cannot tell the format from the first records (keys: {keys}). "
                    f"fix: pass --format {' | '.join(FORMATS)} | csv, or use chat records "
                    f'{{"messages": [...]}}.'
                )
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'. fix: one of auto, {', '.join(FORMATS)}, csv.")
    ds = Dataset(name, fmt)
    reader = FORMATS[fmt]
    for line, rec, problem in records:
        if problem:
            ds.records += 1
            ds.issues.append(Issue(name, line, *problem))
        elif not isinstance(rec, dict):
            ds.records += 1
            ds.issues.append(
                Issue(name, line, "wrong-type", f"a record must be a JSON object, got {type(rec).__name__}")
            )
        else:
            _add(ds, line, *reader(rec))
    for key, (first, count) in ds.extra_keys.items():
        where = (
            "meta.group, the split group (one group's examples stay on one side)" if key == "group" else f"meta.{key}"
        )
        ds.issues.append(
            Issue(
                name,
                first,
                "extra-key",
                f"top-level key '{key}' (in {count} of {ds.records} records) is not "
                f"part of the {fmt} format: kept in {where}",
            )
        )
    return ds


def _add(ds: Dataset, line: int, example: dict | None, problems: list) -> None:
    ds.records += 1
    for _, key in (p for p in problems if p[0] == "extra-key"):
        ds.extra_keys.setdefault(key, [line, 0])[1] += 1
    problems = [p for p in problems if p[0] != "extra-key"]
    # A message the reader could not take apart would make the conversation checks report
    # knock-on errors (an apparent missing reply); an extra key does not.
    if example is not None and all(code == "unknown-key" for code, _ in problems):
        problems = problems + check_messages(example["messages"]) + check_pair(example)
    if problems:
        ds.issues += [Issue(ds.path, line, code, text) for code, text in problems]
        return
    for m in example["messages"]:
        if "weight" in m:
            m["weight"] = int(m["weight"])
    ds.examples.append(example)
    ds.lines.append(line)


# ----------------------------------------------------------------------------------- per dataset


def example_key(example: dict) -> tuple:
    """Exact identity of a conversation (roles, texts and weights)."""
    return tuple((m["role"], m["content"], m.get("weight", 1)) for m in example["messages"])


def prompt_key(example: dict) -> tuple:
    """What the model is asked, whitespace- and case-insensitive: equal prompts on both sides of a split leak."""
    return tuple(
        (m["role"], " ".join(m["content"].split()).casefold()) for m in example["messages"] if m["role"] != "assistant"
    )


def dataset_issues(ds: Dataset) -> list[Issue]:
    """Duplicates (all but the first copy), examples nothing can be learnt from, and too few examples."""
    issues, seen = [], {}
    for ex, line in zip(ds.examples, ds.lines):
        key = example_key(ex)
        if key in seen:
            issues.append(Issue(ds.path, line, "duplicate", f"same example as line {seen[key]}"))
        else:
            seen[key] = line
        if all(m.get("weight", 1) == 0 for m in ex["messages"] if m["role"] == "assistant"):
            issues.append(Issue(ds.path, line, "no-trainable", "every assistant message has weight 0"))
    if len(seen) < MIN_EXAMPLES:
        issues.append(
            Issue(ds.path, None, "too-few", f"{len(seen)} distinct valid examples; at least {MIN_EXAMPLES} are needed")
        )
    return issues


def overlap_issues(train: Dataset, heldout: Dataset) -> list[Issue]:
    """Held-out examples whose prompt (or whole conversation) is also in the training data."""
    first = {}
    for ex, line in zip(train.examples, train.lines):
        first.setdefault(prompt_key(ex), line)
    issues = []
    for ex, line in zip(heldout.examples, heldout.lines):
        hit = first.get(prompt_key(ex))
        if hit is not None:
            issues.append(Issue(heldout.path, line, "overlap", f"same prompt as {train.path}:{hit}"))
    return issues


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "error"]
