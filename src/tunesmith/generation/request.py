"""One prompt to answer and, as the engine fills it in, its reply.

from tunesmith.generation.request import Request
req = engine.submit(Request(prompt_ids, max_new_tokens=128, on_text=print))
req.done.wait(); print(req.text(tok), req.finish_reason)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Request:
    """One prompt to answer; the engine fills in the reply fields."""

    prompt: list[int]  # token ids, chat template applied
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0  # sampling only: the same seed gives the same reply
    stop_on_repeat: bool = True  # the loop guard: stop where the reply starts to repeat itself, drop the repeat
    on_text: Callable[[str], None] | None = None  # streaming: called from the engine's thread with each new piece
    on_done: Callable[["Request"], None] | None = None  # called from the engine's thread once the reply is finished
    # ---- the reply
    tokens: list[int] = field(default_factory=list)  # generated ids, the stop id included when there was one
    kept: int = 0  # tokens that make the reply (before the stop id or the repeat)
    spent: int = 0  # tokens generated, the repeat included, the stop id not
    finish_reason: str | None = None  # stop | length | repeat | cancelled | error
    error: BaseException | None = None
    t_admit: float = 0.0  # prefill began
    t_first: float = 0.0  # first token
    t_done: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    # ---- the engine's bookkeeping while the reply runs
    cancelled: bool = False  # set by cancel(); the engine finishes the request at its next step
    # (the modules below import this one, so their types are named here, not imported)
    prefix: object | None = None  # prefix_cache.SharedPrefix kept out of its row, read once for the rows sharing it
    lookup: object | None = None  # greedy rows: draft.PromptLookup, prompt-lookup drafting
    printed: int = 0  # characters of the reply already streamed

    @property
    def greedy(self) -> bool:
        """Argmax decoding: the only kind that drafts, and the one whose reply equals `generate`'s."""
        return not (self.temperature and self.temperature > 0)

    def cancel(self) -> None:
        """Stop at the next step (a client went away); finish_reason "cancelled"."""
        self.cancelled = True

    def unsent(self, tok, final: bool = False) -> str:
        """The reply's text not yet streamed, once it is settled: up to the last space or line break
        (a later token can still change how the last word decodes), all of it at the end."""
        text = tok.decode(self.tokens[: self.kept], skip_special_tokens=True)
        if not final:
            if text.endswith("\ufffd"):  # half a multi-byte character
                return ""
            text = text if text.endswith("\n") else text[: text.rfind(" ") + 1]
        piece = text[self.printed :]
        self.printed = max(self.printed, len(text))
        return piece

    def text(self, tok) -> str:
        return tok.decode(self.tokens[: self.kept], skip_special_tokens=True).strip()

    def token_at(self, i: int) -> int:
        """Token i of the prompt followed by the reply so far."""
        return self.prompt[i] if i < len(self.prompt) else self.tokens[i - len(self.prompt)]
