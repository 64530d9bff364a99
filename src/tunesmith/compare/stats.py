"""Statistics for the verdict: paired bootstrap intervals and the decision rule.

    from tunesmith.compare.stats import paired_bootstrap, decide, decide_many, two_by_two
    diff, lo, hi = paired_bootstrap(tuned_scores, fewshot_scores)       # mean(a - b) and its 95 % CI
    verdict = decide(arms, primary="chrf", margin=2.0)                   # arms: see `decide`
    several = decide_many(arms, ["answer", "chrf"], margin=2.0)         # Holm across metrics
    levers = two_by_two(scores, ["answer", "chrf"])                      # retrieval and fine-tuning apart

The rule, stated once here and printed in every report: recommend fine-tuning only if the best
fine-tuned arm beats the best arm that needs no training (the "best cheaper arm") on the primary
score by more than the margin, with the 95 % interval of the difference above zero. Otherwise
recommend the cheapest arm that needs no training and scores within the margin of the best such arm.
"""

from __future__ import annotations

import math

RULE = (
    "Recommend fine-tuning only if the best fine-tuned arm beats the best arm that needs no training "
    "on the primary score by more than the margin, with the 95 % interval of the difference above zero; "
    "otherwise recommend the cheapest arm that needs no training within the margin of the best such arm."
)


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


def decide(
    arms: dict[str, dict],
    primary: str,
    margin: float,
    resamples: int = 2000,
    seed: int = 0,
    metric_label: str | None = None,
) -> dict:
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
        return {
            "recommend": tuned[0] if tuned else None,
            "reference": None,
            "diffs": {},
            "fine_tune": bool(tuned),
            "rule": RULE,
            "paragraph": "No arm that needs no training ran, so there is nothing to weigh fine-tuning against.",
        }
    reference = max(cheap, key=lambda n: (means[n], -arms[n]["cost"]))
    diffs = {
        n: list(paired_bootstrap(*paired(arms[n]["scores"], arms[reference]["scores"]), resamples, seed)) for n in arms
    }
    best_tuned = max(tuned, key=lambda n: means[n]) if tuned else None
    fine_tune = bool(best_tuned) and diffs[best_tuned][0] > margin and diffs[best_tuned][1] > 0
    within = [n for n in cheap if means[n] >= means[reference] - margin]
    cheapest = min(within, key=lambda n: (arms[n]["cost"], -means[n]))
    recommend = best_tuned if fine_tune else cheapest

    n_examples = len(arms[reference]["scores"])
    say = [f"Recommendation: {recommend}."]
    if best_tuned is None:
        say.append(
            f"No fine-tuned arm ran, so the choice is among the arms that need no training: "
            f"the best is {reference} ({label} {means[reference]:.1f} on {n_examples} held-out examples)."
        )
    else:
        d, lo, hi = diffs[best_tuned]
        say.append(
            f"On {n_examples} held-out examples, {best_tuned} scored {label} {means[best_tuned]:.1f} against "
            f"{means[reference]:.1f} for {reference}, the best arm that needs no training: a difference of "
            f"{d:+.1f} points (95 % interval {lo:+.1f} to {hi:+.1f})."
        )
        if fine_tune:
            say.append(
                f"That is more than the {margin:g}-point margin with the whole interval above zero, "
                f"so the gain is real and large enough to be worth training for."
            )
        elif d > margin:
            say.append(
                f"That is more than the {margin:g}-point margin, but the interval reaches below zero, so "
                f"these examples cannot rule out that it is noise; more held-out examples would settle it."
            )
        elif d > 0:
            say.append(
                f"That gain is within the {margin:g}-point margin, too small to pay for training and "
                f"maintaining a fine-tuned model."
            )
        else:
            say.append("Fine-tuning did not beat it.")
    if cheapest == reference:
        choice = f"{cheapest} is the best arm that needs no training" + (
            " and no cheaper arm comes within the margin."
            if len(within) == 1
            else ", and the cheapest of those within the margin."
        )
    else:
        choice = (
            f"{cheapest} costs less per request than {reference} and scores "
            f"{means[cheapest]:.1f}, within {margin:g} points of it, so it is the one to use."
        )
    if not fine_tune:
        say.append(choice)
    return {
        "recommend": recommend,
        "reference": reference,
        "diffs": diffs,
        "fine_tune": fine_tune,
        "best_tuned": best_tuned,
        "cheapest": cheapest,
        "choice": choice,
        "means": means,
        "rule": RULE,
        "paragraph": " ".join(say),
    }


# ------------------------------------------------------------------ several metrics (Holm)

