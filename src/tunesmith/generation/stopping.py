"""When a reply ends: the stop ids of a vocabulary, and the loop guard's test for a reply that has
started to repeat itself. Shared by the engine, vLLM's path and the exports.

    from tunesmith.generation.stopping import guard_cut, newline_ids, repeat_start, stop_ids
    cut = repeat_start(reply_ids, newline_ids(tok))   # None, or where the repeat begins
    n = guard_cut(finished_ids, newline_ids(tok))     # a reply made without the guard: where it would have stopped
"""

from __future__ import annotations


def stop_ids(tok) -> list[int]:
    """EOS, plus <|im_end|> where the vocabulary has it (ChatML models end turns with it)."""
    ids = {tok.eos_token_id}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def repeat_start(new: list[int], newlines: set[int], min_line: int = 5, min_span: int = 16) -> int | None:
    """Where the repetition at the end of `new` starts (everything before it is kept), or None."""
    n = len(new)
    if n and new[-1] in newlines:  # a line just ended: was it written before?
        begin = max((j + 1 for j in range(n - 1) if new[j] in newlines), default=0)
        line = new[begin:]
        if len(line) >= min_line:
            starts = [0] + [j + 1 for j in range(begin - 1) if new[j] in newlines]
            if any(new[s : s + len(line)] == line for s in starts if s + len(line) <= begin):
                return begin
    for p in range(1, n // 3 + 1):  # the tail is one unit of p tokens, repeated
        reps = max(3, -(-min_span // p))
        if reps * p > n:
            break
        unit = new[n - p :]
        if all(new[n - k * p : n - (k - 1) * p] == unit for k in range(2, reps + 1)):
            k = reps  # extend back over every earlier copy, keep the first
            while k * p + p <= n and new[n - (k + 1) * p : n - k * p] == unit:
                k += 1
            return n - (k - 1) * p
    return None


def reply_end(
    tokens: list[int], max_new_tokens: int, stops: set[int], newlines: set[int] | None
) -> tuple[str, int, int] | None:
    """Whether a reply whose last token just came is finished: (finish reason, tokens that make the
    reply, tokens generated), or None. A stop id ends it and is neither kept nor counted; a loop
    (the loop guard, unless `newlines` is None) ends it and loses the repeat; so does its limit."""
    n = len(tokens)
    if tokens[-1] in stops:
        return "stop", n - 1, n - 1
    cut = repeat_start(tokens, newlines) if newlines is not None else None
    if cut is not None:
        return "repeat", cut, n
    if n >= max_new_tokens:
        return "length", n, n
    return None


def guard_cut(ids: list[int], newlines: set[int]) -> int | None:
    """The loop guard applied after the fact, to a reply generated without it (vLLM's, transformers'
    `generate`): the tokens generated when the engine, checking after every token, would have
    stopped it, or None. `repeat_start(ids[:n], newlines)` is then where the kept reply ends."""
    for n in range(1, len(ids) + 1):
        if repeat_start(ids[:n], newlines) is not None:
            return n
    return None


_NEWLINES: dict[tuple, set[int]] = {}


def newline_ids(tok) -> set[int]:
    """Ids of the tokens whose text contains a line break (computed once per vocabulary)."""
    key = (tok.name_or_path, len(tok))
    if key not in _NEWLINES:
        _NEWLINES[key] = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
    return _NEWLINES[key]
