"""The command line: every verb takes its options and positionals (overrides included) in any order."""

import pytest

from tunesmith.cli import VERBS, build_parser

# verb -> (options, positionals): parsed with the options first, last and in between, the
# namespace must be the same. Each list uses every kind the verb has (flag, valued option, several
# positionals, key=value overrides).
ORDERS = {
    "demo": (["--quick", "--steps", "3", "-o", "out"], []),
    "import": (["-o", "data", "--seed", "3"], ["src/a", "src/b"]),
    "check": (["--max-len", "512", "--no-probe", "--json"], ["train.jsonl", "heldout.jsonl"]),
    "train": (["--resume"], ["config.yaml", "train.lr=1e-4", "lora.r=32"]),
    "compare": (["--run", "runs/run"], ["config.yaml", "compare.max_examples=0", "generate.max_new_tokens=8"]),
    "prefer": (["--resume", "--out", "runs/dpo"], ["runs/sft", "pairs.jsonl", "train.max_steps=60"]),
    "export": (["--format", "gguf", "--quant", "q8_0"], ["runs/run"]),
    "serve": (["--port", "8123", "--api-key", "k"], ["runs/run"]),
    "ui": (["--port", "8711", "--max-upload-mb", "5"], ["projects"]),
    "chat": (["--system", "Be brief.", "--max-new-tokens", "9"], ["runs/run"]),
    "generate": (["--prompt", "Hi", "--json"], ["runs/run"]),
    "models": ([], []),
    "config": ([], []),
}


def test_every_verb_has_an_order_case():
    assert set(ORDERS) >= set(VERBS), f"add a case to ORDERS for: {sorted(set(VERBS) - set(ORDERS))}"


@pytest.mark.parametrize("verb", sorted(ORDERS))
def test_options_and_positionals_in_any_order(verb):
    options, positionals = ORDERS[verb]
    parser = build_parser()
    first = parser.parse_args([verb, *options, *positionals])
    last = parser.parse_args([verb, *positionals, *options])
    middle = parser.parse_args([verb, *positionals[:1], *options, *positionals[1:]])
    assert vars(first) == vars(last) == vars(middle)
    assert first.verb == verb
    # the values landed where they belong, not merely equally wrong everywhere
    flat = [str(x) for v in vars(first).values() for x in (v if isinstance(v, list) else [v])]
    for word in positionals:
        assert word in flat


def test_readme_compare_command_keeps_its_override():
    # issue 24: the README's own tour put the override after --run, and argparse refused it
    args = build_parser().parse_args(["compare", "CONFIG", "--run", "RUN", "compare.max_examples=0"])
    assert (args.config, args.run, args.overrides) == ("CONFIG", "RUN", ["compare.max_examples=0"])


def test_unknown_option_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "config.yaml", "--learning-rate", "1"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --learning-rate" in capsys.readouterr().err


def test_missing_positional_is_still_an_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["import", "-o", "data"])
    assert "required: sources" in capsys.readouterr().err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_help_renders(verb, capsys):
    # a stray % in a help string only breaks when argparse formats it
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([verb, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tunesmith {verb}")
