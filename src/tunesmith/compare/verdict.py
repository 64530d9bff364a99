"""The verdict in words: every sentence of the recommendation, from the numbers compare computed.

    from tunesmith.compare import verdict
    verdict.write(results)   # fills results["verdict"]["paragraph"], ["reasons"], ["rule"] and the levers' paragraph

`results` is what compare.run.summarise builds (stats.decide's numbers in results["verdict"],
stats.two_by_two's in results["levers"]); nothing here computes a statistic or changes a number,
it only says them. One place for the prose, so a sentence and the number it states cannot drift.
"""

from __future__ import annotations

import math

from tunesmith.compare.metrics import METRICS, SHORT_ANSWER_WORDS

RULE = (
    "Recommend fine-tuning only if the best fine-tuned arm beats the best arm that needs no training by more "
    "than the margin with the 95 % interval of the difference above zero (on several decision metrics: it wins "
    "at least one, Holm-corrected, and loses none). Otherwise a cheaper arm that needs no training counts as "
    "as good as the best such arm only if, on every decision metric, the lower end of its paired 95 % interval "
    "against it is above minus the margin; recommend the cheapest such arm, else the best one itself."
)

# what each lever, when it helps, supplies — said of a metric
SUPPLIES = {
    "answer": "the facts",
    "exact_match": "the exact answers",
    "token_f1": "the answer words",
    "template": "the format",
    "glossary": "the house terms",
    "chrf": "the wording",
    "rougeL": "the wording",
}
KIND_WORDS = {  # the examples a task-fit metric fits, by kind
    "answer": "give key facts (meta.answer)",
    "token_f1": f"have short references (at most {SHORT_ANSWER_WORDS} words)",
    "chrf": "have long references",
}


def write(results: dict) -> None:
    """Every sentence the report and the terminal show, written into `results` from its numbers."""
    v = results["verdict"]
    v["rule"] = RULE
    v["reasons"] = decision_reasons(results)
    v["choice"] = choice_sentence(results) if v["reference"] is not None else ""  # also the side effects' veto's
    v["paragraph"] = paragraph(results)
    if results.get("levers"):
        results["levers"]["paragraph"] = levers_paragraph(results["levers"])


def label(key: str) -> str:
    return METRICS[key].label


def unit(key: str) -> str:
    """What a margin or a difference of this metric is counted in."""
    return "percentage points" if METRICS[key].percent else f"{label(key)} points"


# ------------------------------------------------------------------------------- the primary metric


def primary_why(setting: str, metric: str, fits: dict, n: int) -> str:
    """Why the decision's first metric is the one it is. fits: {task or "": {kind: examples}}, the
    metric each scored example alone would get (see compare.run.primary_metric)."""
    if setting != "auto":
        return "set in the config (compare.primary_metric)"
    kinds = {k for per_task in fits.values() for k in per_task}
    if metric == "answer":
        return (
            f"every one of the {n} scored examples gives its key facts (meta.answer), and a right answer is what counts"
        )
    if metric == "token_f1":
        return (
            f"every reference is a short answer (at most {SHORT_ANSWER_WORDS} words) but not every example gives "
            f"key facts (meta.answer): token F1 credits the right words without demanding the exact string"
        )
    if len(kinds) <= 1:
        return "the references are long text, scored against the team's own wording"
    named = {t: ks for t, ks in fits.items() if t}
    parts = [f"{t}: {', '.join(label(k) for k in sorted(ks))}" for t, ks in sorted(named.items())]
    if "" in fits:  # examples without meta.task: say what they are, not "no task"
        untasked = fits[""]
        words = "; ".join(f"{untasked[k]} {KIND_WORDS[k]}" for k in sorted(untasked))
        parts.append(("examples without meta.task: " if named else "") + words)
    if not named:
        return (
            f"the scored examples call for different metrics ({parts[0]}), and chrF is the one that applies to all; "
            "to decide on the others, set compare.decide_on (e.g. answer,chrf)"
        )
    return (
        f"the scored tasks call for different metrics ({'; '.join(parts)}), and chrF is the one that applies to all; "
        "to decide on the others, set compare.decide_on (e.g. answer,chrf) or compare.tasks"
    )


def decision_reasons(results: dict) -> list[str]:
    """One line per decision metric: why it is in the decision, and its margin."""
    v, why = results["verdict"], results.get("decide_why", {})
    lines = []
    for key in v["metrics"]:
        source = why.get(key, "")
        text = {
            "task-fit": f"the metric that fits the scored tasks ({results.get('primary_why', '')})",
            "glossary": f"the team supplied a glossary ({results.get('glossary_terms', 0)} terms)",
            "templates": "the team supplied templates (" + ", ".join(results.get("templates") or []) + ")",
            "decide_on": "set in the config (compare.decide_on)",
        }.get(source, source)
        lines.append(f"{label(key)}: {text}; margin {v['margins'][key]:g} {unit(key)}")
    return lines


# ---------------------------------------------------------------------------------- the paragraph


