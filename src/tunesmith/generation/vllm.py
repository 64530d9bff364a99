"""vLLM behind compare's batch generation and `tunesmith serve`, on CUDA where `vllm` is installed.

    tunesmith compare config.yaml generate.engine=vllm
    tunesmith serve runs/pantry --engine vllm

`generate.engine` picks the engine: `tunesmith` (tunesmith.generation.engine, any device), `vllm`, or `auto`
(vLLM when CUDA and the package are both there). A run's LoRA adapter is served on its base model
through vLLM's LoRARequest; a merged export or any model directory loads as is. The loop guard
applies to vLLM's replies too: a reply is cut where the tunesmith engine would have stopped it
(batch) or aborted there (serve).

vllm is imported only here, and only when chosen: `pip install vllm` (CUDA; see docs.vllm.ai).
"""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tunesmith import UserError

ENGINES = ("auto", "tunesmith", "vllm")


def choose(engine: str, cuda: bool | None = None, installed: bool | None = None) -> str:
    """The engine `generate.engine` means on this machine: "tunesmith" or "vllm"."""
    if engine not in ENGINES:
        raise UserError(f"generate.engine '{engine}': unknown. fix: one of {', '.join(ENGINES)}.")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if installed is None:
        installed = importlib.util.find_spec("vllm") is not None
    if engine == "tunesmith" or (engine == "auto" and not (cuda and installed)):
        return "tunesmith"
    if not cuda:
        raise UserError(
            "generate.engine=vllm needs a CUDA GPU, and this machine has none. "
            "fix: set generate.engine=tunesmith (or auto)."
        )
    if not installed:
        raise UserError(
            "generate.engine=vllm needs the vllm package. fix: pip install vllm (or set generate.engine=tunesmith)."
        )
    return "vllm"


@dataclass
class VllmModel:
    """A model loaded into vLLM, and the adapter (if any) every request applies."""

    llm: object  # vllm.LLM, or vllm's AsyncLLM for serve
    lora: object | None  # vllm.lora.request.LoRARequest


def _paths(spec) -> tuple[str, str | None, int]:
    """(model directory for vLLM, adapter directory or None, adapter rank)."""
    from tunesmith.models import converted_dir, resolve

    source = resolve(str(spec) if spec is not None else None)
    if source.kind != "adapter":
        return str(converted_dir(source)), None, 0
    rank = int(json.loads((Path(source.path) / "adapter_config.json").read_text()).get("r", 16))
    return str(converted_dir(source.base)), str(source.path), rank


def _engine_kwargs(spec, dtype: str, trust_remote_code: bool) -> tuple[dict, object | None]:
    from vllm.lora.request import LoRARequest

    model_dir, adapter, rank = _paths(spec)
    kwargs = dict(
        model=model_dir,
        tokenizer=model_dir,
        dtype=dtype if dtype in ("float16", "bfloat16", "float32") else "auto",
        trust_remote_code=trust_remote_code,
    )
    lora = None
    if adapter is not None:
        # vLLM sizes its LoRA buffers by the largest rank it will see; its supported ranks are powers of two
        kwargs.update(enable_lora=True, max_lora_rank=max(8, 1 << (rank - 1).bit_length()), max_loras=1)
        lora = LoRARequest("tunesmith-adapter", 1, adapter)
    return kwargs, lora


def load(spec, dtype: str = "auto", trust_remote_code: bool = False):
    """(VllmModel, tokenizer) for batch generation."""
    from vllm import LLM

    from tunesmith.models import load_tokenizer

    kwargs, lora = _engine_kwargs(spec, dtype, trust_remote_code)
    return VllmModel(LLM(**kwargs), lora), load_tokenizer(spec)


def _params(tok, max_new_tokens: int, temperature: float, top_p: float, seed: int | None):
    from vllm import SamplingParams

    from tunesmith.generation.stopping import stop_ids

    return SamplingParams(
        max_tokens=max_new_tokens,
        temperature=temperature or 0.0,
        top_p=top_p if temperature else 1.0,
        seed=seed,
        stop_token_ids=stop_ids(tok),
        skip_special_tokens=True,
    )


def generate(
    vm: VllmModel,
    tok,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    stop_on_repeat: bool,
) -> list[tuple[str, int, int, float, str]]:
    """(text, prompt tokens, completion tokens, latency, finish reason) per token-id prompt, in order.
    vLLM reports no per-request time here: each reply's latency is the batch's wall time."""
    from vllm.inputs import TokensPrompt

    from tunesmith.generation.stopping import guard_cut, newline_ids, repeat_start, stop_ids

    t0 = time.perf_counter()
    outs = vm.llm.generate(
        [TokensPrompt(prompt_token_ids=p) for p in prompts],
        _params(tok, max_new_tokens, temperature, top_p, seed),
        lora_request=vm.lora,
        use_tqdm=False,
    )
    wall = time.perf_counter() - t0
    stop, newlines = set(stop_ids(tok)), newline_ids(tok) if stop_on_repeat else set()
    results = []
    for prompt, out in zip(prompts, outs):
        ids = [t for t in out.outputs[0].token_ids if t not in stop]
        n = guard_cut(ids, newlines) if stop_on_repeat else None
        if n is not None:
            kept, spent, reason = ids[: repeat_start(ids[:n], newlines)], n, "repeat"
        else:
            kept, spent = ids, len(ids)
            reason = "stop" if out.outputs[0].finish_reason == "stop" else "length"
        results.append((tok.decode(kept, skip_special_tokens=True).strip(), len(prompt), spent, wall, reason))
    return results


# ------------------------------------------------------------------------------------------ serve


class AsyncBackend:
    """vLLM's AsyncLLM for `tunesmith serve`: one request per client, batched by vLLM."""

    def __init__(self, spec, dtype: str = "auto", trust_remote_code: bool = False, max_concurrency: int = 8):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs, self.lora = _engine_kwargs(spec, dtype, trust_remote_code)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs, max_num_seqs=max_concurrency))
        self.running = 0

    async def stream(
        self,
        tok,
        prompt: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop_on_repeat: bool,
        usage: dict,
    ):
        """Yield the reply's new text as vLLM produces it; fill `usage` at the end. Leaving the loop
        early (the client went away) aborts the request in vLLM."""
        from vllm.inputs import TokensPrompt

        from tunesmith.generation.stopping import newline_ids, repeat_start, stop_ids

        rid, sent, reason, spent = f"tunesmith-{uuid.uuid4().hex}", "", "length", 0
        newlines, stops = newline_ids(tok) if stop_on_repeat else set(), set(stop_ids(tok))
        self.running += 1
        try:
            async for out in self.llm.generate(
                TokensPrompt(prompt_token_ids=prompt),
                _params(tok, max_tokens, temperature, top_p, None),
                rid,
                lora_request=self.lora,
            ):
                o = out.outputs[0]
                ids = [t for t in o.token_ids if t not in stops]  # the stop id is not part of the reply
                spent = len(ids)
                if stop_on_repeat and repeat_start(ids, newlines) is not None:
                    await self.llm.abort(rid)
                    reason = "repeat"
                    break
                if len(o.text) > len(sent):
                    yield o.text[len(sent) :]
                    sent = o.text
                if out.finished:
                    reason = "stop" if o.finish_reason == "stop" else "length"
        finally:
            self.running -= 1
        usage.update(prompt_tokens=len(prompt), completion_tokens=spent, finish_reason=reason)
