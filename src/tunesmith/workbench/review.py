"""Blind expert review: pairs of outputs for the same held-out prompt, names hidden, sides shuffled;
what the ratings say (win rates with Wilson intervals, a Bradley–Terry ranking, Cohen's and
Fleiss' kappa, agreement with the automatic metric); CSV and TRL DPO exports; and the join into
the compare report (results.json["expert_review"], a section in report.html).

    pairs = ensure_pairs(con, run_job, samples, results)
    pair, done, total = next_pair(con, run_job, "Ana")
    rate(con, pair["id"], "Ana", "A", tags=["terminology"], comment="")
    summary = summarise(con, run_job, samples, results); join_report(compare_dir, summary)

Each reviewer sees every pair once, in an order and with sides drawn from a hash of their name and
the pair, so resuming later shows the same screen and the server never trusts the browser about
which arm was on which side.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import itertools
import json
import math
import os
import random
import threading
import time
from pathlib import Path

from tunesmith import rundir
from tunesmith.workbench import db

CHOICES = {"A": "A is better", "B": "B is better", "tie": "tie", "both_bad": "both bad"}
TAGS = ("terminology", "template", "accuracy", "tone")
MARK = ("<!-- tunesmith:expert-review -->", "<!-- /tunesmith:expert-review -->")


# ------------------------------------------------------------------------------------ statistics


def wilson(k: float, n: float, z: float = 1.959964) -> tuple[float, float, float]:
    """Share k/n with its Wilson score interval (95 % by default). (nan, 0, 1) when n is 0."""
    if n <= 0:
        return math.nan, 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(
    wins: dict[tuple[str, str], float], arms: list[str], prior: float = 0.5, iters: int = 10_000, tol: float = 1e-12
) -> dict[str, float]:
    """Bradley–Terry strengths (summing to 1) by Hunter's (2004) MM iteration.

    wins[(i, j)]: times i beat j (a tie counts half to each). `prior` adds that many virtual wins
    each way between every two arms that met, so an arm that won (or lost) everything keeps a
    finite strength; prior=0 is the plain maximum-likelihood fit.
    """
    w = {(i, j): wins.get((i, j), 0.0) for i in arms for j in arms if i != j}
    met = {frozenset(k) for k, v in w.items() if v > 0}
    for i, j in w:
        if frozenset((i, j)) in met:
            w[(i, j)] += prior
    n = {(i, j): w[(i, j)] + w[(j, i)] for i, j in w}
    total_wins = {i: sum(w[(i, j)] for j in arms if j != i) for i in arms}
    p = {i: 1.0 / len(arms) for i in arms}
    for _ in range(iters):
        new = {}
        for i in arms:
            denom = sum(n[(i, j)] / (p[i] + p[j]) for j in arms if j != i and n[(i, j)] > 0)
            new[i] = total_wins[i] / denom if denom > 0 else p[i]
        s = sum(new.values()) or 1.0
        new = {i: v / s for i, v in new.items()}
        if max(abs(new[i] - p[i]) for i in arms) < tol:
            return new
        p = new
    return p


def cohen_kappa(a: list, b: list) -> float | None:
    """Cohen's kappa of two raters' labels for the same items; None when chance agreement is total."""
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty lists of labels")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    cats = set(a) | set(b)
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(counts: list[list[int]]) -> float | None:
    """Fleiss' kappa from an items × categories table of how many raters chose each category
    (every item rated by the same number of raters, at least 2)."""
    if not counts:
        raise ValueError("fleiss_kappa needs at least one item")
    raters = sum(counts[0])
    if raters < 2 or any(sum(row) != raters for row in counts):
        raise ValueError("fleiss_kappa needs the same number (>= 2) of ratings for every item")
    items = len(counts)
    p_j = [sum(row[j] for row in counts) / (items * raters) for j in range(len(counts[0]))]
    p_i = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts]
    p_bar, p_e = sum(p_i) / items, sum(p * p for p in p_j)
    return None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)


# ------------------------------------------------------------------------------------ pairs


def review_arms(results: dict, limit: int = 3) -> list[str]:
    """The arms reviewers compare: the best fine-tuned arm, the run it is compared against (compare.against_run:
    the SFT run a preference run started from), the best arm that needs no training (the verdict's
    reference), the recommendation, then zero-shot as a floor — at most `limit`, all that ran."""
    ok = [n for n, a in results["arms"].items() if a.get("status") == "ok"]
    v = results.get("verdict") or {}
    other = (results.get("against_run") or {}).get("arm")
    wanted = [v.get("best_tuned"), other, v.get("reference"), v.get("recommend"), "zero-shot", *ok]
    return list(dict.fromkeys(n for n in wanted if n in ok))[:limit]


def ensure_pairs(con, run_job: int, samples: list[dict], results: dict) -> list[dict]:
    """Every (example, arm, arm) pair of the review arms, created once per run."""
    arms = review_arms(results)
    rows = [
        (run_job, s["index"], x, y)
        for s in samples
        for x, y in itertools.combinations(arms, 2)
        if x in s["outputs"] and y in s["outputs"]
    ]
    con.executemany("INSERT OR IGNORE INTO pairs (run_job, example, arm_x, arm_y) VALUES (?,?,?,?)", rows)
    return db.all_(con, "SELECT * FROM pairs WHERE run_job=? ORDER BY id", run_job)


def _digest(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def order_for(reviewer: str, pair_ids: list[int]) -> list[int]:
    ids = sorted(pair_ids)
    random.Random(_digest("order", reviewer)).shuffle(ids)
    return ids


def sides(reviewer: str, pair: dict) -> tuple[str, str]:
    """(arm shown as A, arm shown as B) for this reviewer: a coin per reviewer and pair."""
    x, y = pair["arm_x"], pair["arm_y"]
    return (y, x) if _digest("side", reviewer, pair["id"]) & 1 else (x, y)


def next_pair(con, run_job: int, reviewer: str, skip: int | None = None) -> tuple[dict | None, int, int]:
    """(the reviewer's next unrated pair, pairs rated, pairs in all)."""
    pairs = {p["id"]: p for p in db.all_(con, "SELECT * FROM pairs WHERE run_job=?", run_job)}
    rated = {
        r["pair"]
        for r in db.all_(
            con,
            "SELECT r.pair FROM ratings r JOIN pairs p ON p.id=r.pair WHERE p.run_job=? AND r.reviewer=?",
            run_job,
            reviewer,
        )
    }
    left = [pid for pid in order_for(reviewer, list(pairs)) if pid not in rated]
    if not left:
        return None, len(rated), len(pairs)
    pick = next((pid for pid in left if pid != skip), left[0])  # a skipped pair comes back when it is the last
    return pairs[pick], len(rated), len(pairs)


def rate(
    con,
    pair_id: int,
    reviewer: str,
    choice: str,
    tags: list[str] = (),
    comment: str = "",
    invitation: int | None = None,
) -> dict:
    """Store (or replace) this reviewer's rating of the pair; returns the stored row. `invitation`:
    the invitation a reviewer signed in with (their name is the invitation's)."""
    from tunesmith import UserError

    if choice not in CHOICES:
        raise UserError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}.")
    bad = [t for t in tags if t not in TAGS]
    if bad:
        raise UserError(f"unknown tag(s) {', '.join(bad)}; tags are {', '.join(TAGS)}.")
    pair = db.one(con, "SELECT * FROM pairs WHERE id=?", pair_id)
    if pair is None:
        raise UserError(f"no pair {pair_id}.")
    a, b = sides(reviewer, pair)
    winner = {"A": a, "B": b}.get(choice)
    con.execute(
        "INSERT INTO ratings (pair, reviewer, shown_a, choice, winner, tags, comment, created, invitation) "
        "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (pair, reviewer) DO UPDATE SET shown_a=excluded.shown_a, "
        "choice=excluded.choice, winner=excluded.winner, tags=excluded.tags, comment=excluded.comment, "
        "created=excluded.created, invitation=excluded.invitation",
        (pair_id, reviewer, a, choice, winner, ",".join(tags), comment[:2000], time.time(), invitation),
    )
    return db.one(con, "SELECT * FROM ratings WHERE pair=? AND reviewer=?", pair_id, reviewer)


