"""Statistics for the verdict: paired bootstrap intervals and the decision rule.

    from tunesmith.compare.stats import paired_bootstrap, decide, two_by_two
    diff, lo, hi = paired_bootstrap(tuned_scores, fewshot_scores)       # mean(a - b) and its 95 % CI
    verdict = decide(arms, ["chrf", "glossary"], {"chrf": 2.0, "glossary": 2.0})   # arms: see `decide`
    levers = two_by_two(scores, ["answer", "chrf"])                      # retrieval and fine-tuning apart

The rule, stated once here and printed in every report. Fine-tuning: on one decision metric,
recommend it only if the best fine-tuned arm beats the best arm that needs no training (the "best
cheaper arm", chosen on the first decision metric) by more than the margin, with the 95 % interval
of the difference above zero; on several, only if it wins at least one and loses none (Holm's
correction). Otherwise: a cheaper arm counts as "as good as the best" only if, on every decision
metric, the lower end of its paired 95 % interval against the best is above -margin (it is at most
the margin behind, with 95 % confidence); the cheapest such arm is recommended, else the best one
itself. Numbers only: compare/verdict.py says them in words.
"""

from __future__ import annotations

import math
from statistics import NormalDist

ALPHA = 0.025  # one-sided: the same evidence as "the 95 % interval lies above zero"
POWER = 0.8  # "would likely settle it": the chance the interval clears its bound at the estimated size


