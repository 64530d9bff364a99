"""The next token per row: argmax for greedy rows; temperature, top-k and top-p for sampling ones,
each sampling row on its own seeded generator so that the same seed gives the same reply."""

from __future__ import annotations

import torch

from tunesmith.generation.request import Request


class Sampler:
    """Picks next tokens; keeps a generator per sampling request while it runs."""

    def __init__(self, model, device):
        # the model's generation_config top_k applies to sampling, as in transformers' generate
        self.top_k = int(getattr(getattr(model, "generation_config", None), "top_k", 0) or 0)
        self.device = device
        self.generators: dict[int, torch.Generator] = {}

    def begin(self, req: Request) -> None:
        if not req.greedy:
            self.generators[id(req)] = torch.Generator(device=self.device).manual_seed(req.seed)

    def end(self, req: Request) -> None:
        self.generators.pop(id(req), None)

    def pick(self, logits: torch.Tensor, reqs: list[Request]) -> list[int]:
        """Next token per row from its logits (rows, vocab), float32."""
        picks = logits.argmax(-1).tolist()
        for i, req in enumerate(reqs):
            if not req.greedy:
                scores = logits[i] / req.temperature
                if self.top_k:
                    kth = torch.topk(scores, min(self.top_k, scores.numel())).values[-1]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                if req.top_p < 1.0:
                    sorted_scores, order = torch.sort(scores, descending=False)
                    cum = sorted_scores.softmax(-1).cumsum(-1)
                    drop = cum <= 1 - req.top_p
                    drop[-1] = False  # keep at least the most likely token
                    scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
                probs = scores.softmax(-1)
                picks[i] = int(torch.multinomial(probs, 1, generator=self.generators[id(req)]))
        return picks