def ratings(con, run_job: int) -> list[dict]:
    return db.all_(
        con,
        "SELECT r.*, p.example, p.arm_x, p.arm_y, p.kind FROM ratings r JOIN pairs p ON p.id=r.pair "
        "WHERE p.run_job=? ORDER BY r.id",
        run_job,
    )


def _label(r: dict) -> str:
    """The rating as the same label whatever side each arm was shown on."""
    if r["winner"] is None:
        return r["choice"]  # tie or both_bad
    return "x" if r["winner"] == r["arm_x"] else "y"


# ------------------------------------------------------------------------------------ summary


def summarise(con, run_job: int, samples: list[dict], results: dict) -> dict:
    rows = ratings(con, run_job)
    arms = review_arms(results)
    primary = results.get("primary_metric", "chrf")
    by_example = {s["index"]: s for s in samples}

    matchups = []
    wins: dict[tuple[str, str], float] = {}
    for x, y in itertools.combinations(arms, 2):
        rs = [r for r in rows if {r["arm_x"], r["arm_y"]} == {x, y}]
        xw = sum(r["winner"] == x for r in rs)
        yw = sum(r["winner"] == y for r in rs)
        ties = sum(r["choice"] == "tie" for r in rs)
        bad = sum(r["choice"] == "both_bad" for r in rs)
        rate_, lo, hi = wilson(xw, xw + yw)
        matchups.append(
            {
                "x": x,
                "y": y,
                "ratings": len(rs),
                "x_wins": xw,
                "y_wins": yw,
                "ties": ties,
                "both_bad": bad,
                "x_win_rate": rate_,
                "lo": lo,
                "hi": hi,
            }
        )
        wins[(x, y)] = xw + ties / 2
        wins[(y, x)] = yw + ties / 2
    strengths = bradley_terry(wins, arms) if rows else {a: 1 / len(arms) for a in arms} if arms else {}
    ranking = sorted(({"arm": a, "strength": s} for a, s in strengths.items()), key=lambda d: -d["strength"])

    cohen, fleiss = agreement(rows)

    # agreement with the automatic metric: does the expert's winner score higher on it?
    agree = n = 0
    for r in rows:
        if r["winner"] is None:
            continue
        loser = r["arm_y"] if r["winner"] == r["arm_x"] else r["arm_x"]
        outs = by_example[r["example"]]["outputs"]
        sw, sl = (outs[a]["metrics"].get(primary) for a in (r["winner"], loser))
        if sw is None or sl is None or sw == sl:
            continue
        n += 1
        agree += sw > sl
    share, lo, hi = wilson(agree, n)
    summary = {
        "reviewers": sorted({r["reviewer"] for r in rows}),
        "ratings": len(rows),
        "pairs": db.one(con, "SELECT COUNT(*) AS n FROM pairs WHERE run_job=?", run_job)["n"],
        "arms": arms,
        "matchups": matchups,
        "bradley_terry": ranking,
        "cohen": cohen,
        "fleiss": fleiss,
        "metric_agreement": {"metric": primary, "decisive": n, "agree": agree, "share": share, "lo": lo, "hi": hi},
        "tags": {t: sum(t in r["tags"].split(",") for r in rows) for t in TAGS},
    }
    summary["sentence"] = verdict_sentence(summary, results)
    return summary


