"""The `tunesmith` command: verbs → stage functions; nothing else.

    tunesmith --help
    tunesmith VERB --help

Each verb parses its flags here and calls its stage module's `cli_<verb>(args)`, imported only
when that verb runs (so `tunesmith models` does not pay for torch). A UserError is printed as
`error: …` with exit code 2; anything else is our bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tunesmith import UserError, __version__

DESCRIPTION = (
    "Fine-tune a language model on your organisation's own material, and prove on held-out data "
    "whether it beats prompting, few-shot and RAG — then export and serve the winner."
)

# verb -> (module, one-line help). A dict literal, not a registry.
VERBS = {
    "demo": ("tunesmith.demo", "the whole pipeline on the bundled example and the embedded model"),
    "import": ("tunesmith.data.repository", "a team's folder as it is → train/held-out chat JSONL, corpus, glossary"),
    "check": ("tunesmith.train.probe", "validate a dataset; token statistics; time and cost estimate"),
    "train": ("tunesmith.train", "LoRA/DoRA/QLoRA or full fine-tune from a YAML config"),
    "compare": ("tunesmith.compare.run", "fine-tune vs prompt vs few-shot vs RAG on held-out data: the verdict"),
    "prefer": (
        "tunesmith.prefer",
        "preference-tune an SFT run on the experts' pairs (DPO), then compare the two on held-out data",
    ),
    "export": ("tunesmith.export", "a run → adapter, merged safetensors, or GGUF + Ollama Modelfile"),
    "serve": ("tunesmith.serve", "OpenAI-compatible HTTP API for a run or a model"),
    "ui": (
        "tunesmith.workbench.app",
        "the workbench: projects, training jobs, verdict, blind expert review, chat, export",
    ),
    "chat": ("tunesmith.chat", "interactive terminal chat with streamed tokens"),
    "generate": ("tunesmith.chat", "one reply to --prompt (or stdin), for scripts"),
    "models": ("tunesmith.chat", "list the embedded model, cached conversions and cached hub models"),
    "config": ("tunesmith.chat", "print every config key with its default and doc"),
}


class IntermixedParser(argparse.ArgumentParser):
    """A verb's parser that takes options and positionals in any order.

    Plain argparse stops filling a `nargs="*"` positional at the first option, so
    `compare CONFIG --run RUN compare.max_examples=0` used to reject the override. A verb's parser
    has no subparsers, so argparse's own intermixed parse applies; the guard is there because
    parse_known_intermixed_args calls parse_known_args itself (twice: options, then positionals).
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunesmith", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=IntermixedParser)
    v = {name: sub.add_parser(name, help=help_, description=help_) for name, (_, help_) in VERBS.items()}

    # --- demo
    v["demo"].add_argument("-o", "--out", default="demo-out", help="where the demo writes everything")
    v["demo"].add_argument(
        "--steps", type=int, default=None, help="training steps (default: what fits the time budget)"
    )
    v["demo"].add_argument("--quick", action="store_true", help="a smaller run for a first look (a few minutes)")

    # --- import
    v["import"].add_argument(
        "sources",
        nargs="+",
        help="folders or .zip files as they are, or files: .md .txt .docx .pdf .html .pptx .csv .xlsx .jsonl",
    )
    v["import"].add_argument("-o", "--out", required=True, help="output directory")
    v["import"].add_argument("--heldout-fraction", type=float, default=0.15, help="share of studies held out")
    v["import"].add_argument("--seed", type=int, default=0, help="seed for the split by study")
    v["import"].add_argument(
        "--csv-preset", default="auto", help="column map for CSV/XLSX exports: auto (guessed), highlights or generic"
    )
    v["import"].add_argument(
        "--csv-map",
        default="",
        help="CSV/XLSX column map, e.g. id=ID,text=Note,group=Study or term=Word,definition=Means",
    )
    v["import"].add_argument("--style", default="", help="the house style guide, when its name does not say so")
    v["import"].add_argument(
        "--config", default="", help="a YAML file whose teacher: section adds teacher-made examples"
    )
    v["import"].add_argument(
        "--group-by", default="document", choices=("document", "folder"), help="what the held-out split keeps whole"
    )

    # --- check
    v["check"].add_argument(
        "data", nargs="+", help="dataset file(s), or a config.yaml; with two, the second is the held-out split"
    )
    v["check"].add_argument(
        "--model", default=None, help="model whose chat template and tokenizer count tokens (default: embedded)"
    )
    v["check"].add_argument(
        "--max-len", type=int, default=None, help="maximum tokens per example (default 1024, or the config's)"
    )
    v["check"].add_argument(
        "--too-long",
        default=None,
        choices=["drop", "truncate", "error"],
        help="policy for longer examples (default drop)",
    )
    v["check"].add_argument(
        "--format",
        default=None,
        help="auto, chat, prompt-completion, alpaca, sharegpt, csv, csv:user=COL,assistant=COL",
    )
    v["check"].add_argument("--heldout", default=None, help="held-out file, checked for overlap with the training data")
    v["check"].add_argument(
        "--no-probe", action="store_true", help="skip the measured speed probe (estimate from a model only)"
    )
    v["check"].add_argument(
        "--method", default="lora", choices=["lora", "dora", "full"], help="training method the estimate is for"
    )
    v["check"].add_argument(
        "--gpu-price", type=float, default=2.50, help="$/hour of the reference GPU (H100) for the cost estimate"
    )
    v["check"].add_argument("--json", action="store_true", help="print JSON instead of tables")

    # --- train
    v["train"].add_argument(
        "config", nargs="?", default=None, help="YAML config (defaults apply to what it leaves out)"
    )
    v["train"].add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=1e-4")
    v["train"].add_argument("--resume", action="store_true", help="continue exactly from the last complete checkpoint")

    # --- prefer
    v["prefer"].add_argument("run", help="the SFT run to start from (its config and held-out split are reused)")
    v["prefer"].add_argument("pairs", help="preference pairs (JSONL), e.g. a workbench collection's export")
    v["prefer"].add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=60")
    v["prefer"].add_argument("--out", default=None, help="the new run's directory (default: SFT_RUN-prefer)")
    v["prefer"].add_argument("--resume", action="store_true", help="continue the training exactly, then compare")

    # --- compare
    v["compare"].add_argument("config", nargs="?", default=None, help="YAML config")
    v["compare"].add_argument("overrides", nargs="*", help="section.key=value overrides")
    v["compare"].add_argument("--run", default=None, help="reuse a trained run directory (else compare trains one)")

    # --- export
    v["export"].add_argument("run", help="run directory (or adapter directory)")
    v["export"].add_argument("--format", required=True, choices=["adapter", "merged", "gguf"])
    v["export"].add_argument("--quant", default="f16", choices=["f16", "q8_0"], help="GGUF quantization")
    v["export"].add_argument("-o", "--out", default=None, help="output directory (default: RUN/export-FORMAT)")

    # --- serve
    import dataclasses

    from tunesmith.config import ServeConfig

    serve_defaults = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    serve_docs = {f.name: f.metadata["doc"] for f in dataclasses.fields(ServeConfig)}
    v["serve"].add_argument(
        "model",
        nargs="?",
        default=None,
        help="run directory or model spec (default: the config's model.name, else embedded)",
    )
    v["serve"].add_argument(
        "--config", default=None, help="YAML config: its serve: section sets the defaults of the flags below"
    )
    for key, kind in (
        ("host", str),
        ("port", int),
        ("api_key", str),
        ("max_concurrency", int),
        ("max_queue", int),
        ("max_body_bytes", int),
        ("default_max_tokens", int),
        ("workbench", str),
    ):
        extra = " (or env TUNESMITH_API_KEY)" if key == "api_key" else ""
        v["serve"].add_argument(
            "--" + key.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{serve_docs[key]}{extra} (default: serve.{key}, {serve_defaults[key]!r})",
        )
    v["serve"].add_argument(
        "--engine",
        default=None,
        choices=["auto", "tunesmith", "vllm"],
        help="generation engine (default: generate.engine, 'auto': vLLM on CUDA where installed)",
    )
    v["serve"].add_argument("--system", default="", help="system prompt for conversations that bring none")
    for verb in ("serve", "ui"):  # the key and the names a browser may reach the server by (web.py)
        v[verb].add_argument("--api-key-file", default=None, help="read the API key from this file (mode 0600)")
        v[verb].add_argument(
            "--allowed-host",
            action="append",
            default=[],
            metavar="NAME",
            help="a Host name besides loopback this server answers to (repeat; '*' for any, behind a proxy)",
        )

    # --- ui
    v["ui"].add_argument(
        "projects_dir", nargs="?", default="projects", help="where projects, jobs and reviews live (SQLite inside)"
    )
    v["ui"].add_argument("--host", default="127.0.0.1")
    v["ui"].add_argument("--port", type=int, default=8700)
    v["ui"].add_argument(
        "--api-key",
        default=None,
        help="require sign-in with this key (or Bearer KEY); visible in the process list: prefer "
        "--api-key-file or env TUNESMITH_API_KEY",
    )
    v["ui"].add_argument(
        "--allow-url",
        action="append",
        default=[],
        metavar="URL",
        help="a judge/teacher endpoint projects may use (repeat); no other URL is accepted from the workbench",
    )
    v["ui"].add_argument("--max-upload-mb", type=int, default=200, help="largest upload accepted")
    v["ui"].add_argument("--model", default=None, help="base model new projects start with (default: embedded)")

    # --- chat / generate / models / config: decoding defaults are the config's (GenerateConfig)
    from tunesmith.config import GenerateConfig

    gen = GenerateConfig()
    for name in ("chat", "generate"):
        v[name].add_argument("model", nargs="?", default=None, help="model spec or run directory (default: embedded)")
        v[name].add_argument("--system", default="", help="system prompt")
        v[name].add_argument("--max-new-tokens", type=_at_least_one, default=gen.max_new_tokens)
        v[name].add_argument("--temperature", type=float, default=gen.temperature, help="0: greedy")
        v[name].add_argument("--top-p", type=float, default=gen.top_p)
        v[name].add_argument(
            "--keep-repeats",
            action="store_true",
            help="let a reply that loops run on to --max-new-tokens (default: it stops where the loop began)",
        )
    v["generate"].add_argument("--prompt", default=None, help="the user message (default: read stdin)")
    v["generate"].add_argument("--json", action="store_true", help="print text and token counts as JSON")
    for name in ("chat", "generate", "serve"):
        v[name].add_argument("--revision", default="", help="for a hub model: branch, tag or commit (default main)")
        v[name].add_argument(
            "--quant", default="", help="for a hub repository of GGUF files: the file or quantization, e.g. Q4_K_M"
        )

    # --- models
    v["models"].add_argument(
        "--recommend",
        action="store_true",
        help="memory and time of LoRA training and generation for popular models, here and on a reference GPU",
    )
    v["models"].add_argument("--json", action="store_true", help="with --recommend: print JSON")

    # --- every verb: the network
    for parser in v.values():
        parser.add_argument(
            "--offline",
            action="store_true",
            help="never use the network: a hub model must already be in the local cache (as HF_HUB_OFFLINE=1)",
        )
    return p


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def quiet_libraries() -> None:
    """What a verb prints is ours. Libraries' deprecation notices (peft calling a transformers method
    renamed in v5, ...) and their progress bars (shard writing, weight loading) say nothing a user
    can act on; this is the one place that decides so, for every verb. Must run before transformers
    is imported: it reads its verbosity and progress-bar switches once."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def use_offline() -> None:
    """--offline: huggingface_hub and transformers read these switches once, when imported, which the
    verb's own module has not done yet. Only the CLI sets them, and only when asked: a library user's
    environment is their own."""
    import os

    for switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[switch] = "1"


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    if args.offline:
        use_offline()
    module = importlib.import_module(VERBS[args.verb][0])
    handler = getattr(module, "cli_" + args.verb)
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tunesmith check ... | head`: the reader left, which is fine
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
