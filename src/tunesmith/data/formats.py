"""Readers and writers for the dataset formats people bring, into one conversation record.

    from tunesmith.data.formats import FORMATS, read_records, to_record
    for line, record, problem in read_records("data.jsonl"): ...
    example, problems = FORMATS["alpaca"](record)   # {"messages": [...], "meta": {...}}, [(code, text)]

The record every stage uses is `{"messages": [{"role", "content", "weight"?}], "meta": {...}}`.
A reader here only reshapes: it reports keys that are missing, unknown or of the wrong type for
its format. Whether the conversation itself makes sense (roles, order, empty text) is
validate.py's business, the same for every format.

Formats (one per line of a JSONL file, or rows of a CSV file):
  chat               {"messages": [{"role", "content", "weight"?}], "system"?, "meta"?, "id"?}
Any other top-level key (`group`, `source`, `category`) is kept in meta with one warning per key;
a top-level `group` is the split group.
  prompt-completion  {"prompt", "completion", "system"?}   (strings, or lists of messages as in TRL)
  alpaca             {"instruction", "input"?, "output", "system"?}
  sharegpt           {"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}
  csv                columns mapped to system / user / assistant (`csv:user=Question,assistant=Answer`)
  preference         a reply preferred over another, for train.objective=dpo|orpo:
                     TRL's {"prompt"?, "chosen", "rejected"} (strings, or lists of messages; without a
                     prompt it is what chosen and rejected share), LLaMA-Factory's ranking records
                     ({"instruction", "input"?, "chosen", "rejected"} or {"conversations", "chosen":
                     {"from", "value"}, "rejected": {...}}), and the workbench's DPO export (TRL's).
                     The example is the prompt and the chosen reply as `messages`, and `rejected`,
                     the other reply as one assistant message.
Plain text and markdown files are the retrieval corpus (tunesmith.compare.retrieval), not training examples.
Files are UTF-8 with or without a BOM, LF or CRLF.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from tunesmith import UserError

BOM = b"\xef\xbb\xbf"
# Python's JSON reader recurses per level and stops near 1,000 levels; no dataset record is that deep.
TOO_DEEP = ("invalid-json", "nested too deeply (arrays or objects about 1,000 levels deep); not a dataset record")

# ------------------------------------------------------------------------------------ raw lines


def read_records(path: str | Path):
    """Yield (line, record, problem) for each non-blank record of a JSONL (or JSON array) file.

    `record` is the parsed JSON value (any type) or None; `problem` is None or (code, text) for a
    line that is not UTF-8 (`bad-encoding`), not JSON (`invalid-json`), or a last line cut short
    (`truncated`). Line numbers are 1-based and count every line, blank ones included.
    """
    data = Path(path).read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    if data.lstrip()[:1] == b"[":
        yield from _json_array(data)
        return
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    if complete:
        lines.pop()  # the empty piece after the final newline
    last = len(lines)
    for n, raw in enumerate(lines, 1):
        raw = raw.removesuffix(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                n,
                None,
                ("bad-encoding", f"not UTF-8 text (byte {exc.start + 1} is 0x{raw[exc.start]:02x}; binary data?)"),
            )
            continue
        if not text.strip():
            continue
        try:
            yield n, json.loads(text), None
        except json.JSONDecodeError as exc:
            if n == last and not complete:
                yield (
                    n,
                    None,
                    ("truncated", f"the file ends in the middle of this record ({exc.msg}, column {exc.colno})"),
                )
            else:
                yield n, None, ("invalid-json", f"{exc.msg} (column {exc.colno})")
        except RecursionError:
            yield n, None, TOO_DEEP


def _json_array(data: bytes):
    """Records of a file holding one JSON array, each with the line it starts on."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield data[: exc.start].count(b"\n") + 1, None, ("bad-encoding", "not UTF-8 text (binary data?)")
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line = text.count("\n", 0, pos) + 1
        if pos >= len(text):
            yield line, None, ("truncated", "the JSON array is not closed with ']'")
            return
        if text[pos] == "]":
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            code = "truncated" if exc.pos >= len(text.rstrip()) else "invalid-json"
            yield exc.lineno, None, (code, f"{exc.msg} (column {exc.colno}); the rest of the array is not read")
            return
        except RecursionError:
            yield line, None, (TOO_DEEP[0], TOO_DEEP[1] + "; the rest of the array is not read")
            return
        yield line, value, None