def agreement(rows: list[dict]) -> tuple[list[dict], dict | None]:
    """(Cohen's kappa for every two reviewers on the pairs both rated, Fleiss' kappa over all of
    them on the pairs all rated, or None) from rating rows as ratings() returns them."""
    by_rater: dict[str, dict[int, str]] = {}
    for r in rows:
        by_rater.setdefault(r["reviewer"], {})[r["pair"]] = _label(r)
    cohen = []
    for a, b in itertools.combinations(sorted(by_rater), 2):
        common = sorted(set(by_rater[a]) & set(by_rater[b]))
        if len(common) >= 2:
            k = cohen_kappa([by_rater[a][p] for p in common], [by_rater[b][p] for p in common])
            cohen.append(
                {
                    "a": a,
                    "b": b,
                    "pairs": len(common),
                    "kappa": k,
                    "agree": sum(by_rater[a][p] == by_rater[b][p] for p in common) / len(common),
                }
            )
    fleiss = None
    if len(by_rater) >= 3:
        common = sorted(set.intersection(*(set(v) for v in by_rater.values())))
        if len(common) >= 2:
            cats = ["x", "y", "tie", "both_bad"]
            table = [[sum(v[p] == c for v in by_rater.values()) for c in cats] for p in common]
            fleiss = {"raters": len(by_rater), "pairs": len(common), "kappa": fleiss_kappa(table)}
    return cohen, fleiss


