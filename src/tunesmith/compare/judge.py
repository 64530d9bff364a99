"""An LLM judge for the verdict: pairwise, blind, each pair asked in both orders.

    from tunesmith.compare.judge import judge, rubric
    result = judge(cfg.judge, examples, texts, reference="few-shot-retrieved", arms=["fine-tuned"],
                   rubric_text=rubric(style, glossary, templates))
    result["arms"]["fine-tuned"]["win_rate"]   # share of pairs won against the reference arm, ties half

Any OpenAI-compatible `/chat/completions` endpoint will do: a team's hosted model, vLLM, Ollama,
`tunesmith serve`. The key comes from the environment variable `judge.api_key_env` names, never
from the config file.

Each held-out example gives one pair: the judged arm's reply and the reference arm's (the best arm
that needs no training). The judge sees them as "Reply A" and "Reply B", never the arm names, once
in each order; a verdict is read from the pair only when both orders give one, and the pair scores
the mean of the two (win 1, tie 0.5, loss 0), so a judge that always prefers the first reply scores
every pair 0.5 instead of tilting the result. The share of pairs whose two orders disagree is that
position bias, measured. A request that fails is retried with exponential backoff; a judge that
still fails, or answers without a verdict in the asked form, is reported for that pair — its answer
is never guessed.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from tunesmith import UserError, endpoint
from tunesmith.endpoint import Client, Unusable

STYLE_CHARS = 6000  # the style guide in the rubric is cut here: the judge is paid per token, every pair
_VERDICT = re.compile(r"winner\s*[:=]\s*\**\s*(a|b|tie)\b", re.IGNORECASE)
SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def check(j, arm_names: list[str]) -> None:
    """Before any training: a judge that is configured must be usable."""
    if not j.url:
        return
    endpoint.check(j, "judge")
    for key in ("concurrency", "max_tokens"):
        if getattr(j, key) < 1:
            raise UserError(f"judge.{key} must be at least 1, got {getattr(j, key)}. fix: set judge.{key}.")
    unknown = [a for a in _names(j.arms) if a not in arm_names]
    if unknown:
        raise UserError(
            f"judge.arms: {', '.join(unknown)} not among the compared arms ({', '.join(arm_names)}). "
            f"fix: name arms of compare.arms, or leave judge.arms empty for all."
        )


def _names(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",") if s.strip()]


def rubric(style: str = "", glossary: list = (), templates: dict | None = None, prompt: str = "") -> str:
    """What the judge weighs, drawn from what the team wrote down: the reference first, then its
    templates, glossary, own prompt and style guide."""
    parts = [
        "You compare two replies to the same request and say which one this team would rather publish. "
        "Weigh, in this order: (1) correct and faithful to the reference answer the team wrote — its facts, "
        "numbers and names; a reply that states a different fact is wrong however well written; (2) follows "
        "the house template where one applies, every part in order; (3) uses the glossary's preferred terms, "
        "never the retired variants; (4) follows the house style; (5) as long as the content needs, no "
        "padding. A reply that repeats itself or breaks off is worse. Which reply comes first says nothing."
    ]
    if templates:
        parts.append(
            "House templates (the required parts, in order):\n"
            + "\n".join(f"- {name}: " + " / ".join(labels) for name, labels in templates.items())
        )
    if glossary:
        parts.append(
            "Glossary (preferred term, and the retired variants never to use):\n"
            + "\n".join(f"- {t.term}" + (f" (never: {', '.join(t.rejected)})" if t.rejected else "") for t in glossary)
        )
    if prompt.strip():
        parts.append("The team's own instructions to the model:\n" + prompt.strip())
    if style.strip():
        cut = style.strip()[:STYLE_CHARS]
        parts.append(
            "House style guide" + (" (its beginning)" if len(style.strip()) > STYLE_CHARS else "") + ":\n" + cut
        )
    parts.append(
        "Answer with one line, exactly `Winner: A`, `Winner: B` or `Winner: tie`, then at most one sentence why."
    )
    return "\n\n".join(parts)


def messages(rubric_text: str, request: str, reference: str, reply_a: str, reply_b: str) -> list[dict]:
    return [
        {"role": "system", "content": rubric_text},
        {
            "role": "user",
            "content": f"# The request\n{request}\n\n# The team's own answer (the reference)\n{reference}\n\n"
            f"# Reply A\n{reply_a}\n\n# Reply B\n{reply_b}\n\nWhich reply is better? Winner: A, B or tie?",
        },
    ]


def parse(text: str) -> str | None:
    """'A', 'B' or 'tie' when the answer gives exactly one verdict in the asked form; else None."""
    found = {m.group(1).lower() for m in _VERDICT.finditer(text or "")}
    if len(found) != 1:
        return None
    v = found.pop()
    return v if v == "tie" else v.upper()


def judge(
    j,
    examples: list[dict],
    texts: dict[str, list[str]],
    reference: str,
    arms: list[str],
    rubric_text: str,
    resamples: int = 2000,
    seed: int = 0,
    log=print,
) -> dict:
    """Judge each arm of `arms` against `reference` on every example; see the module docstring.
    texts: {arm: [reply per example]}. Returns what results.json keeps under "judge"."""
    from tunesmith.compare.arms import prompt_of, reference_of
    from tunesmith.compare.stats import bootstrap_mean

    examples = examples[: j.max_examples] if j.max_examples else examples
    client = Client(j)
    out = {
        "status": "ok",
        "url": j.url,
        "model": j.model,
        "reference": reference,
        "examples": len(examples),
        "arms": {},
    }
    try:
        for arm in arms:
            log(f"judge: {arm} against {reference}, {len(examples)} pairs, both orders")
            pool = ThreadPoolExecutor(max(1, j.concurrency))
            try:  # map keeps example order
                pairs = list(
                    pool.map(
                        lambda i: _pair(
                            client,
                            rubric_text,
                            examples[i],
                            texts[arm][i],
                            texts[reference][i],
                            i,
                            prompt_of,
                            reference_of,
                        ),
                        range(len(examples)),
                    )
                )
            finally:
                pool.shutdown(cancel_futures=True)
            out["arms"][arm] = _summary(pairs, resamples, seed, bootstrap_mean)
    except Unusable as exc:
        out["status"], out["reason"] = (
            "failed",
            (
                f"the endpoint refused the judge: {exc}. fix: check judge.url "
                f"(the base URL, ending in /v1), judge.model and the key in ${j.api_key_env or '…'}."
            ),
        )
        log(f"judge: stopped — {out['reason']}")
    finally:
        client.close()
    out.update(
        requests=client.requests,
        retries=client.retries,
        prompt_tokens=client.prompt_tokens,
        completion_tokens=client.completion_tokens,
        usage_missing=client.usage_missing,
        cost=(client.prompt_tokens + client.completion_tokens) / 1000 * j.price_per_1k_tokens,
    )
    return out


def _pair(
    client: Client, rubric_text: str, ex: dict, mine: str, theirs: str, index: int, prompt_of, reference_of
) -> dict:
    if mine.strip() == theirs.strip():
        return {"index": index, "status": "identical", "score": 0.5, "orders": []}  # a tie by definition; not asked
    request = "\n\n".join(m["content"] for m in prompt_of(ex) if m["role"] == "user")
    orders = []
    for label, a, b, mine_is in (("arm first", mine, theirs, "A"), ("reference first", theirs, mine, "B")):
        text, error = client.ask(messages(rubric_text, request, reference_of(ex), a, b))
        verdict = parse(text) if text is not None else None
        outcome = None if verdict is None else "tie" if verdict == "tie" else "win" if verdict == mine_is else "loss"
        orders.append(
            {
                "order": label,
                "verdict": verdict,
                "outcome": outcome,
                "error": error,
                "answer": None if text is None else text[:300],
            }
        )
    if any(o["error"] for o in orders):
        status = "failed"
    elif any(o["outcome"] is None for o in orders):
        status = "off-format"
    else:
        status = "ok"
    score = sum(SCORE[o["outcome"]] for o in orders) / 2 if status == "ok" else None
    return {
        "index": index,
        "status": status,
        "score": score,
        "orders": orders,
        "disagree": status == "ok" and orders[0]["outcome"] != orders[1]["outcome"],
    }


def _summary(pairs: list[dict], resamples: int, seed: int, bootstrap_mean) -> dict:
    scored = [p["score"] for p in pairs if p["score"] is not None]
    asked = [p for p in pairs if p["status"] == "ok"]
    mean, lo, hi = bootstrap_mean(scored, resamples, seed) if scored else (None, None, None)
    return {
        "pairs": len(pairs),
        "judged": len(scored),
        "win_rate": mean,
        "lo": lo,
        "hi": hi,
        "wins": sum(p["score"] == 1.0 for p in asked),
        "losses": sum(p["score"] == 0.0 for p in asked),
        "ties": sum(p["score"] == 0.5 for p in asked),
        "identical": sum(p["status"] == "identical" for p in pairs),
        "off_format": sum(p["status"] == "off-format" for p in pairs),
        "failed": sum(p["status"] == "failed" for p in pairs),
        "disagree_share": sum(p["disagree"] for p in asked) / len(asked) if asked else None,
        "problems": [
            {
                "index": p["index"],
                "status": p["status"],
                "detail": "; ".join(
                    f"{o['order']}: " + (o["error"] or f"no verdict in {o['answer']!r}")
                    for o in p["orders"]
                    if o["error"] or o["outcome"] is None
                ),
            }
            for p in pairs
            if p["status"] in ("off-format", "failed")
        ],
        "detail": pairs,
    }