# ---------------------------------------------------------------------------------- to messages

ROLE_ALIASES = {  # sharegpt's `from` values -> roles
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


def from_chat(rec: dict):
    problems = _extra_keys(rec, ("messages", "system", "meta", "id"))
    if "messages" not in rec:
        return None, problems + [
            ("missing-messages", f"no 'messages' key (keys: {', '.join(map(str, rec)) or 'none'})")
        ]
    msgs = rec["messages"]
    if not isinstance(msgs, list):
        return None, problems + [("wrong-type", f"'messages' must be a list, got {_kind(msgs)}")]
    out = _system(rec, problems)
    for i, m in enumerate(msgs, 1):
        if not isinstance(m, dict):
            problems.append(("wrong-type", f"message {i} must be an object, got {_kind(m)}"))
            continue
        problems += _unknown_keys(m, ("role", "content", "weight", "name"), where=f"message {i}: ")
        missing = [k for k in ("role", "content") if k not in m]
        if missing:
            problems.append(("missing-field", f"message {i} has no {' or '.join(repr(k) for k in missing)}"))
            continue
        out.append({k: m[k] for k in ("role", "content", "weight", "name") if k in m})
    return _example(rec, out), problems


def from_prompt_completion(rec: dict):
    problems = _extra_keys(rec, ("prompt", "completion", "system", "meta", "id"))
    missing = [k for k in ("prompt", "completion") if k not in rec]
    if missing:
        return None, problems + [("missing-field", f"no {' or '.join(repr(k) for k in missing)}")]
    out = _system(rec, problems)
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = rec[key]
        if isinstance(value, list):  # TRL's conversational form: lists of messages
            chat, more = from_chat({"messages": value})
            problems += more
            out += (chat or {"messages": []})["messages"]
        else:
            out.append({"role": role, "content": value})
    return _example(rec, out), problems


def from_alpaca(rec: dict):
    problems = _extra_keys(rec, ("instruction", "input", "output", "system", "meta", "id"))
    missing = [k for k in ("instruction", "output") if k not in rec]
    if missing:
        return None, problems + [("missing-field", f"no {' or '.join(repr(k) for k in missing)}")]
    user, extra = rec["instruction"], rec.get("input") or ""
    if not isinstance(extra, str):
        problems.append(("wrong-type", f"'input' must be a string, got {_kind(extra)}"))
        extra = ""
    if extra.strip() and isinstance(user, str):
        user = f"{user}\n\n{extra}"
    return _example(
        rec,
        _system(rec, problems) + [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}],
    ), problems


def from_sharegpt(rec: dict):
    problems = _extra_keys(rec, ("conversations", "system", "meta", "id"))
    if "conversations" not in rec:
        return None, problems + [("missing-messages", "no 'conversations' key")]
    turns = rec["conversations"]
    if not isinstance(turns, list):
        return None, problems + [("wrong-type", f"'conversations' must be a list, got {_kind(turns)}")]
    out = _system(rec, problems)
    for i, t in enumerate(turns, 1):
        if not isinstance(t, dict):
            problems.append(("wrong-type", f"turn {i} must be an object, got {_kind(t)}"))
            continue
        problems += _unknown_keys(t, ("from", "value", "weight"), where=f"turn {i}: ")
        missing = [k for k in ("from", "value") if k not in t]
        if missing:
            problems.append(("missing-field", f"turn {i} has no {' or '.join(repr(k) for k in missing)}"))
            continue
        # An unknown `from` stays as it is, so validation reports it as an unknown role.
        role = ROLE_ALIASES.get(str(t["from"]).lower(), t["from"])
        out.append({"role": role, "content": t["value"], **({"weight": t["weight"]} if "weight" in t else {})})
    return _example(rec, out), problems


