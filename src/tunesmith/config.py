"""Configuration: one dataclass per concern, YAML that mirrors them, and key=value overrides.

    tunesmith train config.yaml train.lr=1e-4 lora.r=32
    cfg = load_config("config.yaml", ["train.lr=1e-4"])

Defaults live here, in code. A YAML file names only what it changes. Every field has a one-line
doc (``tunesmith config`` prints them all). An unknown key is an error that names the file, the line
and the closest valid key. The resolved config is saved next to whatever it produced.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith import UserError


def opt(default, doc: str):
    """A dataclass field with its one-line documentation."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class ModelConfig:
    """The base model."""

    name: str = opt(
        "smollm2-135m-instruct", "embedded name, HF model directory, .gguf file, or hub id (downloaded on first use)"
    )
    revision: str = opt("", "hub id only: branch, tag or commit (empty: main); a run's config.yaml records the commit")
    gguf_file: str = opt("", "hub id of a GGUF repository only: the .gguf file, or its quantization (e.g. Q4_K_M)")
    dtype: str = opt("auto", "auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16 or float16")
    trust_remote_code: bool = opt(False, "run model code shipped with the weights; only for models you trust")


@dataclass
class DataConfig:
    """The dataset: training and held-out examples, plus what compare needs."""

    train: str = opt("", "training examples: chat JSONL (or any format `tunesmith check` reads)")
    heldout: str = opt("", "held-out examples for evaluation and compare; empty: split off heldout_fraction of train")
    heldout_fraction: float = opt(0.1, "share of train held out when no heldout file is given (split by group)")
    format: str = opt("auto", "auto, chat, prompt-completion, alpaca, sharegpt, preference or csv")
    max_len: int = opt(1024, "maximum tokens per example under the chat template")
    too_long: str = opt("drop", "what to do with longer examples: drop, truncate or error (never silent)")
    corpus: str = opt("", "directory of text/markdown files for retrieval (RAG arms)")
    glossary: str = opt("", "glossary.yaml: preferred terms and rejected variants")
    style: str = opt("", "style.md: the house style guide (engineered-prompt arm)")
    prompt: str = opt(
        "",
        "a text file with your own system prompt (engineered-prompt arm, with the style guide and glossary if given)",
    )
    seed: int = opt(0, "seed for splits and shuffling")


@dataclass
class LoraConfig:
    """Adapter settings (ignored for full fine-tuning)."""

    r: int = opt(16, "LoRA rank")
    alpha: int = opt(32, "LoRA alpha (scale = alpha / r)")
    dropout: float = opt(0.0, "dropout on the LoRA path")
    target_modules: str = opt("all-linear", "'all-linear' or a comma-separated list of module names")


