"""Prefixes that several prompts share (a system prompt, a style guide, the same few-shot block):
prefilled once, their keys and values copied for the prompts that start with them; and the groups
of running rows that read a long shared prefix once, from outside their rows."""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(eq=False)
class SharedPrefix:
    """A prefix kept out of the rows that share it: decode attends over it once for all of them."""

    layers: list  # per layer (k, v), each (1, kv_heads, at least `length`, head_dim)
    length: int  # tokens of it the rows read
    tokens: list[int]  # those tokens: a newcomer whose prompt starts with them joins the group

    def key(self) -> tuple[int, int]:
        """Rows with the same stored keys read to the same length form one group."""
        return id(self.layers), self.length


class PrefixCache:
    """Keys and values of prefixes that several prompts share, least recently used dropped first.
    min_tokens None: nothing is reused."""

    def __init__(self, min_tokens: int | None, max_bytes: int, recent: int = 16):
        self.min_tokens, self.max_bytes = min_tokens, max_bytes
        self.entries: collections.OrderedDict[tuple, list] = collections.OrderedDict()
        self.recent: collections.deque[list[int]] = collections.deque(maxlen=recent)

    def lookup(self, prompt: list[int]) -> tuple[int, list | None]:
        """(tokens reusable, per-layer (k, v)) of the stored prefix that covers most of `prompt`; the
        prompt keeps at least its last token, whose logits pick the first reply token."""
        best, layers, key = 0, None, None
        for tokens, kv in self.entries.items():
            n = min(common(tokens, prompt), len(prompt) - 1)
            if n > best:
                best, layers, key = n, kv, tokens
        if self.min_tokens is None or best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(key)
        return best, layers

    def learn(self, prompt: list[int], cache, upcoming: list[list[int]]) -> None:
        """After `prompt` is prefilled: keep the longest prefix it shares with a prompt to come or a
        recent one, unless a stored prefix already covers it."""
        if self.min_tokens is None:
            return
        others = list(upcoming) + list(self.recent)
        self.recent.append(prompt)
        n = max((min(common(prompt, o), len(o) - 1, len(prompt)) for o in others), default=0)
        if n < self.min_tokens or self.lookup(prompt)[0] >= n:
            return
        layers = [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()) for layer in cache.layers]
        self.entries[tuple(prompt[:n])] = layers
        while sum(_nbytes(kv) for kv in self.entries.values()) > self.max_bytes and len(self.entries) > 1:
            self.entries.popitem(last=False)

    def shared_for(
        self,
        prompt: list[int],
        running: list[SharedPrefix | None],
        reused: int,
        layers: list | None,
        upcoming: list[list[int]],
        threshold: int,
    ) -> SharedPrefix | None:
        """The prefix a newly prefilled row reads from outside its row at decode, or None: the group
        of running rows whose prefix its prompt starts with; else, where it reuses a stored prefix of
        `threshold` tokens or more (`reused` tokens of `layers` at its prefill, or one just stored), a
        new group whose prefix is what it shares with every prompt to come that shares that much with
        it, so that they join this group rather than each reading a copy that differs in its last
        tokens."""
        for prefix in running:
            if prefix is not None and len(prompt) > prefix.length and prompt[: prefix.length] == prefix.tokens:
                return prefix
        if reused < threshold:  # it may have just stored one
            reused, layers = self.lookup(prompt)
        if reused < threshold:
            return None
        alike = (common(prompt, o) for o in upcoming)
        own = min([reused] + [n for n in alike if n >= threshold])
        return SharedPrefix(layers, own, prompt[:own])


def common(a, b) -> int:
    """Length of the common prefix of two token sequences (slices compare in C: a bisection of
    slice comparisons beats a Python loop over thousands of tokens)."""
    a, b = a if isinstance(a, list) else list(a), b if isinstance(b, list) else list(b)  # a stored key is a tuple
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _nbytes(layers: list) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