def verdict_sentence(summary: dict, results: dict) -> str:
    """Whether the experts back the metrics' recommendation, in one sentence."""
    v = results.get("verdict") or {}
    rec, ref = v.get("recommend"), v.get("reference")
    if not summary["ratings"]:
        return "No expert ratings yet."
    if rec == ref or rec is None or ref is None:
        top = summary["bradley_terry"][0]["arm"]
        return f"Experts rank {top} first of {', '.join(summary['arms'])}; the verdict recommends {rec}."
    m = next((m for m in summary["matchups"] if {m["x"], m["y"]} == {rec, ref}), None)
    if m is None or m["x_wins"] + m["y_wins"] == 0:
        return f"The experts' ratings do not yet compare {rec} with {ref}."
    rw = m["x_wins"] if m["x"] == rec else m["y_wins"]
    n = m["x_wins"] + m["y_wins"]
    share, lo, hi = wilson(rw, n)
    stat = f"{rec} won {rw} of {n} decisive ratings against {ref} ({share:.0%}, 95 % interval {lo:.0%}–{hi:.0%})"
    if hi < 0.5:
        return (
            f"Experts disagree with the metrics: {stat}, so reviewers prefer {ref}; "
            f"weigh this before acting on the recommendation."
        )
    if lo > 0.5:
        return f"Experts agree with the metrics: {stat}."
    return f"Experts neither confirm nor contradict the metrics yet: {stat}; more ratings would settle it."


# ------------------------------------------------------------------------------------ exports


def cell(value) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ tab or CR would be read as a
    formula (OWASP's CSV injection rule), so it gets a leading apostrophe."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(con, run_job: int, samples: list[dict]) -> str:
    by_example = {s["index"]: s for s in samples}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["reviewer", "example_id", "task", "arm_a", "arm_b", "choice", "winner", "tags", "comment", "rated_at"])
    for r in ratings(con, run_job):
        meta = by_example.get(r["example"], {}).get("meta") or {}
        other = r["arm_y"] if r["shown_a"] == r["arm_x"] else r["arm_x"]
        w.writerow(
            cell(v)
            for v in [
                r["reviewer"],
                meta.get("id", r["example"]),
                meta.get("task", ""),
                r["shown_a"],
                other,
                r["choice"],
                r["winner"] or "",
                r["tags"],
                r["comment"],
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["created"])),
            ]
        )
    return buf.getvalue()


def to_dpo(con, run_job: int, samples: list[dict], kind: str = "eval") -> str:
    """Preference pairs in TRL's conversational DPO format, one per pair the reviewers decided:
    {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}.
    A pair counts when more of its ratings pick one arm than the other (ties and 'both bad' decide nothing).
    kind: "eval" pairs (held-out prompts: for judging, never for training) or "train" pairs (a collection's)."""
    by_example = {s["index"]: s for s in samples}
    votes: dict[int, dict] = {}
    for r in ratings(con, run_job):
        if r["kind"] != kind:
            continue
        v = votes.setdefault(r["pair"], {"row": r, r["arm_x"]: 0, r["arm_y"]: 0})
        if r["winner"]:
            v[r["winner"]] += 1
    lines = []
    for v in votes.values():
        r = v["row"]
        x, y = r["arm_x"], r["arm_y"]
        if v[x] == v[y]:
            continue
        chosen, rejected = (x, y) if v[x] > v[y] else (y, x)
        s = by_example[r["example"]]
        lines.append(
            json.dumps(
                {
                    "prompt": s["prompt"],
                    "chosen": [{"role": "assistant", "content": s["outputs"][chosen]["text"]}],
                    "rejected": [{"role": "assistant", "content": s["outputs"][rejected]["text"]}],
                },
                ensure_ascii=False,
            )
        )
    return "".join(line + "\n" for line in lines)


