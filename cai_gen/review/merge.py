"""Apply expert verdicts to a run's pairs and measure how much the experts agree.

`python -m cai_gen.review merge RUN_DIR` writes RUN_DIR/reviewed/: the final dataset (same columns as
preferences/ plus expert_reviewed, reviewer, reviewed_at, verdict), its KTO rows, the pairs experts dropped,
the items they disagree on, and review.json with the counts and agreement that the card and summary show.

Several reviewers on one item: each reviewer's latest verdict is a vote, the majority verdict applies. A tie
is not guessed: the item is `disputed`, left out of the dataset and listed in disputed.jsonl until another
reviewer breaks it. A verdict counts only on the text it was given on (db.current): an item whose text a rerun
changed, with verdicts only on the old text, is `stale` and merged unreviewed until someone reviews the new
text, and so is an item whose stored text does not match the run's pair. Verdicts on retired items (no longer
routed) stay in review.sqlite and are not applied.

Trust: agreement between reviewers (percent, Cohen's kappa), and per reviewer the position bias of blind
verdicts and the share given too fast (under db.FAST seconds) to have read both answers.
"""
from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from math import comb
from pathlib import Path
from statistics import median

from .. import checks as checks_mod, rundir, store
from ..backends import last_text as text
from ..errors import UserError
from ..yamlio import jsonl_rows
from . import db

# position: what each deciding reviewer saw as A ("revision" / "original"; "labelled" for the labelled view or
# an import), in the order of `reviewer`; votes: every current vote on the pair, with its seconds
# ratings: {guideline: {"chosen": mean, "rejected": mean}} over the current votes' 1-5 ratings of the text written
# on that side (an edit's chosen text is the expert's own: no rating describes it)
COLUMNS = ["expert_reviewed", "reviewer", "reviewed_at", "verdict", "position", "votes", "ratings"]
NO_PAIR = ("reject", "tie")  # neither usable, or both fine: no preference to train on, the pair is dropped


def decide(votes: dict[str, dict]) -> tuple[str, list[str], dict] | None:
    """(verdict, reviewers who gave it, their latest vote) by majority; None on a tie."""
    counts = Counter(v["verdict"] for v in votes.values()).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    verdict = counts[0][0]
    who = sorted(r for r, v in votes.items() if v["verdict"] == verdict)
    last = max((votes[r] for r in who), key=lambda v: v["at"])
    return verdict, who, last


# ---- how far the verdicts can be trusted (status, the admin's /api/stats, review.json and the card) ----

def kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when chance agreement is total (pe = 1)."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    pe = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return None if pe == 1 else round((po - pe) / (1 - pe), 4)


def agreement(cur: dict[str, dict[str, dict]]) -> dict:
    """Percent agreement and Cohen's kappa for every pair of reviewers who saw the same items; overall: the
    share of agreeing (item, reviewer pair) comparisons and the mean pairwise kappa (Light's kappa)."""
    cur = {i: {r: v for r, v in votes.items() if v["verdict"] != "skip"} for i, votes in cur.items()}  # no verdict
    reviewers = sorted({r for votes in cur.values() for r in votes})
    pairs, same, total = [], 0, 0
    for ra, rb in combinations(reviewers, 2):
        shared = [i for i, votes in cur.items() if ra in votes and rb in votes]
        if not shared:
            continue
        la = [cur[i][ra]["verdict"] for i in shared]
        lb = [cur[i][rb]["verdict"] for i in shared]
        agree = sum(x == y for x, y in zip(la, lb))
        same, total = same + agree, total + len(shared)
        pairs.append({"a": ra, "b": rb, "items": len(shared), "agreement": round(agree / len(shared), 4),
                      "kappa": kappa(la, lb)})
    ks = [p["kappa"] for p in pairs if p["kappa"] is not None]
    return {"reviewers": reviewers, "items_multi": sum(len(v) > 1 for v in cur.values()), "comparisons": total,
            "agreement": round(same / total, 4) if total else None,
            "kappa": round(sum(ks) / len(ks), 4) if ks else None, "pairs": pairs}


