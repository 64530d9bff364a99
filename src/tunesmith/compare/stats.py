"""Statistics for the verdict: paired bootstrap intervals and the decision rule.

    from tunesmith.compare.stats import paired_bootstrap, decide
    diff, lo, hi = paired_bootstrap(tuned_scores, fewshot_scores)       # mean(a - b) and its 95 % CI
    verdict = decide(arms, primary="chrf", margin=2.0)                   # arms: see `decide`

The rule, stated once here and printed in every report: recommend fine-tuning only if the best
fine-tuned arm beats the best arm that needs no training (the "best cheaper arm") on the primary
score by more than the margin, with the 95 % interval of the difference above zero. Otherwise
recommend the cheapest arm that needs no training and scores within the margin of the best such arm.
"""

from __future__ import annotations

import math

RULE = ("Recommend fine-tuning only if the best fine-tuned arm beats the best arm that needs no training "
        "on the primary score by more than the margin, with the 95 % interval of the difference above zero; "
        "otherwise recommend the cheapest arm that needs no training within the margin of the best such arm.")


def paired_bootstrap(a: list[float], b: list[float], resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """mean(a - b) over paired examples, with a percentile bootstrap interval: resample examples
    (the same ones for both arms, which is what makes it paired) with replacement."""
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (N,)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))  # (R, N) example indices per resample
    means = d[idx].mean(axis=1)  # (R,)
    tail = 100 * (1 - level) / 2
    return float(d.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def bootstrap_mean(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of one arm's scores with its 95 % interval (the error bars in the report)."""
    return paired_bootstrap(values, [0.0] * len(values), resamples, seed)


def paired(scores_a: dict, scores_b: dict) -> tuple[list[float], list[float]]:
    """The values of two arms on the examples both have a score for (by example id)."""
    ids = [i for i in scores_a if i in scores_b and scores_a[i] is not None and scores_b[i] is not None]
    return [scores_a[i] for i in ids], [scores_b[i] for i in ids]


def decide(arms: dict[str, dict], primary: str, margin: float, resamples: int = 2000, seed: int = 0,
           metric_label: str | None = None) -> dict:
    """Apply the decision rule.

    arms: {name: {"scores": {example id: primary score}, "tuned": bool, "cost": per-request cost}}
    (arms that were skipped are simply absent). Returns {"recommend", "reference", "diffs": {arm:
    [diff, lo, hi]}, "fine_tune": bool, "paragraph", "rule"}.
    """
    label = metric_label or primary
    means = {n: _mean(list(a["scores"].values())) for n, a in arms.items()}
    cheap = [n for n, a in arms.items() if not a["tuned"] and not math.isnan(means[n])]
    tuned = [n for n, a in arms.items() if a["tuned"] and not math.isnan(means[n])]
    if not cheap:
        return {"recommend": tuned[0] if tuned else None, "reference": None, "diffs": {}, "fine_tune": bool(tuned),
                "rule": RULE, "paragraph": "No arm that needs no training ran, so there is nothing to weigh fine-tuning against."}
    reference = max(cheap, key=lambda n: (means[n], -arms[n]["cost"]))
    diffs = {n: list(paired_bootstrap(*paired(arms[n]["scores"], arms[reference]["scores"]), resamples, seed))
             for n in arms}
    best_tuned = max(tuned, key=lambda n: means[n]) if tuned else None
    fine_tune = bool(best_tuned) and diffs[best_tuned][0] > margin and diffs[best_tuned][1] > 0
    within = [n for n in cheap if means[n] >= means[reference] - margin]
    cheapest = min(within, key=lambda n: (arms[n]["cost"], -means[n]))
    recommend = best_tuned if fine_tune else cheapest

    n_examples = len(arms[reference]["scores"])
    say = [f"Recommendation: {recommend}."]
    if best_tuned is None:
        say.append(f"No fine-tuned arm ran, so the choice is among the arms that need no training: "
                   f"the best is {reference} ({label} {means[reference]:.1f} on {n_examples} held-out examples).")
    else:
        d, lo, hi = diffs[best_tuned]
        say.append(f"On {n_examples} held-out examples, {best_tuned} scored {label} {means[best_tuned]:.1f} against "
                   f"{means[reference]:.1f} for {reference}, the best arm that needs no training: a difference of "
                   f"{d:+.1f} points (95 % interval {lo:+.1f} to {hi:+.1f}).")
        if fine_tune:
            say.append(f"That is more than the {margin:g}-point margin with the whole interval above zero, "
                       f"so the gain is real and large enough to be worth training for.")
        elif d > margin:
            say.append(f"That is more than the {margin:g}-point margin, but the interval reaches below zero, so "
                       f"these examples cannot rule out that it is noise; more held-out examples would settle it.")
        elif d > 0:
            say.append(f"That gain is within the {margin:g}-point margin, too small to pay for training and "
                       f"maintaining a fine-tuned model.")
        else:
            say.append("Fine-tuning did not beat it.")
    if not fine_tune:
        if recommend == reference:
            say.append(f"{recommend} is the best arm that needs no training"
                       + (" and no cheaper arm comes within the margin." if len(within) == 1 else
                          ", and the cheapest of those within the margin."))
        else:
            say.append(f"{recommend} costs less per request than {reference} and scores "
                       f"{means[recommend]:.1f}, within {margin:g} points of it, so it is the one to use.")
    return {"recommend": recommend, "reference": reference, "diffs": diffs, "fine_tune": fine_tune,
            "best_tuned": best_tuned, "means": means, "rule": RULE, "paragraph": " ".join(say)}


def _mean(values: list) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else math.nan
