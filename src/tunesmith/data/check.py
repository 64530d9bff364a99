"""`tunesmith check`: what is wrong with a dataset, how many tokens it holds under the model's chat
template, and what an epoch of training will cost — before anything is trained.

    tunesmith check train.jsonl [heldout.jsonl] [--model M] [--max-len 1024] [--json]
    tunesmith check data/config.yaml          # the config's data files, model and max_len

Token counts are exact. They are fast enough for 100k examples because the chat template is
rendered once per role sequence (then filled in by string joins, checked against the real
rendering) and because text is counted per pre-token word with a cache, checked against the
tokenizer itself; where either check fails we fall back to the tokenizer on every text.
Time per epoch here comes from a short measured probe (a few forward+backward+optimizer steps of
the model on real rows of the data); the reference-GPU time and cost come from FLOPs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

from tunesmith import UserError
from tunesmith.data.validate import CODES, Issue, dataset_issues, errors, overlap_issues, read_dataset

# The reference GPU for the estimate. MFU is the share of peak a well-fed fine-tune reaches.
REFERENCE_GPU = {"name": "H100 SXM", "peak_flops": 989e12, "mfu": 0.40, "precision": "bf16 dense"}
# Training FLOPs per parameter per token: forward 2, backward 4 (2 for activations, 2 for weight
# gradients). LoRA freezes the base weights, so their weight gradients (2) are never computed.
FLOPS_PER_PARAM_TOKEN = {"full": 6, "lora": 4, "dora": 4, "qlora": 4}
DEFAULT_GPU_PRICE = 2.50  # $/hour for one reference GPU, on demand


# ------------------------------------------------------------------------------------ tokens


class TokenCounter:
    """Exact token counts of many texts (no special tokens added), fast.

    A BPE tokenizer splits text into pre-tokens (regex matches) and encodes each on its own, so a
    text's count is the sum of its pieces' counts, and a cache of piece counts replaces most of the
    work. With the GPT-2 byte-level split no pre-token runs from a non-space into a space, so the
    pieces can be whitespace-led words (`\\s*\\S+`), which the plain `re` module finds quickly. The
    shortcut is used only where we can mirror the tokenizer's split, only on texts without special
    tokens, and only once it agrees with the tokenizer on the first texts.
    """

    def __init__(self, tok):
        self.tok = tok
        self.backend = getattr(tok, "backend_tokenizer", None)
        self.split = _splitter(self.backend) if self.backend is not None else None
        added = list(tok.get_added_vocab()) if hasattr(tok, "get_added_vocab") else []
        self.special = re.compile("|".join(map(re.escape, sorted(added, key=len, reverse=True)))) if added else None
        self.pieces: dict[str, int] = {}
        self.texts: dict[str, int] = {}
        self.verified = self.split is None

    def exact(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.backend is not None:
            return [len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def __call__(self, texts: list[str]) -> list[int]:
        new = list(dict.fromkeys(t for t in texts if t not in self.texts))
        if new and not self.verified:
            sample = new[:64]
            if self._fast(sample) != self.exact(sample):
                self.split = None  # the shortcut disagrees with the tokenizer: count everything exactly
            self.verified = True
        if self.split is None:
            self.texts.update(zip(new, self.exact(new)))
        else:
            special = [t for t in new if self.special and self.special.search(t)]
            self.texts.update(zip(special, self.exact(special)))
            plain = [t for t in new if t not in self.texts] if special else new
            self.texts.update(zip(plain, self._fast(plain)))
        return [self.texts[t] for t in texts]

    def _fast(self, texts: list[str], chunk: int = 4096) -> list[int]:
        out, cache = [], self.pieces
        for start in range(0, len(texts), chunk):
            parts = [self.split(t) for t in texts[start : start + chunk]]
            missing = list(set().union(*parts).difference(cache))  # C-level set work, not a Python loop
            cache.update(zip(missing, self.exact(missing)))
            out += [sum(map(cache.__getitem__, p)) for p in parts]
        return out


def _splitter(backend):
    """A function text -> pieces whose token counts add up to the text's, or None."""
    spec = json.loads(backend.to_str())
    if spec.get("normalizer") or spec.get("model", {}).get("type") != "BPE":
        return None
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return re.compile(r"\s*\S+|\s+").findall
    if pre.get("type") == "Sequence":  # Llama 3, Qwen: an explicit split regex, then bytes
        parts = pre.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        rest = [p for p in parts if p.get("type") != "Split"]
        if (
            len(splits) == 1
            and splits[0].get("behavior") == "Isolated"
            and not splits[0].get("invert")
            and all(p.get("type") == "ByteLevel" and not p.get("use_regex", True) for p in rest)
        ):
            try:
                import regex

                return regex.compile(splits[0].get("pattern", {}).get("Regex") or "(?!)").findall
            except Exception:  # no `regex` module, or a pattern it cannot compile
                return None
    return None