def binom_p(k: int, n: int) -> float | None:
    """Two-sided exact binomial test of k successes in n against p = 0.5 (None for n = 0)."""
    if not n:
        return None
    tail = sum(comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return round(min(1.0, 2 * tail), 4)


def chose_a(v: dict) -> bool | None:
    """Whether a blind A-or-B verdict picked the answer shown as A (None: not such a verdict)."""
    if v.get("shown_first") is None or v["verdict"] not in ("accept", "swap"):
        return None
    return (v["verdict"] == "accept") == (v["shown_first"] == "revision")


def too_fast(v: dict) -> bool:
    return v.get("seconds") is not None and v["seconds"] < db.FAST


def per_reviewer(cur: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """{reviewer: counts of their current verdicts, blind A-or-B choices (a_share: 0.5 is no position bias;
    position_p: exact binomial test against 0.5), too_fast (under db.FAST seconds, of the timed ones)}."""
    by: dict[str, list[dict]] = {}
    for votes in cur.values():
        for r, v in votes.items():
            by.setdefault(r, []).append(v)
    out = {}
    for r, vs in sorted(by.items()):
        picks = [c for c in map(chose_a, vs) if c is not None]
        timed = [v["seconds"] for v in vs if v.get("seconds") is not None]
        fast = sum(map(too_fast, vs))
        out[r] = {"verdicts": len(vs), "by_verdict": dict(Counter(v["verdict"] for v in vs)),
                  "blind_ab": len(picks), "chose_a": sum(picks),
                  "a_share": round(sum(picks) / len(picks), 4) if picks else None,
                  "position_p": binom_p(sum(picks), len(picks)),
                  "timed": len(timed), "too_fast": fast,
                  "too_fast_share": round(fast / len(timed), 4) if timed else None,
                  "median_seconds": round(median(timed), 1) if timed else None}
    return out


# ---- applying the verdicts ----

class Recheck:
    """The run's inline checks, to run on an expert's edited answer: the constitution's (constitution.json) and,
    loaded only when an edit needs them, each prompt row's own (the run's prompts, reloaded from config.json)."""

    def __init__(self, run_dir: Path):
        from ..constitution import Constitution

        self.run_dir = run_dir
        f = run_dir / rundir.CONSTITUTION
        try:
            data = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
            const = Constitution.model_validate({k: v for k, v in data.items() if k != "ref"}) if data else None
        except ValueError as e:
            raise UserError(f"{f}: cannot read the run's constitution ({type(e).__name__})") from None
        self.const = {c.id: c for p in const.principles for c in p.checks} if const else {}
        self.own: dict[str, dict] | None = None

    def _prompt_checks(self, pref: dict) -> dict:
        if self.own is None:
            from .. import prompts as prompts_mod

            p = store.run_config(self.run_dir).get("prompts") or {}
            try:
                recs = prompts_mod.load(p.get("name"), p.get("path"), p.get("dataset"), p.get("split", "train"),
                                        p.get("column", "prompt"), p.get("id_column"), p.get("domain_column"), None,
                                        store.run_config(self.run_dir).get("include_path") or (),
                                        messages_column=p.get("messages_column"), config=p.get("config"),
                                        revision=p.get("revision"), data_files=p.get("data_files"),
                                        keep_duplicates=p.get("keep_duplicates", False), kind=p.get("kind"))
            except UserError as e:
                raise UserError(f"{self.run_dir}: pair {pref['id']!r}: the expert's edit must pass its prompt row's "
                                f"own checks, and the run's prompts cannot be reloaded ({e})") from None
            self.own = {r.id: {c.id: c for c in r.checks} for r in recs}
        return self.own.get(str(pref.get("prompt_id")), {})

    def __call__(self, pref: dict, entry: dict, answer: str) -> bool | None:
        """Does `answer` pass the check of this `checks` entry? None: a judge check (asked of no edit)."""
        c = (self._prompt_checks(pref) if entry["principle"] == "prompt" else self.const).get(entry["id"])
        if c is None:
            raise UserError(f"{self.run_dir}: pair {pref['id']!r}: check {entry['id']!r} is not in the run's "
                            "constitution or prompts, so the expert's edit cannot be checked")
        if c.needs_engine:
            return None
        msgs = pref["prompt"]
        ctx = checks_mod.Context("\n".join(m["content"] for m in msgs if m["role"] != "system"),
                                 {"domain": pref.get("domain") or ""})
        return c.passes(answer, ctx)


def relabel(pref: dict, chosen: str, rejected: str, check: Recheck) -> dict:
    """`checks` and `verified` of the pair as now written: a side keeps the results of the text it held in the
    run's pair (a swap swaps them), a text the pair did not hold (an expert's edit) is checked again."""
    held = {text(pref["chosen"]): "revision", text(pref["rejected"]): "original"}
    out = []
    for c in pref.get("checks") or []:
        r = dict(c)
        for side, t in (("revision", chosen), ("original", rejected)):
            r[side] = c[held[t]] if t in held else check(pref, c, t)
        out.append(r)
    return {"checks": out, "verified": store.verified(out)}


def _unreviewed(pref: dict) -> dict:
    return {**pref, "expert_reviewed": False, "reviewer": None, "reviewed_at": None, "verdict": None,
            "position": None, "votes": [], "ratings": None}


def _mean(xs: list) -> float | None:
    return round(sum(xs) / len(xs), 2) if xs else None


def ratings(votes: dict[str, dict], sides: dict[str, str | None]) -> dict | None:
    """Mean rating per guideline of each written side; sides: {"chosen"|"rejected": "revision"|"original"|None}."""
    names = sorted({g for v in votes.values() for s in (v.get("ratings") or {}).values() for g in s})
    return {g: {k: _mean([v["ratings"][a][g] for v in votes.values() if g in ((v.get("ratings") or {}).get(a) or {})])
                if a else None for k, a in sides.items()} for g in names} or None


def rating_summary(cur: dict[str, dict[str, dict]]) -> dict:
    """{guideline: {"revision": mean, "original": mean, "n": ratings, "pairs", "agreement", "within_one"}} over
    every current vote (the card's table). Agreement per guideline: over every two reviewers who rated the same
    answer of the same item on it, the share giving the same score (`agreement`) and a score at most one apart
    (`within_one`); `pairs` counts those comparisons (None shares: no answer rated by two reviewers)."""
    got: dict[str, dict[str, list]] = {}
    pairs: dict[str, list[int]] = {}  # guideline -> |score difference| of each two reviewers on one answer
    for votes in cur.values():
        for v in votes.values():
            for side, scores in (v.get("ratings") or {}).items():
                for g, n in scores.items():
                    got.setdefault(g, {"revision": [], "original": []})[side].append(n)
        for a, b in combinations(sorted(votes), 2):
            ra, rb = votes[a].get("ratings") or {}, votes[b].get("ratings") or {}
            for side in set(ra) & set(rb):
                for g in set(ra[side]) & set(rb[side]):
                    pairs.setdefault(g, []).append(abs(ra[side][g] - rb[side][g]))

    def share(g: str, most: int) -> float | None:
        d = pairs.get(g) or []
        return round(sum(x <= most for x in d) / len(d), 4) if d else None

    return {g: {"revision": _mean(x["revision"]), "original": _mean(x["original"]),
                "n": len(x["revision"]) + len(x["original"]), "pairs": len(pairs.get(g) or []),
                "agreement": share(g, 0), "within_one": share(g, 1)} for g, x in sorted(got.items())}


def _votes(votes: dict[str, dict]) -> list[dict]:
    return [{"reviewer": r, "verdict": v["verdict"], "shown_first": v.get("shown_first"),
             "seconds": v.get("seconds"), "too_fast": too_fast(v)} for r, v in sorted(votes.items())]


def apply(run_dir: Path, ignore_too_fast: bool = False) -> dict:
    """Write RUN_DIR/reviewed/ and return its review.json numbers. `ignore_too_fast`: verdicts given in under
    db.FAST seconds are not votes (they stay in review.sqlite and in the per-reviewer counts)."""
    run_dir = Path(run_dir)
    conn = db.open_run(run_dir, create=False)
    try:
        items = {it["id"]: it for it in db.items(conn)}
        cur = db.current(conn)  # only verdicts on each queued item's current text
        outdated = db.outdated(conn)
        retired = db.retired(conn)
        orphans = {i for (i,) in conn.execute("SELECT DISTINCT item_id FROM verdicts")} & set(retired)
        n_verdicts = conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    finally:
        conn.close()
    prefs = jsonl_rows(run_dir / rundir.PREFS)  # a bad line is an error naming it
    rows, dropped, disputed = [], [], []
    check = Recheck(run_dir)
    status = Counter()
    ignored = 0
    for pref in prefs:
        it, votes = items.get(pref["id"]), cur.get(pref["id"])
        if votes and ignore_too_fast:
            kept = {r: v for r, v in votes.items() if not too_fast(v)}
            ignored += len(votes) - len(kept)
            votes = kept or None
        if votes:  # a skip ("unsure") is no verdict: the item stays pending until someone decides it
            votes = {r: v for r, v in votes.items() if v["verdict"] != "skip"} or None
        if it is None:
            rows.append(_unreviewed(pref))
            continue
        chosen, rejected = text(pref["chosen"]), text(pref["rejected"])
        if {chosen, rejected} != {it["original"], it["revision"]}:
            status["stale"] += 1
            rows.append(_unreviewed(pref))
            continue
        if not votes:
            status["stale" if pref["id"] in outdated else "pending"] += 1
            rows.append(_unreviewed(pref))
            continue
        decision = decide(votes)
        if decision is None:
            status["disputed"] += 1
            disputed.append({"id": pref["id"], "votes": votes, "item": it})
            continue
        verdict, who, last = decision
        status[verdict] += 1
        mark = {"expert_reviewed": True, "reviewer": ",".join(who), "reviewed_at": last["at"], "verdict": verdict,
                "position": ",".join(votes[r].get("shown_first") or "labelled" for r in who), "votes": _votes(votes)}
        sides = {"accept": ("revision", "original"), "swap": ("original", "revision"), "edit": (None, "original"),
                 "reject": ("revision", "original"), "tie": ("revision", "original")}[verdict]
        mark["ratings"] = ratings(votes, dict(zip(("chosen", "rejected"), sides)))
        if verdict in NO_PAIR:
            dropped.append({"id": pref["id"], **mark, "votes": votes, "item": it})
            continue
        answer = {"accept": (it["revision"], it["original"]), "swap": (it["original"], it["revision"]),
                  "edit": (last["chosen"], it["original"])}[verdict]
        rows.append({**pref, "chosen": [{"role": "assistant", "content": answer[0]}],
                     "rejected": [{"role": "assistant", "content": answer[1]}],
                     **relabel(pref, *answer, check), **mark})
    out = run_dir / rundir.REVIEWED
    out.mkdir(exist_ok=True)
    ts = store.run_test_size(run_dir)
    rows = store.with_splits(rows, ts, str(run_dir / rundir.PREFS))
    # the gate's no-violation rows are no pairs (nothing to review) but are SFT and KTO rows of the run: carried
    # as they are, so reviewed/ is the run's whole dataset with the verdicts applied
    nv_file = run_dir / rundir.NO_VIOLATION
    unpaired = store.with_splits(list(jsonl_rows(nv_file)), ts, str(nv_file)) if nv_file.is_file() else []
    store.write_jsonl(out / rundir.DROPPED, dropped)
    store.write_jsonl(out / rundir.DISPUTED, disputed)
    store.write_dataset(out, rows, unpaired, store.PREF_COLUMNS + COLUMNS,
                        copies=store.run_config(run_dir).get("output", {}).get("save_dataset", True))
    summary = {"routed": len(items), "verdicts": n_verdicts, "rows": len(rows),
               "expert_reviewed": sum(r["expert_reviewed"] for r in rows),
               "decisions": {k: status.get(k, 0) for k in (*db.VERDICTS, "disputed", "pending", "stale")
                             if k != "skip"},  # a skip decides nothing
               "retired": len(retired), "orphaned": len(orphans), "agreement": agreement(cur),
               "reviewers": per_reviewer(cur), "fast_seconds": db.FAST, "ignore_too_fast": ignore_too_fast,
               "too_fast_ignored": ignored, "built_from": store.built_from(run_dir),
               "ratings": rating_summary(cur), "scale": list(db.SCALE)}
    store.atomic_write(out / rundir.REVIEW, json.dumps(summary, indent=2) + "\n")
    return summary