def from_preference(rec: dict):
    """A preference pair -> {"messages": prompt + [chosen], "rejected": rejected, "meta"}, both replies
    one assistant message. Which of the formats in the module doc it is follows from its keys."""
    problems = _extra_keys(
        rec, ("prompt", "chosen", "rejected", "instruction", "input", "conversations", "system", "meta", "id")
    )
    missing = [k for k in ("chosen", "rejected") if k not in rec]
    if missing:
        return None, problems + [("missing-field", f"no {' or '.join(repr(k) for k in missing)}")]
    if "conversations" in rec:  # LLaMA-Factory, sharegpt style: the replies are {"from", "value"} turns
        chat, more = from_sharegpt({k: rec[k] for k in ("conversations", "system") if k in rec})
        sides = [
            from_sharegpt({"conversations": [rec[k]]})[0] if isinstance(rec[k], dict) else rec[k]
            for k in ("chosen", "rejected")
        ]
        sides = [s["messages"] if isinstance(s, dict) else s for s in sides]
        prompt, problems = (chat or {"messages": []})["messages"], problems + more
    elif "instruction" in rec:  # LLaMA-Factory, alpaca style
        chat, more = from_alpaca({**{k: rec[k] for k in ("instruction", "input", "system") if k in rec}, "output": ""})
        prompt, problems = (chat or {"messages": [{}]})["messages"][:-1], problems + more
        sides = [rec["chosen"], rec["rejected"]]
    elif "prompt" in rec:  # TRL, explicit prompt
        prompt = _system(rec, problems) + _turns(rec["prompt"], "user", "'prompt'", problems)
        sides = [rec["chosen"], rec["rejected"]]
    else:  # TRL, implicit prompt: what the two share
        prompt, sides = _shared_prompt(rec["chosen"], rec["rejected"], problems)
        prompt = _system(rec, problems) + prompt
    replies = []
    for key, side in zip(("chosen", "rejected"), sides):
        msgs = _turns(side, "assistant", f"'{key}'", problems)
        if len(msgs) > 1 and all(isinstance(m, dict) for m in msgs):  # the conversation repeated before the reply
            if _strip_weights(msgs[:-1]) != _strip_weights(prompt[-len(msgs) + 1 :]):
                problems.append(("prompts-disagree", f"'{key}' repeats a conversation that is not the prompt's"))
            msgs = msgs[-1:]
        if len(msgs) != 1 or not isinstance(msgs[0], dict) or msgs[0].get("role") != "assistant":
            problems.append(("pair-shape", f"'{key}' must be one assistant reply (a string, or a list ending in one)"))
            return None, problems
        replies.append(msgs[0])
    example = _example(rec, [*prompt, replies[0]])
    example["rejected"] = replies[1]
    return example, problems


def _turns(value, role: str, where: str, problems: list) -> list:
    """A string -> one message of `role`; a list of messages as it is (shape problems reported)."""
    if isinstance(value, list):
        chat, more = from_chat({"messages": value})
        problems += [(code, f"{where}: {text}") for code, text in more]
        return (chat or {"messages": []})["messages"]
    if not isinstance(value, str):
        problems.append(("wrong-type", f"{where} must be a string or a list of messages, got {_kind(value)}"))
        return []
    return [{"role": role, "content": value}]