# ------------------------------------------------------------------------------------ the report


def join_report(compare_dir: Path, summary: dict) -> None:
    """Put the experts' results into results.json (key "expert_review"; the verdict gains "experts")
    and into report.html (a section after the verdict). Rewrites replace the previous section."""
    compare_dir = Path(compare_dir)
    path = compare_dir / rundir.RESULTS
    results = json.loads(path.read_text())
    results["expert_review"] = json_safe(summary)
    results.setdefault("verdict", {})["experts"] = summary["sentence"]
    _atomic_write(path, json.dumps(results, indent=2) + "\n")
    page = compare_dir / rundir.REPORT_HTML
    if page.exists():
        text = page.read_text(encoding="utf-8")
        start, end = text.find(MARK[0]), text.find(MARK[1])
        if start >= 0 and end > start:
            text = text[:start] + text[end + len(MARK[1]) :]
        at = text.find("<h2>")
        at = at if at >= 0 else text.find("</body>")
        text = text[:at] + MARK[0] + section_html(summary) + MARK[1] + text[at:]
        _atomic_write(page, text)


def section_html(s: dict) -> str:
    e = html.escape
    pct = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"  # noqa: E731
    num = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    out = [
        f"<h2>Expert review (blind)</h2><p class=verdict>{e(s['sentence'])}</p>",
        f"<p>{s['ratings']} ratings by {len(s['reviewers'])} reviewer(s) ({e(', '.join(s['reviewers']))}) of "
        f"{s['pairs']} pairs; each pair is one held-out prompt answered by two arms, names hidden, sides shuffled.</p>",
        "<table><tr><th>arm X</th><th>arm Y</th><th>ratings</th><th>X wins</th><th>Y wins</th><th>ties</th>"
        "<th>both bad</th><th>X win rate (decisive)</th><th>95 % Wilson interval</th></tr>",
    ]
    for m in s["matchups"]:
        out.append(
            f"<tr><td>{e(m['x'])}</td><td>{e(m['y'])}</td><td>{m['ratings']}</td><td>{m['x_wins']}</td>"
            f"<td>{m['y_wins']}</td><td>{m['ties']}</td><td>{m['both_bad']}</td><td>{pct(m['x_win_rate'])}</td>"
            f"<td>{pct(m['lo'])}–{pct(m['hi'])}</td></tr>"
        )
    out.append(
        "</table><p><b>Bradley–Terry ranking:</b> "
        + ", ".join(f"{i + 1}. {e(r['arm'])} ({r['strength']:.2f})" for i, r in enumerate(s["bradley_terry"]))
        + "</p>"
    )
    for c in s["cohen"]:
        out.append(
            f"<p>Cohen's kappa {e(c['a'])} vs {e(c['b'])}: {num(c['kappa'])} on {c['pairs']} shared pairs "
            f"(raw agreement {pct(c['agree'])}).</p>"
        )
    if s["fleiss"]:
        f = s["fleiss"]
        out.append(
            f"<p>Fleiss' kappa over {f['raters']} reviewers: {num(f['kappa'])} on {f['pairs']} pairs all rated.</p>"
        )
    m = s["metric_agreement"]
    out.append(
        f"<p>Agreement with {e(m['metric'])}: the expert's choice scores higher on it in {m['agree']} of "
        f"{m['decisive']} decisive ratings ({pct(m['share'])}, 95 % interval {pct(m['lo'])}–{pct(m['hi'])}).</p>"
    )
    return "".join(out)


def json_safe(obj):
    """Floats rounded, NaN and infinity as null: what JSON can hold."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
