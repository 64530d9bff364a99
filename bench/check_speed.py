"""How long `tunesmith check` takes on a large dataset (the target: 100k examples in under a minute).

    python bench/check_speed.py                  # 100,000 examples, embedded model, with and without the probe
    python bench/check_speed.py --n 20000 --model /path/to/model

Writes a chat JSONL file of generated examples into a temporary directory and runs the real CLI
on it as a subprocess, so the time includes start-up and imports. The text is drawn from the
bundled example repository's words, with numbers and ids that make most examples' words not
all cached; 10 % have a system prompt, 10 % two turns, 1 % a weight-0 reply.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PANTRY = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "examples" / "pantry"


def generate(path: Path, n: int, seed: int = 0) -> None:
    words = re.findall(r"[A-Za-z][A-Za-z'-]*|[.,;:]", " ".join(p.read_text() for p in sorted(PANTRY.rglob("*.md"))))
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        out = [rng.choice(words) for _ in range(rng.randint(lo, hi))]
        for _ in range(rng.randint(1, 3)):  # numbers and ids: words no cache has seen
            out.insert(
                rng.randrange(len(out)),
                rng.choice(
                    [
                        str(rng.randint(0, 99999)),
                        f"H-{rng.randint(1, 99):02d}-{rng.randint(1, 99):02d}",
                        f"£{rng.randint(1, 300)}.{rng.randint(0, 99):02d}",
                    ]
                ),
            )
        return " ".join(out).replace(" .", ".").replace(" ,", ",")

    with open(path, "w") as f:
        for i in range(n):
            msgs = (
                [{"role": "system", "content": "You write in the house style of Pantry Research."}]
                if i % 10 == 0
                else []
            )
            for _ in range(2 if i % 10 == 5 else 1):
                msgs += [{"role": "user", "content": text(40, 140)}, {"role": "assistant", "content": text(30, 110)}]
            if i % 100 == 7:
                msgs[-1]["weight"] = 0
            f.write(json.dumps({"messages": msgs}) + "\n")


def run(cmd: list[str]) -> tuple[float, float, dict]:
    """Wall time, CPU time (what the run costs on an otherwise idle machine) and the JSON report."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="examples to generate")
    ap.add_argument("--model", default=None, help="model spec (default: the embedded model)")
    ap.add_argument("--no-probe-only", action="store_true", help="skip the run with the probe")
    args = ap.parse_args()
    tunesmith = str(Path(sys.executable).with_name("tunesmith"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        t0 = time.perf_counter()
        generate(path, args.n)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes share them)")
        print(f"generated {args.n:,} examples ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        base = [tunesmith, "check", str(path), "--json"] + (["--model", args.model] if args.model else [])
        runs = [("--no-probe", base + ["--no-probe"])] + ([] if args.no_probe_only else [("with probe", base)])
        for label, cmd in runs:
            wall, cpu, report = run(cmd)
            f = report["files"][0]
            here = report["estimate"]["here"]
            print(
                f"tunesmith check {label}: {wall:.1f} s wall, {cpu:.1f} s CPU "
                f"({report['seconds']['validate_and_count']:.1f} s wall reading, "
                f"validating and counting {f['tokens']['sum']:,} tokens); {report['errors']} errors, "
                f"{report['warnings']} warnings"
                + (f"; probe {here['tokens_per_s']:,.0f} tokens/s on {here['device']}" if here else "")
            )
            print(f"  {'PASS' if wall < 60 else 'FAIL'}: under a minute")


if __name__ == "__main__":
    main()