def _template_pieces(tok, messages: list[dict]) -> list[str] | None:
    """The chat template's text around each message for this role sequence: pieces[i] comes
    before message i, pieces[-1] after the last. None when the template does not just wrap contents."""
    from tunesmith.models import render

    marks = [f"\x00{i}\x00" for i in range(len(messages))]
    try:
        text = render(tok, [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)], False)
    except Exception:  # a template may refuse a role sequence; the example is then counted as rendered
        return None
    pieces = []
    for mark in marks:
        head, sep, text = text.partition(mark)
        if not sep or mark in text:
            return None
        pieces.append(head)
    pieces.append(text)
    real = render(tok, messages, False)
    return pieces if "".join(p + m["content"] for p, m in zip(pieces, messages)) + pieces[-1] == real else None


def token_lengths(tok, examples: list[dict]) -> tuple[list[int], list[int]]:
    """Per example: tokens under the chat template, and trainable tokens (assistant messages with
    weight 1, each with the end-of-turn token that follows it)."""
    count = TokenCounter(tok)
    shapes: dict[tuple, list | None] = {}  # role sequence -> (pieces, piece token counts) or None
    totals, trainable = [0] * len(examples), [0] * len(examples)
    fast, slow = [], []
    for i, ex in enumerate(examples):
        sig = tuple(m["role"] for m in ex["messages"])
        if sig not in shapes:
            pieces = _template_pieces(tok, ex["messages"])
            shapes[sig] = None
            if pieces is not None:
                piece_counts = count.exact(pieces)
                # Counts add up only if no token spans a piece/content boundary: check on this example.
                contents = count([m["content"] for m in ex["messages"]])
                real = count.exact(["".join(p + m["content"] for p, m in zip(pieces, ex["messages"])) + pieces[-1]])[0]
                if sum(piece_counts) + sum(contents) == real:
                    shapes[sig] = (pieces, piece_counts)
        (fast if shapes[sig] else slow).append(i)

    flat = [m["content"] for i in fast for m in examples[i]["messages"]]
    counts = iter(count(flat))
    for i in fast:
        pieces, piece_counts = shapes[tuple(m["role"] for m in examples[i]["messages"])]
        total, train = sum(piece_counts), 0
        for k, m in enumerate(examples[i]["messages"]):
            n = next(counts)
            total += n
            if m["role"] == "assistant" and m.get("weight", 1):
                train += n + (1 if pieces[k + 1] else 0)  # + the end-of-turn token
        totals[i], trainable[i] = total, train
    if slow:
        _lengths_by_rendering(tok, count, examples, slow, totals, trainable)
    return totals, trainable


def _lengths_by_rendering(tok, count, examples, indices, totals, trainable) -> None:
    """The general path: render each example; trainable = assistant contents (+1 end of turn)."""
    from tunesmith.models import render

    for i in indices:
        msgs = examples[i]["messages"]
        totals[i] = count.exact([render(tok, msgs, False)])[0]
        assistant = [m["content"] for m in msgs if m["role"] == "assistant" and m.get("weight", 1)]
        trainable[i] = sum(count(assistant)) + len(assistant)


def describe(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "mean": 0, "p50": 0, "p95": 0, "max": 0, "sum": 0}
    import numpy as np

    a = np.asarray(values)
    return {
        "min": int(a.min()),
        "mean": round(float(a.mean()), 1),
        "p50": int(np.percentile(a, 50)),
        "p95": int(np.percentile(a, 95)),
        "max": int(a.max()),
        "sum": int(a.sum()),
    }


# ------------------------------------------------------------------------------- time and cost


