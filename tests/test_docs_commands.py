r"""Every `tunesmith …` command the README and docs/*.md show parses with the real parser, and the cheap
ones run — so a renamed flag or verb can never leave the docs wrong.

A command is a line of a code block that starts with `tunesmith VERB` (after an optional `$ `, or after
`&&`, `|` or `;`) or runs `-m tunesmith.cli VERB` (`accelerate launch …`, lines joined at a trailing
`\`), or an inline code span that does either and says more than the verb's name. Bracketed parts of
a synopsis (`[--resume]`) are optional and dropped. The cheap verbs — those that train nothing:
`import`, `check` (with the tiny model's tokenizer, no speed probe), `models` (not `--recommend`),
`config`, and any `--help` — run in a scratch directory where `src/` and `tests/` are the
repository's, imports first so that the data later commands read exists (an import of a folder that is
not there — the reader's own, or one a script in the doc builds — is parsed, not run). A command whose shown
output says `error:` or `NOT OK` must fail; every other one must succeed.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunesmith.cli import VERBS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
CHEAP = {"import", "check", "models", "config"}
SLOW_FLAGS = {"--recommend"}  # measures training and decoding on the embedded model (a minute or more)
_SEPARATORS = {"&&", "||", "|", ";", "(", ")"}
_OPTIONAL = re.compile(r"\[[^\]]*\]")
_INLINE = re.compile(r"`((?:tunesmith |[^`]*-m tunesmith\.cli )[^`]+)`")
_MODULE = "tunesmith.cli"


@dataclass
class DocCommand:
    where: str  # FILE:LINE
    argv: list[str]  # without the leading `tunesmith`
    fails: bool  # the doc shows it failing


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _segments(line: str, where: str) -> list[list[str]]:
    """The `tunesmith …` commands in one shell line (a pipeline or `&&` chain may hold several)."""
    lexer = shlex.shlex(_OPTIONAL.sub(" ", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise AssertionError(f"{where}: the shell cannot split this command ({exc}): {line}") from None
    segments, current = [], []
    for token in [*tokens, ";"]:
        if token in _SEPARATORS:
            if len(current) > 1 and current[0] == "tunesmith":
                segments.append(current[1:])
            elif _MODULE in current and current.index(_MODULE) > 0 and current[current.index(_MODULE) - 1] == "-m":
                segments.append(current[current.index(_MODULE) + 1 :])
            current = []
        else:
            current.append(token)
    return segments


def _is_command(text: str) -> bool:
    words = text.split()
    if _MODULE in words[:-1] and words[words.index(_MODULE) + 1] in VERBS:
        return True
    return len(words) > 1 and words[0] == "tunesmith" and (words[1] in VERBS or words[1].startswith("-"))


def collect(path: Path, root: Path = ROOT) -> tuple[list[DocCommand], list[str]]:
    """(commands, verb names) in one markdown file: the fenced ones with their shown outcome, then inline."""
    lines = path.read_text().splitlines()
    name = path.relative_to(root)
    commands, names, fence, prose, joined = [], [], False, [], 0
    for i, raw in enumerate(lines, 1):
        if raw.lstrip().startswith("```"):
            fence = not fence
            prose.append("")
            continue
        prose.append("" if fence else raw)  # one entry per line: inline spans keep their line numbers
        if not fence or i <= joined:
            continue
        line, joined = raw.strip().removeprefix("$ "), i
        while line.endswith("\\") and joined < len(lines):  # a command continued on the next line
            line, joined = line[:-1] + " " + lines[joined].strip(), joined + 1
        if not any(_is_command(part.strip()) for part in re.split(r"&&|\|\|?|;", line)):
            continue
        shown = []  # the output under the command, up to the next command or the fence's end
        for after in lines[i:]:
            if after.lstrip().startswith(("$ ", "```")):
                break
            shown.append(after)
        fails = any("error:" in s or "NOT OK" in s for s in shown) and raw.lstrip().startswith("$ ")
        for argv in _segments(line, f"{name}:{i}"):
            commands.append(DocCommand(f"{name}:{i}", argv, fails))
    text = "\n".join(prose)
    for match in _INLINE.finditer(text):
        span = " ".join(match.group(1).split())
        line_no = text.count("\n", 0, match.start()) + 1
        if not _is_command(span) and span.split()[0] == "tunesmith" and span.split()[1] not in VERBS:
            names.append(f"{name}:{line_no}: `{span}` names no verb")
        elif len(span.split()) == 2 and span.split()[0] == "tunesmith":
            names.append(span.split()[1])  # `tunesmith check`: the verb's name, not a command
        else:
            commands.extend(DocCommand(f"{name}:{line_no}", a, False) for a in _segments(span, f"{name}:{line_no}"))
    return commands, names


def all_commands() -> list[DocCommand]:
    return [c for path in doc_files() for c in collect(path)[0]]


def _parse(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0), err.getvalue()
    return 0, ""


def test_the_collector_finds_commands_and_leaves_output_alone(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `tunesmith compare CONFIG --run RUN compare.max_examples=0` or see `tunesmith check`.\n"
        "```\n"
        "$ tunesmith train bad.yaml\n"
        "error: bad.yaml:4: unknown key\n"
        "$ echo hi | tunesmith generate --json   # a comment\n"
        "tunesmith train: 498 examples\n"
        "cd out && tunesmith models\n"
        "tunesmith train CONFIG.yaml [section.key=value ...] [--resume]\n"
        "accelerate launch --num_processes 2 \\\n"
        "    -m tunesmith.cli train c.yaml lora.r=8\n"
        "```\n"
        "Or `accelerate launch -m tunesmith.cli compare c.yaml`.\n"
    )
    commands, names = collect(page, root=tmp_path)
    assert [(c.where, c.argv, c.fails) for c in commands] == [
        ("page.md:3", ["train", "bad.yaml"], True),
        ("page.md:5", ["generate", "--json"], False),
        ("page.md:7", ["models"], False),
        ("page.md:8", ["train", "CONFIG.yaml"], False),
        ("page.md:9", ["train", "c.yaml", "lora.r=8"], False),
        ("page.md:1", ["compare", "CONFIG", "--run", "RUN", "compare.max_examples=0"], False),
        ("page.md:12", ["compare", "c.yaml"], False),
    ]
    assert names == ["check"]


def test_every_doc_command_parses():
    problems, verbs = [], []
    for path in doc_files():
        commands, names = collect(path)
        problems += [n for n in names if " names no verb" in n]
        verbs += [n for n in names if " " not in n]
        for c in commands:
            code, err = _parse(c.argv)
            if code != 0:
                problems.append(f"{c.where}: tunesmith {shlex.join(c.argv)}\n    {err.strip().splitlines()[-1]}")
    assert set(verbs) <= set(VERBS)
    assert not problems, "doc commands the parser refuses:\n" + "\n".join(problems)


def _cheap(c: DocCommand) -> bool:
    if "--help" in c.argv or "-h" in c.argv:
        return True
    return c.argv[0] in CHEAP and not set(c.argv) & SLOW_FLAGS


@pytest.mark.subprocess
def test_cheap_doc_commands_run(tmp_path, monkeypatch, tiny_model_dir, capsys):
    commands = all_commands()
    runnable = sorted((c for c in commands if _cheap(c)), key=lambda c: c.argv[0] != "import")
    (tmp_path / "src").symlink_to(ROOT / "src")
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    monkeypatch.chdir(tmp_path)
    problems, elsewhere = [], []
    for c in runnable:
        argv = list(c.argv)
        inputs = []
        if argv[0] in ("import", "check") and not {"--help", "-h"} & set(argv):
            args = build_parser().parse_args(argv)
            inputs = args.sources if argv[0] == "import" else args.data
        if not all(Path(s).exists() for s in inputs):
            elsewhere.append(c)  # the reader's own files, or a folder a script in the doc builds first
            continue
        if argv[0] == "check" and "--model" not in argv:
            argv += ["--model", str(tiny_model_dir), "--no-probe"]
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = main(argv)
        except SystemExit as exc:  # --help
            code = int(exc.code or 0)
        if (code != 0) != c.fails:
            shown = "fail" if c.fails else "succeed"
            problems.append(
                f"{c.where}: tunesmith {shlex.join(argv)} exited {code}; the doc shows it {shown}\n"
                f"    {out.getvalue().strip()[-400:]}"
            )
    with capsys.disabled():
        print(
            f"\ndocs: {len(commands)} `tunesmith` commands parsed, {len(runnable) - len(elsewhere)} run, "
            f"{len(elsewhere)} on the reader's own files not run ({len(doc_files())} files)"
        )
    assert len(runnable) - len(elsewhere) >= 5  # the README alone shows import, two checks, models and config
    assert not problems, "doc commands that do not do what the doc shows:\n" + "\n".join(problems)
