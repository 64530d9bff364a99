"""A second fine-tuned run as an arm (compare.against_run): did the new fine-tune beat the old one?

    tunesmith compare config.yaml --run runs/dpo compare.against_run=runs/sft

The run named there answers the fine-tuned arm's prompts with its own weights, as the arm
`run:<folder>`, scored like every arm. The verdict gains one sentence: the fine-tuned run minus
that run on each deciding metric, with the paired bootstrap interval over the same held-out
examples — above zero it helped, below zero it hurt, across zero the held-out set cannot tell.
It is what `tunesmith prefer` runs after preference tuning, against the SFT run it started from.
Arms of the decision rule are unchanged: the other run is shown, not recommended.
"""

from __future__ import annotations

import math
from pathlib import Path

from tunesmith import UserError, rundir
from tunesmith.compare import stats
from tunesmith.compare.metrics import METRICS


def arm_name(run: str | Path) -> str:
    return f"run:{Path(run).resolve().name}"


def check(run: str, names: list[str]) -> None:
    """Before any model loads: the other run holds a model, and there is a fine-tuned arm to set it against."""
    final = Path(run) / rundir.FINAL
    if not ((final / "adapter_config.json").exists() or (final / "config.json").exists()):
        raise UserError(
            f"compare.against_run={run}: no finished run there (no {rundir.FINAL}/ with a model or adapter). "
            f"fix: name the run directory of a finished training run."
        )
    if "fine-tuned" not in names:
        raise UserError(
            "compare.against_run needs the fine-tuned arm to compare with. fix: add fine-tuned to compare.arms."
        )


def add(results: dict, other: str, run: str, scores: dict, resamples: int, seed: int) -> None:
    """results["against_run"]: the fine-tuned arm minus `other` on every metric, paired by example;
    the other arm's differences from the verdict's reference like every arm's; the sentence."""
    ref = results["verdict"].get("reference")
    arm = results["arms"][other]
    arm["diff"] = {}
    by_example = lambda name, key: {str(i): s[key] for i, s in enumerate(scores[name])}  # noqa: E731
    for key in METRICS:
        if ref is not None:
            pair = stats.paired(by_example(other, key), by_example(ref, key))
            arm["diff"][key] = list(stats.paired_bootstrap(*pair, resamples, seed))
    diffs = {}
    for key in METRICS:
        a, b = stats.paired(by_example("fine-tuned", key), by_example(other, key))
        if a:
            mean, lo, hi = stats.paired_bootstrap(a, b, resamples, seed)
            diffs[key] = {"diff": mean, "lo": lo, "hi": hi, "n": len(a)}
    primary = results["primary_metric"]
    results["against_run"] = {"arm": other, "run": str(run), "metrics": diffs, "primary": primary}
    results["against_run"]["sentence"] = sentence(results["against_run"], results.get("decide_on") or [primary])
    v = results["verdict"]
    v["against_run"] = results["against_run"]["sentence"]
    v["paragraph"] = (v.get("paragraph") or "") + " " + results["against_run"]["sentence"]


def sentence(a: dict, deciding: list[str]) -> str:
    """Whether the fine-tuned run beat the other one, on the primary metric first, in one sentence."""
    m = a["metrics"].get(a["primary"])
    if m is None or any(math.isnan(m[k]) for k in ("diff", "lo", "hi")):
        return f"Against {a['arm']}: no held-out example has a {a['primary']} score for both, so this cannot tell."
    label = METRICS[a["primary"]].label if a["primary"] in METRICS else a["primary"]
    stat = (
        f"{label} {m['diff']:+.2f} (paired 95 % interval {m['lo']:+.2f} to {m['hi']:+.2f}, {m['n']} held-out examples)"
    )
    shown = [k for k in deciding if k != a["primary"] and k in a["metrics"] and not math.isnan(a["metrics"][k]["diff"])]
    others = [
        f"{METRICS[k].label} {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
        for k in shown
        for d in [a["metrics"][k]]
    ]
    tail = f"; also {', '.join(others)}" if others else ""
    if m["lo"] > 0:
        return f"Against {a['arm']}, this run helped: {stat}{tail}."
    if m["hi"] < 0:
        return f"Against {a['arm']}, this run is worse: {stat}{tail}."
    return f"Against {a['arm']}, the held-out set cannot tell a difference yet: {stat}{tail}."
