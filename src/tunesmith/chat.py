"""Talk to a model in the terminal, or get one reply for a script.

tunesmith chat [MODEL] [--system "You are ..."]
tunesmith generate [MODEL] --prompt "What is a persona?"
echo "What is a persona?" | tunesmith generate
tunesmith models [--recommend]
tunesmith config
"""

from __future__ import annotations

import json
import sys
import time

from tunesmith import UserError

HELP = "commands: /reset clears the conversation, /system TEXT sets the system prompt, /exit quits"


def _load(args):
    from tunesmith.models import load

    t0 = time.perf_counter()
    model, tok = load(args.model, merge_adapter=True, revision=args.revision, gguf_file=args.quant)
    return model, tok, time.perf_counter() - t0


def _messages(system: str, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def cli_chat(args) -> int:
    from tunesmith.generation.api import stream

    model, tok, secs = _load(args)
    print(f"tunesmith chat — {args.model or 'smollm2-135m-instruct'} loaded in {secs:.1f} s. {HELP}")
    system, turns = args.system, []
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            turns = []
            print("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system") :].strip()
            turns = []
            print("(system prompt set; conversation cleared)")
            continue
        if line.startswith("/"):
            print(HELP)
            continue
        turns.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        reply = []
        try:
            for piece in stream(
                model,
                tok,
                _messages(system, turns),
                args.max_new_tokens,
                args.temperature,
                args.top_p,
                stop_on_repeat=not args.keep_repeats,
            ):
                reply.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        print()
        turns.append({"role": "assistant", "content": "".join(reply).strip()})


def cli_generate(args) -> int:
    from tunesmith.generation.api import generate

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise UserError("nothing to answer. fix: pass --prompt TEXT or pipe the prompt on stdin.")
    model, tok, _ = _load(args)
    out = generate(
        model,
        tok,
        [_messages(args.system, [{"role": "user", "content": prompt.strip()}])],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stop_on_repeat=not args.keep_repeats,
    )[0]
    if args.json:
        print(
            json.dumps(
                {
                    "text": out.text,
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                    "finish_reason": out.finish_reason,
                    "latency_s": round(out.latency_s, 3),
                }
            )
        )
    else:
        print(out.text)
    return 0


def cli_models(args) -> int:
    from tunesmith.models import home, list_models

    if args.recommend:
        from tunesmith.recommend import cli_recommend

        return cli_recommend(args)

    rows = list_models()
    width = max(len(r["name"]) for r in rows)
    print(f"{'model'.ljust(width)}  {'kind'.ljust(15)}  state")
    for r in rows:
        print(f"{r['name'].ljust(width)}  {r['kind'].ljust(15)}  {r['state']}")
    print(f"\nconversions are cached in {home() / 'models'} (set TUNESMITH_HOME to move them)")
    return 0


def cli_config(args) -> int:
    from tunesmith.config import field_docs

    section = None
    for key, typ, default, doc in field_docs():
        sec = key.split(".")[0]
        if sec != section:
            print(f"\n{sec}:")
            section = sec
        print(f"  {key.split('.')[1]}: {repr(default).ljust(22)} # ({typ}) {doc}")
    return 0