def count_params(spec) -> int:
    """Parameters of the base model, from its config alone (a meta-device model: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.models import converted_dir, resolve

    config = AutoConfig.from_pretrained(converted_dir(resolve(spec)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate(epoch_tokens: int, params: int, method: str, gpu_price: float, measured: dict | None) -> dict:
    flops = FLOPS_PER_PARAM_TOKEN.get(method, 6) * params * epoch_tokens
    ref_s = flops / (REFERENCE_GPU["peak_flops"] * REFERENCE_GPU["mfu"])
    out = {
        "epoch_tokens": epoch_tokens,
        "params": params,
        "method": method,
        "reference": {
            **REFERENCE_GPU,
            "flops_per_epoch": flops,
            "seconds_per_epoch": round(ref_s, 2),
            "usd_per_hour": gpu_price,
            "usd_per_epoch": round(ref_s / 3600 * gpu_price, 4),
        },
        "here": None,
    }
    if measured:
        out["here"] = {**measured, "seconds_per_epoch": round(epoch_tokens / measured["tokens_per_s"], 1)}
    return out


# ------------------------------------------------------------------------------------------ run


def run_check(
    train: str,
    heldout: str | None = None,
    model: str | None = None,
    max_len: int = 1024,
    too_long: str = "drop",
    fmt: str = "auto",
    probe: Callable | None = None,
    method: str = "lora",
    gpu_price: float = DEFAULT_GPU_PRICE,
) -> dict:
    """Everything `tunesmith check` reports, as a dict (what --json prints). `probe` measures
    training here, probe(spec, tok, examples, max_len, method) -> its figures (the training layer's
    tunesmith.train.probe.probe, which `tunesmith check` passes); None: the estimate is the
    reference GPU's alone."""
    from tunesmith.models import DEFAULT_MODEL, load_tokenizer

    if too_long not in ("drop", "truncate", "error"):
        raise UserError(f"--too-long must be drop, truncate or error, got '{too_long}'.")
    spec = model or DEFAULT_MODEL
    t0 = time.perf_counter()
    sets = [read_dataset(train, fmt)] + ([read_dataset(heldout, fmt)] if heldout else [])
    issues = []
    for ds in sets:
        issues += ds.issues + dataset_issues(ds)
    if heldout:
        issues += overlap_issues(sets[0], sets[1])
    dropped = {(i.file, i.line) for i in issues if i.code == "duplicate"}

    tok = load_tokenizer(spec)
    files, epoch_tokens = [], 0
    for ds in sets:
        keep = [k for k, line in enumerate(ds.lines) if (ds.path, line) not in dropped]
        examples = [ds.examples[k] for k in keep]
        totals, trainable = token_lengths(tok, examples)
        longest = totals
        pairs = [{"messages": [*ex["messages"][:-1], ex["rejected"]]} for ex in examples if "rejected" in ex]
        if pairs:  # preference pairs: both sides go through the model, and the longer one must fit
            other, other_trainable = token_lengths(tok, pairs)
            longest = [max(a, b) for a, b in zip(totals, other)]
        over = [k for k, n in enumerate(longest) if n > max_len]
        level = "error" if too_long == "error" else "warning"
        action = {"drop": "dropped", "truncate": "truncated to max length", "error": "not allowed"}[too_long]
        issues += [
            Issue(
                ds.path, ds.lines[keep[k]], "too-long", f"{longest[k]} tokens > max length {max_len}; {action}", level
            )
            for k in over
        ]
        if too_long == "drop":
            kept = [k for k in range(len(totals)) if longest[k] <= max_len]
            totals, trainable = [totals[k] for k in kept], [trainable[k] for k in kept]
            if pairs:
                other, other_trainable = [other[k] for k in kept], [other_trainable[k] for k in kept]
        elif too_long == "truncate":
            # The tail is cut: assistant tokens go first when the reply is last.
            def cut(ns, trs):  # (trainable, totals) of each side after truncation
                return [max(0, min(tr, max_len - (n - tr))) for n, tr in zip(ns, trs)], [min(n, max_len) for n in ns]

            trainable, totals = cut(totals, trainable)
            if pairs:
                other_trainable, other = cut(other, other_trainable)
        if pairs:
            totals = [a + b for a, b in zip(totals, other)]
            trainable = [a + b for a, b in zip(trainable, other_trainable)]
        files.append(
            {
                "path": ds.path,
                "format": ds.format,
                "records": ds.records,
                "valid": len(ds.examples),
                "duplicates": len(ds.examples) - len(keep),
                "over_max_len": len(over),
                "examples": len(totals),
                "tokens": describe(totals),
                "trainable": describe(trainable),
            }
        )
        if ds is sets[0]:
            epoch_tokens = sum(totals)
            probe_examples = _spread(examples)
    stats_s = time.perf_counter() - t0

    measured = None
    if probe is not None and epoch_tokens:
        measured = probe(spec, tok, probe_examples, max_len, method)
    bad = errors(issues)
    return {
        "ok": not bad,
        "model": spec,
        "max_len": max_len,
        "too_long": too_long,
        "errors": len(bad),
        "warnings": len(issues) - len(bad),
        "files": files,
        "issues": [i.as_dict() for i in sorted(issues, key=_order)],
        "estimate": estimate(epoch_tokens, count_params(spec), method, gpu_price, measured),
        "seconds": {"validate_and_count": round(stats_s, 2)},
    }


