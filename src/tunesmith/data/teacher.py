"""Examples a teacher model helps make, for `tunesmith import --config teacher.yaml`: restyle pairs
and grounded questions, the response still the team's own text.

    tunesmith import team-folder/ -o data/ --config teacher.yaml    # teacher: {url, model, api_key_env}

- *restyle* (back-translation): the teacher writes a plain, off-style draft of a team paragraph;
  the example is draft → the team's paragraph, so the model learns the house style, not the facts.
- *question* (grounded): the teacher writes a question the paragraph answers and the answer's key
  facts; the example is question → the team's paragraph, with the facts in `meta.answer` (compare's
  answer accuracy reads them).

Only training-side paragraphs are sent, so nothing held out reaches the teacher or the examples.
The endpoint is any OpenAI-compatible one, through the judge's client (retries with backoff or the
server's Retry-After, 401/403/404 stop at once). Every reply is cached on disk by its request, so a
repeated or interrupted import never pays twice. Filters, each counted: an off-format reply, a draft
or question out of the length bounds, facts not found in the paragraph (ungrounded), and near
duplicates by MinHash LSH (datasketch).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tunesmith import UserError

RESTYLE = (
    "Rewrite the paragraph below as a plain first draft: the same facts, in ordinary everyday words, "
    "with none of its style. Reply with the draft only.\n\n{passage}"
)
QUESTION = (
    "Write one question that the paragraph below answers, and the key facts of its answer, copied "
    "from the paragraph. Reply in exactly two lines:\nQuestion: <the question>\nFacts: <fact>; <fact>\n\n{passage}"
)
MIN_PASSAGE_WORDS = 25  # a shorter paragraph has too little to restyle or ask about


def check(t) -> None:
    """A configured teacher must be usable before anything is sent."""
    from tunesmith import endpoint

    if not t.url:
        return
    endpoint.check(t, "teacher")
    unknown = set(_tasks(t)) - {"restyle", "question"}
    if unknown:
        raise UserError(f"teacher.tasks: unknown {', '.join(sorted(unknown))}. fix: restyle, question or both.")


def _tasks(t) -> list[str]:
    return [x.strip() for x in t.tasks.split(",") if x.strip()]


def passages(documents: list, held_groups: set) -> list[dict]:
    """Training-side paragraphs of the documents: [{text, source, section, group}], in file order."""
    from tunesmith.data.documents import outline

    out = []
    for doc in documents:
        if doc.meta["_group"] in held_groups:
            continue
        _, _, sections = outline(doc)
        for s in sections:
            text = "\n".join(line for _, line in s["lines"])
            for para in re.split(r"\n\s*\n", text):
                para = para.strip()
                if len(para.split()) >= MIN_PASSAGE_WORDS and not para.startswith(("|", "#", "- ")):
                    out.append(
                        {"text": para, "source": doc.source, "section": s["heading"], "group": doc.meta["_group"]}
                    )
    return out


def teacher_examples(t, paras: list[dict], cache_dir: Path) -> tuple[list[dict], dict]:
    """(examples, stats) from the teacher on at most t.max_passages paragraphs."""
    from tunesmith.endpoint import Client, Unusable

    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        raise UserError("the teacher's near-duplicate filter needs datasketch. fix: pip install datasketch") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    client = Client(t)
    lsh = MinHashLSH(threshold=t.dedup_threshold, num_perm=64)
    counts = {
        task: dict.fromkeys(("asked", "failed", "off-format", "length", "ungrounded", "near-duplicate", "kept"), 0)
        for task in _tasks(t)
    }
    stats = {"requests": 0, "cached": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0, "filters": counts}
    examples = []
    try:
        for n, p in enumerate(paras[: t.max_passages]):
            for task in _tasks(t):
                c = counts[task]
                c["asked"] += 1
                prompt = (RESTYLE if task == "restyle" else QUESTION).format(passage=p["text"])
                reply, error = _ask(client, t, prompt, cache_dir, stats)
                if reply is None:
                    c["failed"] += 1
                    continue
                made = _restyle(reply, p) if task == "restyle" else _question(reply, p)
                if made is None:
                    c["off-format"] += 1
                    continue
                asked_text, facts = made
                if not t.min_words <= len(asked_text.split()) <= t.max_words:
                    c["length"] += 1
                    continue
                if task == "question" and not all(_grounded(f, p["text"]) for f in facts):
                    c["ungrounded"] += 1
                    continue
                sketch = MinHash(num_perm=64)
                for word in set(re.findall(r"\w+", asked_text.lower())):
                    sketch.update(word.encode())
                if lsh.query(sketch):
                    c["near-duplicate"] += 1
                    continue
                lsh.insert(f"{task}:{n}", sketch)
                c["kept"] += 1
                user = (
                    f"Rewrite this draft in our house style.\n\nDraft:\n{asked_text}"
                    if task == "restyle"
                    else asked_text
                )
                meta = {
                    "source": p["source"],
                    "id": f"{task}:{p['source']}#{n}",
                    "group": p["group"],
                    "task": task,
                    "section": p["section"],
                    "teacher": t.model,
                    "split": "train",  # made from training-side text: never held out
                }
                if facts:
                    meta["answer"] = facts
                examples.append(
                    {
                        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": p["text"]}],
                        "meta": meta,
                    }
                )
    except Unusable as exc:
        raise UserError(
            f"the teacher at {t.url} refuses requests ({exc}). fix: check teacher.url, model and key."
        ) from None
    finally:
        client.close()
    stats["retries"] = client.retries
    stats["cost_usd"] = (stats["prompt_tokens"] + stats["completion_tokens"]) / 1000 * t.price_per_1k_tokens
    return examples, stats


def _ask(client, t, prompt: str, cache_dir: Path, stats: dict) -> tuple[str | None, str | None]:
    """The teacher's reply, from the cache when this exact request was answered before."""
    msgs = [{"role": "user", "content": prompt}]
    key = hashlib.sha256(json.dumps([t.url, t.model, t.max_tokens, msgs], sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"{key}.json"
    if path.exists():
        stats["cached"] += 1
        return json.loads(path.read_text(encoding="utf-8"))["reply"], None
    before = (client.requests, client.prompt_tokens, client.completion_tokens)
    reply, error = client.ask(msgs)
    stats["requests"] += client.requests - before[0]
    stats["prompt_tokens"] += client.prompt_tokens - before[1]
    stats["completion_tokens"] += client.completion_tokens - before[2]
    if reply is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"reply": reply}), encoding="utf-8")
        tmp.replace(path)  # a killed import leaves no half-written entry
    return reply, error


def _restyle(reply: str, p: dict):
    draft = reply.strip().removeprefix("Draft:").strip()
    if not draft or draft == p["text"]:
        return None
    return draft, None


def _question(reply: str, p: dict):
    q = re.search(r"(?im)^\s*question\s*:\s*(.+)$", reply)
    f = re.search(r"(?im)^\s*facts?\s*:\s*(.+)$", reply)
    if not q or not f:
        return None
    facts = [x.strip().strip(".") for x in f.group(1).split(";") if x.strip().strip(".")]
    return (q.group(1).strip(), facts) if facts and q.group(1).strip().endswith("?") else None


def _grounded(fact: str, passage: str) -> bool:
    """Most of a fact's words are in the paragraph: the answer comes from the team's text."""
    words = re.findall(r"\w+", fact.lower())
    have = set(re.findall(r"\w+", passage.lower()))
    return bool(words) and sum(w in have for w in words) >= 0.8 * len(words)