@dataclass
class TrainConfig:
    """The training loop."""

    method: str = opt("lora", "lora, dora, qlora (CUDA + bitsandbytes) or full")
    output_dir: str = opt("runs/run", "run directory: config, metrics, checkpoints, final model")
    epochs: float = opt(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps to run; 0: derive from epochs")
    batch_size: int = opt(
        4, "examples per micro-batch, per process (global batch = batch_size x grad_accum x processes)"
    )
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float = opt(2e-4, "peak learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    schedule: str = opt("cosine", "constant, linear or cosine")
    warmup_steps: int = opt(0, "linear warmup steps")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables")
    packing: bool = opt(
        True,
        "a micro-batch is one row of examples back to back, no padding, no attention between them; "
        "false: length-bucketed padding",
    )
    train_on_prompt: bool = opt(False, "also put loss on system/user tokens")
    eval_every: int = opt(0, "held-out loss every N steps; 0: only at the end")
    save_every: int = opt(0, "checkpoint every N steps; 0: only at the end; -1: never (the final model is still saved)")
    keep_last: int = opt(2, "checkpoints to keep")
    log_every: int = opt(1, "write metrics every N steps")
    on_nonfinite: str = opt("stop", "stop or skip a batch whose loss or gradient is NaN/inf")
    early_stopping_patience: int = opt(0, "stop after N evaluations without improvement; 0 disables")
    seed: int = opt(0, "seed for initialisation, dropout and data order")
    trackers: str = opt("", "comma-separated accelerate trackers: tensorboard, mlflow, wandb")
    device: str = opt("auto", "auto, cpu or cuda")
    threads: int = opt(0, "CPU threads; 0: the cores other processes leave free, rechecked as their load changes")
    gradient_checkpointing: bool = opt(
        False, "recompute activations in backward: less memory, about a third more compute"
    )
    log_examples: bool = opt(False, "write the example ids of every step to RUN/examples.jsonl (audit the data order)")
    replay: float = opt(
        0.0,
        "share of the training examples that are the base model's own replies to general prompts (self-distillation "
        "replay, keeps general behaviour); 0: none",
    )
    objective: str = opt("sft", "sft, or dpo / orpo on preference pairs (data.format=preference; see docs/train.md)")
    init_from: str = opt("", "a run directory to start from (its final model or adapter); for dpo also the reference")
    beta: float = opt(0.1, "dpo: how far the model may move from the reference; orpo: weight of the odds-ratio term")
    dpo_loss: str = opt("sigmoid", "dpo's loss: sigmoid (DPO), ipo or hinge")
    label_smoothing: float = opt(0.0, "dpo sigmoid: the share of pairs assumed flipped (conservative DPO), below 0.5")


@dataclass
class GenerateConfig:
    """Decoding, shared by compare, chat and serve."""

    max_new_tokens: int = opt(256, "tokens to generate at most")
    temperature: float = opt(0.0, "0: greedy")
    top_p: float = opt(1.0, "nucleus sampling (only with temperature > 0)")
    batch_size: int = opt(
        8, "replies generated at once (continuous batching: a finished reply's row takes the next prompt)"
    )
    stop_on_repeat: bool = opt(
        True, "stop a reply where it starts to loop (a repeated line or phrase) and drop the repeat; every arm alike"
    )
    engine: str = opt(
        "auto",
        "tunesmith (this package's engine, CPU or GPU), vllm (CUDA with vllm installed), "
        "or auto: vllm where both are there",
    )


@dataclass
class CompareConfig:
    """The verdict: which arms, how many examples, how to decide."""

    arms: str = opt("all", "'all' or a comma-separated list of arms")
    output_dir: str = opt("", "where the report goes; empty: <run dir>/compare")
    k_shots: int = opt(3, "examples in the few-shot arms")
    rag_k: int = opt(3, "corpus passages in the RAG arms")
    max_examples: int = opt(0, "held-out examples to score; 0: all")
    tasks: str = opt("", "comma-separated meta.task values to score (e.g. insight,recommendation); empty: all")
    primary_metric: str = opt(
        "auto",
        "metric the decision is made on; auto: answer accuracy where meta.answer gives key facts, "
        "token F1 for short references, else chrF",
    )
    decide_on: str = opt(
        "",
        "comma-separated metrics the decision rule is applied to, Holm-corrected (e.g. answer,chrf); empty: the "
        "primary metric, plus glossary adherence with a glossary and template conformance with templates",
    )
    margin: float = opt(
        2.0,
        "how much better fine-tuning must be to be recommended, and how far behind the best a cheaper arm may be, "
        "in each decision metric's own points (percentage points for shares)",
    )
    margins: str = opt("", "per-metric margins overriding compare.margin, e.g. glossary=5,template=5; empty: none")
    bootstrap: int = opt(2000, "paired bootstrap resamples")
    learning_curve: bool = opt(False, "also train on 25 / 50 % of the data to see whether more data helps")
    requests_per_month: int = opt(10000, "request volume used for the cost comparison")
    max_prompt_tokens: int = opt(
        2048, "prompt budget: few-shot examples and RAG passages are added while the prompt fits"
    )
    passage_words: int = opt(120, "RAG passages: whole paragraphs of the corpus, up to this many words each")
    price_per_1k_tokens: float = opt(
        0.0002, "assumed serving price in $ per 1,000 tokens (prompt or completion), for the cost comparison"
    )
    train_cost_per_hour: float = opt(
        1.0, "assumed price in $ per hour of the machine that trained, for the one-off training cost"
    )
    side_effects: bool = opt(
        True, "also measure what the fine-tune broke: general instruction following and drift from the base model"
    )
    side_effects_size: int = opt(
        20, "bundled instructions used, spread over every kind, and half as many drift prompts; 0: all (150 and 50)"
    )
    side_effects_file: str = opt(
        "", "your own general checks (JSONL: prompt + checks named from the bundled checkers, or a reference)"
    )
    against_run: str = opt(
        "",
        "another fine-tuned run (e.g. the SFT run a preference run started from) answering the fine-tuned arm's "
        "prompts as its own arm, run:<folder>; the verdict says whether the fine-tuned run beats it",
    )


@dataclass
class JudgeConfig:
    """An LLM judge on any OpenAI-compatible endpoint (hosted, vLLM, Ollama, `tunesmith serve`): pairwise, blind,
    both orders."""

    url: str = opt("", "base URL of the endpoint, e.g. http://127.0.0.1:8000/v1; empty: no judge")
    model: str = opt("", "model name the endpoint serves")
    api_key_env: str = opt(
        "", "name of the environment variable holding the API key (never the key itself); empty: no key"
    )
    arms: str = opt(
        "", "comma-separated arms judged against the best arm that needs no training; empty: every other arm"
    )
    max_examples: int = opt(0, "held-out examples judged (the first N scored); 0: all")
    price_per_1k_tokens: float = opt(0.0, "the judge's price in $ per 1,000 tokens, for its cost")
    max_tokens: int = opt(64, "tokens the judge may answer with")
    concurrency: int = opt(4, "pairs judged at once (requests in flight)")
    retries: int = opt(
        3,
        "retries of a failed request (connection error, 429, 5xx), "
        "with exponential backoff or the server's Retry-After",
    )
    backoff_s: float = opt(1.0, "first retry waits this long; each later one twice as long")
    timeout_s: float = opt(120.0, "seconds to wait for one answer")


@dataclass
class ServeConfig:
    """The OpenAI-compatible server."""

    host: str = opt("127.0.0.1", "address to bind; 0.0.0.0 exposes it to the network")
    port: int = opt(8000, "TCP port")
    api_key: str = opt("", "if set, every route but /health needs `Authorization: Bearer KEY`")
    max_body_bytes: int = opt(1_000_000, "largest request body accepted (413 above)")
    max_concurrency: int = opt(32, "requests generated at once, in one batch")
    max_queue: int = opt(32, "requests waiting for a place in the batch; more are answered 429")
    default_max_tokens: int = opt(512, "reply length when a request sets no max_tokens (capped by the context length)")
    workbench: str = opt("", "a projects directory: the workbench (`tunesmith ui`) served under /workbench/ too")


@dataclass
class TeacherConfig:
    """A teacher for `tunesmith import --config`: restyle pairs and grounded questions (any OpenAI-compatible API)."""

    url: str = opt("", "base URL of the endpoint, e.g. http://127.0.0.1:8000/v1; empty: no teacher")
    model: str = opt("", "model name the endpoint serves")
    api_key_env: str = opt("", "name of the environment variable holding the API key; empty: no key")
    tasks: str = opt("restyle,question", "what the teacher helps make: restyle (draft -> team text), question")
    max_passages: int = opt(200, "training-side paragraphs sent to the teacher (the first N, in file order)")
    min_words: int = opt(4, "shortest draft or question kept")
    max_words: int = opt(400, "longest draft or question kept")
    dedup_threshold: float = opt(0.8, "MinHash Jaccard similarity above which a draft or question is a near-duplicate")
    price_per_1k_tokens: float = opt(0.0, "the teacher's price in $ per 1,000 tokens, for its cost")
    max_tokens: int = opt(400, "tokens the teacher may answer with")
    retries: int = opt(3, "retries of a failed request (connection error, timeout, 429, 5xx), with backoff")
    backoff_s: float = opt(1.0, "first retry waits this long; each later one twice as long")
    timeout_s: float = opt(120.0, "seconds to wait for one answer")


@dataclass
class Config:
    """Everything one tunesmith job needs; YAML sections mirror these fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


# ------------------------------------------------------------------------------ load and save


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then key=value overrides. Relative data paths in the file are
    taken relative to the file, so a config can travel with its data."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: config file not found.")
        data, lines = _read_yaml(path)
        _apply(cfg, data, lines, str(path))
        _anchor_paths(cfg, path.parent)
    for item in overrides:
        set_key(cfg, item)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def set_key(cfg: Config, item: str) -> None:
    """Apply one `section.key=value` override."""
    if "=" not in item:
        raise UserError(f"override '{item}' is not key=value. fix: e.g. train.lr=1e-4")
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise UserError(
            f"override '{item}': keys are section.field, e.g. train.lr=1e-4 (sections: {', '.join(_sections())})"
        )
    section, name = parts
    target = _section(cfg, section, where=f"override '{item}'")
    _set_field(target, section, name, raw, where=f"override '{item}'")


def field_docs() -> list[tuple[str, str, object, str]]:
    """(key, type, default, doc) for every field: `tunesmith config` prints these."""
    rows = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sec.name}.{f.name}", _type_name(f.type), default, f.metadata.get("doc", "")))
    return rows


# ------------------------------------------------------------------------------------ internals


def _read_yaml(path: Path) -> tuple[dict, dict]:
    """Parse YAML, keeping the 1-based line of every `section` and `section.key`."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise UserError(
            f"{path}:{node.start_mark.line + 1}: a config is a mapping of sections (model:, data:, train:, ...)."
        )
    lines, data = {}, {}
    for knode, vnode in node.value:
        sec = knode.value
        lines[sec] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, v2 in vnode.value:
                lines[f"{sec}.{k2.value}"] = k2.start_mark.line + 1
        data[sec] = yaml.safe_load(yaml.serialize(vnode))
    return data, lines


def _apply(cfg: Config, data: dict, lines: dict, where: str) -> None:
    for section, values in data.items():
        loc = f"{where}:{lines.get(section, '?')}"
        target = _section(cfg, section, where=loc)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{loc}: section '{section}' must be a mapping of key: value.")
        for name, value in values.items():
            _set_field(target, section, name, value, where=f"{where}:{lines.get(f'{section}.{name}', '?')}")


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _section(cfg: Config, section: str, where: str):
    if section not in _sections():
        raise UserError(
            f"{where}: unknown section '{section}'.{_suggest(section, _sections())} Sections: {', '.join(_sections())}."
        )
    return getattr(cfg, section)


def _set_field(target, section: str, name: str, value, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    if name not in fields:
        raise UserError(
            f"{where}: unknown key '{section}.{name}'.{_suggest(name, list(fields), section)} "
            f"`tunesmith config` lists every key."
        )
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _coerce(value, hints[name], f"{where}: {section}.{name}"))


# Names people bring from transformers/TRL/peft configs, and ours.
_ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "schedule",
    "max_seq_length": "max_len",
    "max_length": "max_len",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "output": "output_dir",
    "model_name_or_path": "name",
    "model": "name",
}