def _shared_prompt(chosen, rejected, problems: list) -> tuple[list, list]:
    """TRL's implicit prompt: (the messages or text both sides start with, [chosen reply, rejected reply])."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        cut = (
            max(chosen.rfind(" ", 0, n), chosen.rfind("\n", 0, n)) + 1
        )  # a word the two share only in part is a reply's
        return [{"role": "user", "content": chosen[:cut].rstrip()}], [chosen[cut:], rejected[cut:]]
    if isinstance(chosen, list) and isinstance(rejected, list):
        if _strip_weights(chosen[:-1]) != _strip_weights(rejected[:-1]):
            problems.append(("prompts-disagree", "'chosen' and 'rejected' differ before their last message"))
        prompt = _turns(chosen[:-1], "user", "'chosen'", problems)
        return prompt, [chosen[-1:], rejected[-1:]]
    problems.append(("wrong-type", "'chosen' and 'rejected' must both be strings or both lists of messages"))
    return [], [[], []]


def _strip_weights(msgs: list) -> list:
    return [(m.get("role"), m.get("content")) if isinstance(m, dict) else m for m in msgs]


# format name -> reader of one parsed record: (example or None, [(code, text)])
FORMATS = {
    "chat": from_chat,
    "prompt-completion": from_prompt_completion,
    "alpaca": from_alpaca,
    "sharegpt": from_sharegpt,
    "preference": from_preference,
}


def detect_format(records: list) -> str | None:
    """The format most of the first records look like, from their keys."""
    votes: dict[str, int] = {}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        for fmt, keys in (
            ("preference", {"chosen", "rejected"}),
            ("chat", {"messages"}),
            ("sharegpt", {"conversations"}),
            ("alpaca", {"instruction"}),
            ("prompt-completion", {"prompt", "completion"}),
        ):
            if keys <= rec.keys():
                votes[fmt] = votes.get(fmt, 0) + 1
                break
    return max(votes, key=votes.get) if votes else None


def _system(rec: dict, problems: list) -> list[dict]:
    """A top-level `system` string becomes the first message."""
    if "system" not in rec or rec["system"] in (None, ""):
        return []
    if not isinstance(rec["system"], str):
        problems.append(("wrong-type", f"'system' must be a string, got {_kind(rec['system'])}"))
        return []
    return [{"role": "system", "content": rec["system"]}]


KNOWN = (
    "messages",
    "conversations",
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "chosen",
    "rejected",
    "system",
    "meta",
    "id",
)


def _example(rec: dict, messages: list[dict]) -> dict:
    """The example, with `id` and every key the format does not know (`group`, `source`, `category`
    ...) kept in meta; meta's own value wins. A top-level `group` is then the split group."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    extra = {k: v for k, v in rec.items() if k not in KNOWN and k not in meta}
    if "id" in rec and "id" not in meta:
        extra["id"] = rec["id"]
    return {"messages": messages, "meta": {**meta, **extra} if extra else meta}


def _extra_keys(rec: dict, allowed: tuple) -> list:
    """Top-level keys of another format or of the user's own (`group`, `source`) are no error: they
    go into meta, and validate.py warns once per key, not once per record."""
    return [("extra-key", str(k)) for k in rec if k not in allowed]


def _unknown_keys(obj: dict, allowed: tuple, where: str = "") -> list:
    return [
        ("unknown-key", f"{where}unknown key '{k}' (allowed: {', '.join(allowed)})") for k in obj if k not in allowed
    ]


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


# ------------------------------------------------------------------------------------------ CSV

# field -> header names recognised without a map (lowercased)
CSV_COLUMNS = {
    "system": ("system", "system_prompt"),
    "user": ("user", "prompt", "instruction", "question", "input"),
    "assistant": ("assistant", "completion", "output", "response", "answer"),
    "id": ("id",),
    "group": ("group",),
}


def parse_map(text: str) -> dict[str, str]:
    """'user=Question,assistant=Answer' -> {"user": "Question", "assistant": "Answer"}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        field, sep, column = part.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise UserError(
                f"column map '{text}': '{part}' is not field=Column. fix: e.g. user=Question,assistant=Answer"
            )
        out[field.strip()] = column.strip()
    return out


def read_csv(path: str | Path, mapping: dict[str, str] | None = None, fields=CSV_COLUMNS):
    """Yield (line, {field: value}) for each row of a CSV file, with columns renamed by `mapping`
    (field -> column header), or found by the usual header names in `fields` when no map is given.
    `line` is the 1-based line the row starts on (a quoted cell may span lines)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text. fix: export the file as UTF-8 CSV.") from None
    # A cell may hold a whole report: the csv module's 128 KB cell limit would stop the file there.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise UserError(f"{path}:1: the CSV file is empty (no header row).")
    header = [h.strip() for h in header]
    if mapping:
        missing = [c for c in mapping.values() if c not in header]
        if missing:
            raise UserError(
                f"{path}:1: no column {', '.join(repr(c) for c in missing)} "
                f"(columns: {', '.join(header)}). fix: correct the column map."
            )
        columns = {f: header.index(c) for f, c in mapping.items()}
    else:
        lower = [h.lower() for h in header]
        columns = {}
        for f, names in fields.items():
            hit = next((lower.index(n) for n in names if n in lower), None)
            if hit is not None:
                columns[f] = hit
    start = reader.line_num + 1
    for row in reader:
        if any(cell.strip() for cell in row):
            yield start, {f: (row[i] if i < len(row) else "") for f, i in columns.items()}
        start = reader.line_num + 1


