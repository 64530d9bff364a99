"""Prompt-lookup drafting: guess a greedy reply's next tokens from its own prompt and reply.

A draft is the tokens that followed the last earlier occurrence of the sequence's last four (else
three, else two) tokens, in the prompt or the reply so far. The engine feeds it after the row's last
token and keeps it as long as each drafted token is the one greedy decoding picks, so a reply that
copies its prompt (a study header, a quoted highlight, a template) or repeats itself advances
several tokens a step and is still the reply token-by-token decoding gives. The longer match is
tried first because it predicts the continuation better (fewer tokens fed only to be dropped).
"""

from __future__ import annotations

from tunesmith.generation.request import Request

GRAMS = (4, 3, 2)  # the n-gram lengths matched, longest first
FIRST_DRAFT = 4  # a row's first draft; later ones grow or shrink with what was kept (PromptLookup.adapt)


class PromptLookup:
    """One greedy reply's drafting state: where each n-gram of its prompt and reply last ended, and
    how many tokens its next draft may have."""

    def __init__(self, most: int):
        self.most = most  # the longest draft (EngineConfig.draft_tokens; 0: never draft)
        self.length = min(FIRST_DRAFT, most)
        self.ends: dict[tuple, int] | None = None  # n-gram -> index of its last token; built at the first draft

    def propose(self, req: Request) -> list[int]:
        """The draft for the row's next decode step: at most `length` tokens, none past its limit."""
        room = min(self.length, req.max_new_tokens - len(req.tokens) - 1)
        if room <= 0:
            return []
        n = len(req.prompt) + len(req.tokens)
        if self.ends is None:  # n-grams ending at the last token are left out: it has no follower yet
            seq = req.prompt + req.tokens
            self.ends = {tuple(seq[end - k + 1 : end + 1]): end for k in GRAMS for end in range(k - 1, n - 1)}
        for k in GRAMS:
            end = self.ends.get(tuple(req.token_at(i) for i in range(n - k, n))) if n >= k else None
            if end is not None:
                return [req.token_at(i) for i in range(end + 1, min(end + 1 + room, n))]
        return []

    def extend(self, req: Request) -> None:
        """After a token joined the reply: the n-grams that ended at the token before it (now n - 2)
        have a follower and can be matched."""
        if self.ends is None:
            return
        n = len(req.prompt) + len(req.tokens)
        for k in GRAMS:
            if n - 1 - k >= 0:
                self.ends[tuple(req.token_at(i) for i in range(n - 1 - k, n - 1))] = n - 2

    def adapt(self, drafted: int, kept: int) -> None:
        """A row whose whole draft was kept may draft twice as many next time (up to `most`); one
        whose draft was dropped entirely, half as many (at least one). A reply copying a passage
        advances faster, and one writing freely feeds few tokens that are then dropped."""
        if drafted and kept == drafted:
            self.length = min(self.most, 2 * self.length)
        elif drafted and kept == 0:
            self.length = max(1, self.length // 2)