def paragraph(results: dict) -> str:
    v = results["verdict"]
    ref, best, primary = v["reference"], v["best_tuned"], v["primary"]
    say = [f"Recommendation: {v['recommend']}."]
    if ref is None:
        say.append("No arm that needs no training ran, so there is nothing to weigh fine-tuning against.")
        return " ".join(say + [cost_sentence(results)]).strip()
    means, margin = v["means"], v["margins"][primary]
    if best is None:
        say.append(
            f"No fine-tuned arm ran, so the choice is among the arms that need no training: "
            f"the best is {ref} ({label(primary)} {means[ref]:.1f} on {v['n']} held-out examples)."
        )
    elif v["rows"]:
        say.append(several_sentence(v))
        say.append("The rule across several metrics: fine-tune only when it wins at least one and loses none.")
    else:
        d, lo, hi = v["diffs"][best]
        say.append(
            f"On {v['n']} held-out examples, {best} scored {label(primary)} {means[best]:.1f} against "
            f"{means[ref]:.1f} for {ref}, the best arm that needs no training: a difference of "
            f"{d:+.1f} points (95 % interval {lo:+.1f} to {hi:+.1f})."
        )
        if v["fine_tune"]:
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
    if v["needed"]:
        say.append(needed_sentence(results, v["needed"], "the fine-tune's " + ("gain" if not v["rows"] else "win")))
    if v["fine_tune"]:
        if v["rows"]:
            say.append(f"{v['recommend']} is the fine-tuned arm to use.")
    else:
        say.append(choice_sentence(results))
    say.append(cost_sentence(results))
    return " ".join(s for s in say if s)


def several_sentence(v: dict) -> str:
    rows = {r["metric"]: r for r in v["rows"]}
    say = []
    for word, keys in (("wins on", v["wins"]), ("loses on", v["losses"])):
        if keys:
            say.append(
                f"{word} "
                + ", ".join(f"{label(k)} ({rows[k]['diff']:+.1f} points against {rows[k]['reference']})" for k in keys)
            )
    rest = [label(r["metric"]) for r in v["rows"] if r["outcome"] == "no clear difference"]
    if rest:
        say.append("shows no clear difference on " + ", ".join(rest))
    return f"On the {len(v['rows'])} decision metrics (Holm-corrected), fine-tuning " + "; ".join(say) + "."


def choice_sentence(results: dict) -> str:
    """The arm that needs no training to use, and which metric kept each cheaper arm out."""
    v = results["verdict"]
    ref, pick = v["reference"], v["cheapest"]
    cost = {row["arm"]: row["cost"] for row in v["cheaper"]}
    kept = [row for row in v["cheaper"] if row["kept_out_by"] and row["cost"] < cost.get(pick, math.inf)]
    several = len(v["metrics"]) > 1
    if pick == ref:
        if not v["cheaper"]:
            text = f"{ref} is the best arm that needs no training and none costs less per request."
        else:
            text = (
                f"{ref} is the best arm that needs no training, and no cheaper arm is as good "
                + ("on every decision metric" if several else f"on {label(v['primary'])}")
                + ": "
                + "; ".join(_kept_out(v, row) for row in kept)
                + "."
            )
    else:
        row = next(r for r in v["cheaper"] if r["arm"] == pick)
        shown = "; ".join(_diff(k, row["checks"][k]) for k in v["metrics"] if not math.isnan(row["checks"][k][0]))
        text = (
            f"{pick} costs less per request than {ref} and, "
            + ("on every decision metric" if several else f"on {label(v['primary'])}")
            + f", is at most the margin behind it with 95 % confidence ({shown}), so it is the one to use."
        )
        if kept:
            text += " Cheaper still, but kept out: " + "; ".join(_kept_out(v, r) for r in kept) + "."
    if v["cheaper_needed"]:
        n = v["cheaper_needed"]
        text += " " + needed_sentence(results, n, f"{n['arm']}'s case")
    return text


def _kept_out(v: dict, row: dict) -> str:
    checks = "; ".join(f"{_diff(k, row['checks'][k])}, margin {v['margins'][k]:g}" for k in row["kept_out_by"])
    return f"{row['arm']} could be more than the margin behind ({checks})"


def _diff(key: str, d: list) -> str:
    return f"{label(key)} {d[0]:+.1f} points, 95 % interval {d[1]:+.1f} to {d[2]:+.1f}"