ALPHA = 0.025  # one-sided: the same evidence as "the 95 % interval lies above zero"


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
    margin: float,
    resamples: int = 2000,
    seed: int = 0,
    labels: dict[str, str] | None = None,
) -> dict:
    """The decision rule on each of several metrics, with Holm's correction across them.

    arms: {name: {"tuned": bool, "scores": {metric: {example id: score in points}}}}. Per metric
    the best fine-tuned arm meets the best arm that needs no training (both chosen on that metric).
    Fine-tuning *wins* a metric when it is ahead by more than the margin and the one-sided bootstrap
    test of "ahead" survives Holm at 2.5 %; it *loses* one when the test of "behind" survives Holm
    (no margin: a real loss counts however small). Recommend fine-tuning when it wins on at least
    one metric and loses on none.
    """
    import numpy as np

    labels = labels or {}
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
                "label": labels.get(key, key),
                "tuned": best,
                "reference": ref,
                "diff": diff,
                "lo": lo,
                "hi": hi,
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
            if r["diff"] > margin and r["holm_ahead"] < ALPHA
            else "loses"
            if r["holm_behind"] < ALPHA
            else "no clear difference"
        )
    wins = [r["metric"] for r in rows if r["outcome"] == "wins"]
    losses = [r["metric"] for r in rows if r["outcome"] == "loses"]
    say = []
    for word, keys in (("wins on", wins), ("loses on", losses)):
        if keys:
            say.append(
                f"{word} "
                + ", ".join(
                    f"{labels.get(k, k)} ({_row(rows, k)['diff']:+.1f} points against {_row(rows, k)['reference']})"
                    for k in keys
                )
            )
    rest = [r["label"] for r in rows if r["outcome"] == "no clear difference"]
    if rest:
        say.append("shows no clear difference on " + ", ".join(rest))
    sentence = (
        f"On the {len(rows)} decision metrics (Holm-corrected), fine-tuning " + "; ".join(say) + "."
        if rows
        else "No decision metric had both a fine-tuned arm and an arm that needs no training."
    )
    return {"rows": rows, "wins": wins, "losses": losses, "fine_tune": bool(wins) and not losses, "sentence": sentence}


def _row(rows: list[dict], key: str) -> dict:
    return next(r for r in rows if r["metric"] == key)


# ------------------------------------------------------------------------- the two levers (2x2)

LEVER_ARMS = ("zero-shot", "rag", "fine-tuned", "fine-tuned+rag")
SUPPLIES = {
    "answer": "the facts",
    "exact_match": "the exact answers",
    "token_f1": "the answer words",
    "template": "the format",
    "glossary": "the house terms",
    "chrf": "the wording",
    "rougeL": "the wording",
}


def two_by_two(
    scores: dict[str, dict[str, list]],
    metrics: list[str],
    resamples: int = 2000,
    seed: int = 0,
    labels: dict[str, str] | None = None,
) -> dict:
    """The effect of retrieval and the effect of fine-tuning, apart, from the four arms of a 2x2.

    scores: {metric: {arm: [score in points per example]}} for the arms of LEVER_ARMS, aligned by
    example (None where a metric does not apply). Per example, retrieval's effect is the mean of
    (rag - zero-shot) and (fine-tuned+rag - fine-tuned); fine-tuning's is the mean of (fine-tuned -
    zero-shot) and (fine-tuned+rag - rag); the interaction is how much retrieval's effect differs
    on the fine-tuned model. Each has a bootstrap interval over examples (paired by construction).
    """
    labels = labels or {}
    table = []
    for key in metrics:
        z, r, f, fr = (scores[key][n] for n in LEVER_ARMS)
        rows = [(z[i], r[i], f[i], fr[i]) for i in range(len(z)) if None not in (z[i], r[i], f[i], fr[i])]
        if not rows:
            continue
        effects = {
            "retrieval": [((b - a) + (d - c)) / 2 for a, b, c, d in rows],
            "fine-tuning": [((c - a) + (d - b)) / 2 for a, b, c, d in rows],
            "interaction": [(d - c) - (b - a) for a, b, c, d in rows],
        }
        table.append(
            {
                "metric": key,
                "label": labels.get(key, key),
                "n": len(rows),
                "means": {n: sum(row[j] for row in rows) / len(rows) for j, n in enumerate(LEVER_ARMS)},
                **{k: list(bootstrap_mean(v, resamples, seed)) for k, v in effects.items()},
            }
        )
    return {"metrics": table, "paragraph": _levers_paragraph(table)}


def _levers_paragraph(table: list[dict]) -> str:
    if not table:
        return ""
    say = []
    for lever, name in (("retrieval", "Retrieval"), ("fine-tuning", "The fine-tune")):
        up = [t for t in table if t[lever][1] > 0]
        down = [t for t in table if t[lever][2] < 0]
        if up:
            what = list(dict.fromkeys(SUPPLIES.get(t["metric"], t["label"]) for t in up))
            say.append(f"{name} supplies {_and(what)} (" + "; ".join(_effect(t, lever) for t in up) + ")")
        if down:
            say.append(
                f"{name} works against "
                + _and([t["label"] for t in down])
                + " ("
                + "; ".join(_effect(t, lever) for t in down)
                + ")"
            )
        if not up and not down:
            say.append(f"{name} makes no clear difference (" + "; ".join(_effect(t, lever) for t in table) + ")")
    text = ". ".join(s[0].upper() + s[1:] for s in say) + "."
    facts = next((t for t in table if t["metric"] == "answer"), None)
    if facts:
        r, f = facts["retrieval"], facts["fine-tuning"]
        winner = "retrieval" if r[1] > 0 and r[0] > f[0] else "fine-tuning" if f[1] > 0 and f[0] > r[0] else None
        if winner:
            text = (
                f"{winner.capitalize()} is the lever that supplies the facts: it moves answer accuracy "
                f"{(r if winner == 'retrieval' else f)[0]:+.1f} points, the other lever "
                f"{(f if winner == 'retrieval' else r)[0]:+.1f}. "
            ) + text
    mixed = [t for t in table if t["interaction"][1] > 0 or t["interaction"][2] < 0]
    if mixed:
        text += (
            " The levers interact on "
            + ", ".join(
                f"{t['label']} (retrieval's effect is {t['interaction'][0]:+.1f} points different on the fine-tuned model)"
                for t in mixed
            )
            + "."
        )
    return text


def _effect(t: dict, lever: str) -> str:
    d, lo, hi = t[lever]
    return f"{d:+.1f} points of {t['label']}, 95 % interval {lo:+.1f} to {hi:+.1f}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _mean(values: list) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else math.nan