def _spread(examples: list[dict], n: int = 16) -> list[dict]:
    step = max(1, len(examples) // n)  # spread over the file: the first examples may be atypical
    return examples[::step][:n]


def _order(issue: Issue):
    return (issue.file, issue.line or 0, issue.code)


# ---------------------------------------------------------------------------------------- report


def format_report(r: dict, per_code: int = 10) -> str:
    """The readable report: files, problems by code (first few lines each), tokens, time and cost."""
    out = []
    for f in r["files"]:
        out.append(
            f"{f['path']}  ({f['format']}): {f['records']} records, {f['valid']} valid, "
            f"{f['duplicates']} duplicates, {f['over_max_len']} over max length → {f['examples']} examples"
        )
    if r["issues"]:
        out.append(f"\nproblems: {r['errors']} errors, {r['warnings']} warnings")
        by_code: dict[str, list] = {}
        for i in r["issues"]:
            by_code.setdefault(i["code"], []).append(i)
        for code, items in by_code.items():
            out.append(f"  {code} ({items[0]['severity']}, {len(items)}): fix: {CODES[code][1]}")
            for i in items[:per_code]:
                where = f"{Path(i['file']).name}:{i['line']}" if i["line"] else Path(i["file"]).name
                out.append(f"    {where:<22} {i['message']}")
            if len(items) > per_code:
                out.append(f"    … and {len(items) - per_code} more (--json lists all)")
    else:
        out.append("\nproblems: none")

    out.append(
        f"\ntokens under the chat template of {r['model']} (max length {r['max_len']}, too long: {r['too_long']})"
    )
    out.append(f"  {'':<28}{'min':>7}{'mean':>9}{'p50':>7}{'p95':>7}{'max':>7}{'total':>12}")
    for f in r["files"]:
        for kind in ("tokens", "trainable"):
            s = f[kind]
            label = f"{Path(f['path']).name} {kind}"
            out.append(
                f"  {label:<28}{s['min']:>7}{s['mean']:>9.1f}{s['p50']:>7}{s['p95']:>7}{s['max']:>7}{s['sum']:>12,}"
            )

    e = r["estimate"]
    ref = e["reference"]
    out.append(f"\none epoch: {e['epoch_tokens']:,} tokens, {e['method']} on {e['params'] / 1e6:.1f}M parameters")
    if e["here"]:
        h = e["here"]
        out.append(
            f"  here ({h['device']}, {h['tokens_per_s']:,.0f} tokens/s in rows of {h['row']}, measured over "
            f"{h['steps']} step{'s' * (h['steps'] != 1)} of {h['tokens_per_step']} tokens): "
            f"{duration(h['seconds_per_epoch'])} per epoch"
        )
    else:
        out.append("  here: not measured (--no-probe)")
    out.append(
        f"  reference {ref['name']} ({FLOPS_PER_PARAM_TOKEN.get(e['method'], 6)}·N·tokens "
        f"= {ref['flops_per_epoch']:.2e} FLOPs "
        f"at {ref['mfu']:.0%} of {ref['peak_flops'] / 1e12:.0f} TFLOP/s {ref['precision']}): "
        f"{duration(ref['seconds_per_epoch'])} per epoch, ${ref['usd_per_epoch']:.4f} at ${ref['usd_per_hour']:.2f}/h"
    )
    out.append(f"\n{'OK' if r['ok'] else 'NOT OK'}: {r['errors']} errors, {r['warnings']} warnings")
    return "\n".join(out)


def duration(s: float) -> str:
    """Seconds as a person reads them: 0.25 s, 40 s, 12 min, 3.5 h."""
    if s < 1:
        return f"{s:.2f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