def from_csv_row(row: dict):
    """A CSV row mapped to system/user/assistant -> an example."""
    missing = [k for k in ("user", "assistant") if k not in row]
    if missing:
        return None, [
            ("missing-field", f"no {' or '.join(missing)} column. fix: --format 'csv:user=COLUMN,assistant=COLUMN'")
        ]
    messages = [{"role": "system", "content": row["system"]}] if row.get("system", "").strip() else []
    messages += [{"role": "user", "content": row["user"]}, {"role": "assistant", "content": row["assistant"]}]
    meta = {k: row[k] for k in ("id", "group") if row.get(k)}
    return {"messages": messages, "meta": meta}, []


# -------------------------------------------------------------------------------------- writers


def to_record(example: dict, fmt: str) -> dict:
    """An example in the shape of `fmt` (the inverse of FORMATS[fmt]); single-turn formats need
    exactly one user and one assistant message (after an optional system message)."""
    msgs, meta = example["messages"], example.get("meta") or {}
    system = [m["content"] for m in msgs if m["role"] == "system"]
    turns = [m for m in msgs if m["role"] != "system"]
    if fmt == "chat":
        return {"messages": msgs, **({"meta": meta} if meta else {})}
    if fmt == "sharegpt":
        names = {"user": "human", "assistant": "gpt", "system": "system"}
        return {
            "conversations": [
                {"from": names[m["role"]], "value": m["content"], **({"weight": m["weight"]} if "weight" in m else {})}
                for m in msgs
            ],
            **({"meta": meta} if meta else {}),
        }
    if [m["role"] for m in turns] != ["user", "assistant"]:
        raise ValueError(f"format {fmt} holds one user and one assistant message, not {[m['role'] for m in turns]}")
    user, assistant = turns[0]["content"], turns[1]["content"]
    head = {"system": system[0]} if system else {}
    tail = {"meta": meta} if meta else {}
    if fmt == "prompt-completion":
        return {**head, "prompt": user, "completion": assistant, **tail}
    if fmt == "alpaca":
        return {**head, "instruction": user, "input": "", "output": assistant, **tail}
    raise ValueError(f"unknown format {fmt}")


def write_jsonl(path: str | Path, records: list) -> None:
    """One JSON object per line, UTF-8, LF; byte-identical for equal input."""
    Path(path).write_bytes(jsonl_text(records).encode("utf-8"))


def jsonl_text(records: list) -> str:
    return "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)


def write_csv(path: str | Path, examples: list[dict]) -> None:
    """Single-turn examples as a system,user,assistant CSV."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["system", "user", "assistant"])
        for ex in examples:
            rec = to_record(ex, "prompt-completion")
            w.writerow([rec.get("system", ""), rec["prompt"], rec["completion"]])


# ------------------------------------------------------------------- markdown and plain text


def split_front_matter(text: str, path: str | Path = "") -> tuple[dict | None, str, int]:
    """(front matter or None, body, 1-based line where the body starts) of a markdown file.

    Front matter is YAML between a first line `---` and the next line `---`.
    """
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return None, text, 1
    end = text.find("\n---", 3)
    while end != -1 and text[end + 4 : end + 5] not in ("\n", ""):
        end = text.find("\n---", end + 4)
    if end == -1:
        raise UserError(f"{path}:1: front matter opened with '---' is never closed. fix: add a line '---' after it.")
    head = text[4 : end + 1]
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark else 1
        raise UserError(
            f"{path}:{line}: front matter is not valid YAML ({getattr(exc, 'problem', exc)}). "
            f"fix: quote values that contain a colon."
        ) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}:2: front matter must be key: value lines.")
    body = text[end + 5 :]
    stripped = body.lstrip("\n")
    return meta, stripped, head.count("\n") + 3 + len(body) - len(stripped)