def paired_bootstrap(
    a: list[float], b: list[float], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(a - b) over paired examples, with a percentile bootstrap interval: resample examples
    (the same ones for both arms, which is what makes it paired) with replacement."""
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (N,)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    means = resampled_means(d, resamples, seed)
    tail = 100 * (1 - level) / 2
    return float(d.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def resampled_means(d, resamples: int = 2000, seed: int = 0):
    """Bootstrap means of per-example values d (N,): (R,). Same seed, same resamples, so two
    calls on the same examples draw the same example indices."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))  # (R, N) example indices per resample
    return d[idx].mean(axis=1)


def bootstrap_mean(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of one arm's scores with its 95 % interval (the error bars in the report)."""
    return paired_bootstrap(values, [0.0] * len(values), resamples, seed)


def paired(scores_a: dict, scores_b: dict) -> tuple[list[float], list[float]]:
    """The values of two arms on the examples both have a score for (by example id)."""
    ids = [i for i in scores_a if i in scores_b and scores_a[i] is not None and scores_b[i] is not None]
    return [scores_a[i] for i in ids], [scores_b[i] for i in ids]


def examples_needed(diffs: list[float], bound: float = 0.0, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Held-out examples at which the one-sided (1 - alpha) interval of mean(diffs) would, with
    probability `power`, lie wholly above `bound`, if the differences go on as observed: the normal
    sample-size formula n = ((z_(1-alpha) + z_power) * sd / (mean - bound))^2. None when the
    observed mean is not above the bound (no number of examples would lift it there)."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or d.mean() <= bound:
        return None
    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return max(2, math.ceil((z * d.std(ddof=1) / (d.mean() - bound)) ** 2))


def decide(
    arms: dict[str, dict],
    metrics: list[str],
    margins: dict[str, float],
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Apply the decision rule (the module docstring) and return its numbers.

    arms: {name: {"tuned": bool, "cost": tokens per request, "scores": {metric: {example id: points
    or None}}}} for every metric in `metrics` (arms that were skipped are simply absent). The first
    metric is the primary one: it names the best arms. margins: {metric: margin in its points}.

    Returns {"primary", "metrics", "margins", "n", "means": {arm: primary mean}, "reference",
    "best_tuned", "diffs": {arm: [diff, lo, hi] on the primary}, "rows": the per-metric test of the
    fine-tune (Holm, several metrics only), "wins", "losses", "fine_tune", "cheaper": [{"arm",
    "cost", "checks": {metric: [diff, lo, hi]}, "kept_out_by": [metric]}] for the arms that cost
    less than the reference, cheapest first, "cheapest", "recommend", "needed": examples at which
    the fine-tune's interval would likely clear zero, "cheaper_needed": the same for the cheapest
    arm kept out to clear -margin}.
    """
    primary = metrics[0]
    means = {n: _mean(list(a["scores"][primary].values())) for n, a in arms.items()}
    cheap = [n for n, a in arms.items() if not a["tuned"] and not math.isnan(means[n])]
    tuned = [n for n, a in arms.items() if a["tuned"] and not math.isnan(means[n])]
    out = {
        "primary": primary,
        "metrics": list(metrics),
        "margins": {k: margins[k] for k in metrics},
        "means": means,
        "reference": None,
        "best_tuned": max(tuned, key=lambda n: means[n]) if tuned else None,
        "diffs": {},
        "rows": [],
        "wins": [],
        "losses": [],
        "cheaper": [],
        "needed": None,
        "cheaper_needed": None,
    }
    if not cheap:
        out.update(n=0, fine_tune=bool(tuned), cheapest=None, recommend=out["best_tuned"])
        return out
    ref = out["reference"] = max(cheap, key=lambda n: (means[n], -arms[n]["cost"]))
    out["n"] = sum(v is not None for v in arms[ref]["scores"][primary].values())
    against = lambda n, k: paired(arms[n]["scores"][k], arms[ref]["scores"][k])  # noqa: E731
    out["diffs"] = {n: list(paired_bootstrap(*against(n, primary), resamples, seed)) for n in arms}

    best = out["best_tuned"]
    if best is not None and len(metrics) == 1:
        d, lo, _ = out["diffs"][best]
        out["fine_tune"] = d > margins[primary] and lo > 0
        if not out["fine_tune"] and d > margins[primary]:
            a, b = against(best, primary)
            out["needed"] = _needed(primary, [x - y for x, y in zip(a, b)], 0.0, ALPHA)
    elif best is not None:
        several = decide_many(arms, metrics, margins, resamples, seed)
        out.update(rows=several["rows"], wins=several["wins"], losses=several["losses"])
        out["fine_tune"] = several["fine_tune"]
        unsettled = [r for r in several["rows"] if r["outcome"] == "no clear difference" and r["diff"] > r["margin"]]
        if not out["fine_tune"] and not several["losses"] and unsettled:
            # Holm's first step tests at alpha / (number of metrics): the size that settles it there
            estimates = []
            for r in unsettled:
                a, b = paired(arms[r["tuned"]]["scores"][r["metric"]], arms[r["reference"]]["scores"][r["metric"]])
                diffs = [x - y for x, y in zip(a, b)]
                estimates.append(_needed(r["metric"], diffs, 0.0, ALPHA / len(several["rows"]), len(several["rows"])))
            estimates = [e for e in estimates if e]
            out["needed"] = min(estimates, key=lambda e: e["examples"]) if estimates else None
    else:
        out["fine_tune"] = False

    # among the arms that need no training: as good as the best on every decision metric, and cheaper
    as_good = [ref]
    for n in sorted((n for n in cheap if n != ref), key=lambda n: (arms[n]["cost"], -means[n])):
        checks = {k: list(paired_bootstrap(*against(n, k), resamples, seed)) for k in metrics}
        kept_out_by = [k for k, (_, lo, _) in checks.items() if not math.isnan(lo) and lo <= -margins[k]]
        if not kept_out_by:
            as_good.append(n)
        if arms[n]["cost"] < arms[ref]["cost"]:
            out["cheaper"].append({"arm": n, "cost": arms[n]["cost"], "checks": checks, "kept_out_by": kept_out_by})
    out["cheapest"] = min(as_good, key=lambda n: (arms[n]["cost"], -means[n]))
    out["recommend"] = best if out["fine_tune"] else out["cheapest"]

    # the cheapest arm kept out only for want of examples: its every point estimate within the margin
    for row in out["cheaper"]:
        if arms[row["arm"]]["cost"] >= arms[out["cheapest"]]["cost"] or not row["kept_out_by"]:
            continue
        if all(row["checks"][k][0] > -margins[k] for k in row["kept_out_by"]):
            estimates = []
            for k in row["kept_out_by"]:
                a, b = against(row["arm"], k)
                estimates.append(_needed(k, [x - y for x, y in zip(a, b)], -margins[k], ALPHA))
            if all(estimates):
                out["cheaper_needed"] = {**max(estimates, key=lambda e: e["examples"]), "arm": row["arm"]}
        break
    return out


def _needed(metric: str, diffs: list[float], bound: float, alpha: float, holm: int = 1) -> dict | None:
    """`holm`: how many decision metrics alpha was divided among (the sentence says so: the plain 95 %
    interval in the table may already clear zero where the Holm-corrected one does not)."""
    n = examples_needed(diffs, bound, alpha)
    return None if n is None else {"metric": metric, "examples": n, "have": len(diffs), "bound": bound, "holm": holm}


# ------------------------------------------------------------------ several metrics (Holm)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): compare each with alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def decide_many(
    arms: dict[str, dict],
    metrics: list[str],
    margins: dict[str, float] | float,
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """The fine-tune's test on each of several metrics, with Holm's correction across them.

    arms: {name: {"tuned": bool, "scores": {metric: {example id: score in points}}}}. Per metric
    the best fine-tuned arm meets the best arm that needs no training (both chosen on that metric).
    Fine-tuning *wins* a metric when it is ahead by more than the margin and the one-sided bootstrap
    test of "ahead" survives Holm at 2.5 %; it *loses* one when the test of "behind" survives Holm
    (no margin: a real loss counts however small). Recommend fine-tuning when it wins on at least
    one metric and loses on none.
    """
    import numpy as np

    if not isinstance(margins, dict):
        margins = {k: float(margins) for k in metrics}
    rows = []
    for key in metrics:
        means = {n: _mean(list(a["scores"][key].values())) for n, a in arms.items()}
        cheap = [n for n, a in arms.items() if not a["tuned"] and not math.isnan(means[n])]
        tuned = [n for n, a in arms.items() if a["tuned"] and not math.isnan(means[n])]
        if not cheap or not tuned:
            continue
        ref, best = max(cheap, key=lambda n: means[n]), max(tuned, key=lambda n: means[n])
        a, b = paired(arms[best]["scores"][key], arms[ref]["scores"][key])
        d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        diff, lo, hi = paired_bootstrap(a, b, resamples, seed)
        boot = resampled_means(d, resamples, seed) if d.size else np.zeros(1)
        rows.append(
            {
                "metric": key,
                "tuned": best,
                "reference": ref,
                "diff": diff,
                "lo": lo,
                "hi": hi,
                "margin": margins[key],
                "n": int(d.size),
                "p_ahead": float((np.sum(boot <= 0) + 1) / (boot.size + 1)),
                "p_behind": float((np.sum(boot >= 0) + 1) / (boot.size + 1)),
            }
        )
    for side in ("ahead", "behind"):
        for row, adj in zip(rows, holm([r[f"p_{side}"] for r in rows])):
            row[f"holm_{side}"] = adj
    for r in rows:
        r["outcome"] = (
            "wins"
            if r["diff"] > r["margin"] and r["holm_ahead"] < ALPHA
            else "loses"
            if r["holm_behind"] < ALPHA
            else "no clear difference"
        )
    wins = [r["metric"] for r in rows if r["outcome"] == "wins"]
    losses = [r["metric"] for r in rows if r["outcome"] == "loses"]
    return {"rows": rows, "wins": wins, "losses": losses, "fine_tune": bool(wins) and not losses}


# ------------------------------------------------------------------------- the two levers (2x2)

LEVER_ARMS = ("zero-shot", "rag", "fine-tuned", "fine-tuned+rag")


def two_by_two(
    scores: dict[str, dict[str, list]],
    metrics: list[str],
    resamples: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """The effect of retrieval and the effect of fine-tuning, apart, from the four arms of a 2x2.

    scores: {metric: {arm: [score in points per example]}} for the arms of LEVER_ARMS, aligned by
    example (None where a metric does not apply). Per example, retrieval's effect is the mean of
    (rag - zero-shot) and (fine-tuned+rag - fine-tuned); fine-tuning's is the mean of (fine-tuned -
    zero-shot) and (fine-tuned+rag - rag); the interaction is how much retrieval's effect differs
    on the fine-tuned model. "alone" is each lever's effect without the other (rag - zero-shot,
    fine-tuned - zero-shot), "with_other" its effect on top of the other (fine-tuned+rag minus
    fine-tuned or rag): a lever may work only through the other. Each has a bootstrap interval over
    examples (paired by construction).
    """
    table = []
    for key in metrics:
        z, r, f, fr = (scores[key][n] for n in LEVER_ARMS)
        rows = [(z[i], r[i], f[i], fr[i]) for i in range(len(z)) if None not in (z[i], r[i], f[i], fr[i])]
        if not rows:
            continue
        boot = lambda values: list(bootstrap_mean(values, resamples, seed))  # noqa: E731
        effects = {
            "retrieval": [((b - a) + (d - c)) / 2 for a, b, c, d in rows],
            "fine-tuning": [((c - a) + (d - b)) / 2 for a, b, c, d in rows],
            "interaction": [(d - c) - (b - a) for a, b, c, d in rows],
        }
        table.append(
            {
                "metric": key,
                "n": len(rows),
                "means": {n: sum(row[j] for row in rows) / len(rows) for j, n in enumerate(LEVER_ARMS)},
                **{k: boot(v) for k, v in effects.items()},
                "alone": {
                    "retrieval": boot([b - a for a, b, c, d in rows]),
                    "fine-tuning": boot([c - a for a, b, c, d in rows]),
                },
                "with_other": {
                    "retrieval": boot([d - c for a, b, c, d in rows]),
                    "fine-tuning": boot([d - b for a, b, c, d in rows]),
                },
            }
        )
    return table


def _mean(values: list) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else math.nan