def _suggest(name: str, choices: list[str], section: str | None = None) -> str:
    alias = _ALIASES.get(name)
    close = [alias] if alias in choices else difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:  # `rank` for `r`, `target` for `target_modules`
        close = [c for c in choices if name.startswith(c) or c.startswith(name)][:1]
    if not close:
        return ""
    return f" Did you mean '{section + '.' if section else ''}{close[0]}'?"


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value, typ, where: str):
    """Turn YAML or command-line values into the field's type, or say exactly what is wrong."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], where)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in _TRUE:
                return True
            if str(value).strip().lower() in _FALSE:
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            text = str(value).replace("_", "")
            return int(float(text)) if "e" in text.lower() else int(text)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                if isinstance(value, list):
                    return ",".join(str(v) for v in value)
                raise ValueError
            return "" if value is None else str(value)
    except (ValueError, TypeError):
        raise UserError(f"{where}: expected {_type_name(typ)}, got {value!r}.") from None
    return value


def _type_name(typ) -> str:
    return getattr(typ, "__name__", str(typ))


def _anchor_paths(cfg: Config, base: Path) -> None:
    """Data paths written in a YAML file are relative to that file."""
    for name in ("train", "heldout", "corpus", "glossary", "style", "prompt"):
        value = getattr(cfg.data, name)
        if value and not Path(value).is_absolute():
            setattr(cfg.data, name, str((base / value).resolve()))
    own = cfg.compare.side_effects_file
    if own and not Path(own).is_absolute():
        cfg.compare.side_effects_file = str((base / own).resolve())