def needed_sentence(results: dict, needed: dict, what: str) -> str:
    """ "About N examples would settle it", with the split's size and what scoring it takes here."""
    n, have = needed["examples"], needed["have"]
    split = results.get("scorable") or results.get("heldout_total") or have
    of_tasks = " of the scored tasks" if split < (results.get("heldout_total") or split) else ""
    bound = "zero" if needed["bound"] == 0 else f"{needed['bound']:+g}"
    holm = needed.get("holm", 1)
    interval = f"the interval on {label(needed['metric'])}" + (
        f", Holm-corrected across the {holm} decision metrics," if holm > 1 else ""
    )
    text = (
        f"At about {n:,} held-out examples {interval} would likely clear {bound}, settling {what} ({have} scored here)"
    )
    if n > split:
        return text + f"; the held-out split has only {split}{of_tasks}: it takes more held-out data to settle."
    text += f"; the held-out split has {split}{of_tasks}"
    per_reply, arms = results.get("seconds_per_reply"), sum(a["status"] == "ok" for a in results["arms"].values())
    if per_reply and split > have:
        text += f", and scoring them all takes {_duration(per_reply * split * arms)} here: `compare.max_examples=0`"
    return text + "."


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def cost_sentence(results: dict) -> str:
    """Training's one-off cost, and whether the recommended fine-tuned arm (or, when a cheaper arm
    is recommended, the plain fine-tuned arm) pays it back through shorter prompts."""
    v, training, a = results["verdict"], results.get("training"), results["assumptions"]
    if training is None or v.get("best_tuned") is None:
        return ""
    minutes = training.get("train_seconds", 0) / 60
    text = f"Training took {minutes:.1f} minutes (${training['train_cost']:.2f} at ${a['train_cost_per_hour']:g}/hour)"
    tuned = v["recommend"] if v["fine_tune"] else ("fine-tuned" if "fine-tuned" in v["diffs"] else v["best_tuned"])
    rows = [r for r in results.get("break_even") or [] if r["tuned"] == tuned]
    row = next((r for r in rows if r["against"] == v["recommend"]), None) or next(
        (r for r in rows if r["against"] == v["reference"]), None
    )
    if row and v["diffs"][tuned][0] <= -v["margins"][v["primary"]]:
        return text + "."  # serving savings of an arm that scores clearly worse are beside the point
    if row and row["requests"] is not None:
        text += (
            f"; {tuned}'s shorter prompts save {row['tokens_saved_per_request']:.0f} tokens per request against "
            f"{row['against']}, which repays training after {row['requests']:,.0f} requests "
            f"(at ${a['price_per_1k_tokens']:g} per 1,000 tokens)"
        )
    elif row:
        text += (
            f"; {tuned} does not use fewer tokens per request than {row['against']}, so serving "
            f"savings never pay the training back"
        )
    return text + "."


# ------------------------------------------------------------------------------------ the 2x2


def levers_paragraph(levers: dict) -> str:
    """What each lever supplies, in words, from stats.two_by_two's table."""
    if levers.get("same_as"):
        n, twin, why = levers["same_as"]
        return (
            f"Retrieval and fine-tuning cannot be told apart here: {n} equals {twin} ({why}). "
            "fix: raise compare.max_prompt_tokens or lower compare.passage_words."
        )
    table = levers["metrics"]
    if not table:
        return ""
    other = {"retrieval": "the fine-tune", "fine-tuning": "retrieval"}
    say = []
    for lever, name in (("retrieval", "Retrieval"), ("fine-tuning", "The fine-tune")):
        through = [t for t in table if _only_through_other(t, lever)]
        up = [t for t in table if t[lever][1] > 0 and t not in through]
        down = [t for t in table if t[lever][2] < 0 and t not in through]
        if up:
            what = list(dict.fromkeys(SUPPLIES.get(t["metric"], label(t["metric"])) for t in up))
            say.append(f"{name} supplies {_and(what)} (" + "; ".join(_effect(t, lever) for t in up) + ")")
        for t in through:
            alone, with_other = t["alone"][lever], t["with_other"][lever]
            say.append(
                f"{name} moves {label(t['metric'])} only together with {other[lever]}: "
                f"{alone[0]:+.1f} points alone (95 % interval {alone[1]:+.1f} to {alone[2]:+.1f}), "
                f"{with_other[0]:+.1f} with {other[lever]} ({with_other[1]:+.1f} to {with_other[2]:+.1f})"
            )
        if down:
            say.append(
                f"{name} works against "
                + _and([label(t["metric"]) for t in down])
                + " ("
                + "; ".join(_effect(t, lever) for t in down)
                + ")"
            )
        if not up and not down and not through:
            say.append(f"{name} makes no clear difference (" + "; ".join(_effect(t, lever) for t in table) + ")")
    text = ". ".join(s[0].upper() + s[1:] for s in say) + "."
    facts = next((t for t in table if t["metric"] == "answer"), None)
    if facts:
        r, f = facts["retrieval"], facts["fine-tuning"]
        winner = "retrieval" if r[1] > 0 and r[0] > f[0] else "fine-tuning" if f[1] > 0 and f[0] > r[0] else None
        if winner and not _only_through_other(facts, winner):
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
                f"{label(t['metric'])} (retrieval's effect is {t['interaction'][0]:+.1f} points different on the "
                "fine-tuned model)"
                for t in mixed
            )
            + "."
        )
    return text


def _only_through_other(t: dict, lever: str) -> bool:
    """The lever does nothing clear alone but clearly helps on top of the other lever."""
    alone, with_other = t["alone"][lever], t["with_other"][lever]
    return alone[1] <= 0 and with_other[1] > 0


def _effect(t: dict, lever: str) -> str:
    d, lo, hi = t[lever]
    return f"{d:+.1f} points of {label(t['metric'])}, 95 % interval {lo:+.1f} to {hi:+.1f}"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
