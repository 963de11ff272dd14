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
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .. import store
from ..errors import UserError
from ..stats import read_jsonl
from . import db
from .route import text
from .stats import agreement, kappa, per_reviewer, too_fast  # noqa: F401  (kappa: merge.kappa is public)

# position: what each deciding reviewer saw as A ("revision" / "original"; "labelled" for the labelled view or
# an import), in the order of `reviewer`; votes: every current vote on the pair, with its seconds
COLUMNS = ["expert_reviewed", "reviewer", "reviewed_at", "verdict", "position", "votes"]


def decide(votes: dict[str, dict]) -> tuple[str, list[str], dict] | None:
    """(verdict, reviewers who gave it, their latest vote) by majority; None on a tie."""
    counts = Counter(v["verdict"] for v in votes.values()).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    verdict = counts[0][0]
    who = sorted(r for r, v in votes.items() if v["verdict"] == verdict)
    last = max((votes[r] for r in who), key=lambda v: v["at"])
    return verdict, who, last


def _unreviewed(pref: dict) -> dict:
    return {**pref, "expert_reviewed": False, "reviewer": None, "reviewed_at": None, "verdict": None,
            "position": None, "votes": []}


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
    try:
        prefs = read_jsonl(run_dir / "preferences.jsonl")
    except ValueError as e:
        raise UserError(f"{run_dir / 'preferences.jsonl'}: damaged ({e})") from None
    rows, dropped, disputed = [], [], []
    status = Counter()
    ignored = 0
    for pref in prefs:
        it, votes = items.get(pref["id"]), cur.get(pref["id"])
        if votes and ignore_too_fast:
            kept = {r: v for r, v in votes.items() if not too_fast(v)}
            ignored += len(votes) - len(kept)
            votes = kept or None
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
        if verdict == "reject":
            dropped.append({"id": pref["id"], **mark, "votes": votes, "item": it})
            continue
        answer = {"accept": (it["revision"], it["original"]), "swap": (it["original"], it["revision"]),
                  "edit": (last["chosen"], it["original"])}[verdict]
        rows.append({**pref, "chosen": [{"role": "assistant", "content": answer[0]}],
                     "rejected": [{"role": "assistant", "content": answer[1]}], **mark})
    out = run_dir / "reviewed"
    out.mkdir(exist_ok=True)
    rows = store.with_splits(rows, store.run_test_size(run_dir))
    kto = [k for r in rows for k in store.kto_rows(r)]
    sft = store.sft_rows(rows, [])
    store.write_jsonl(out / "preferences.jsonl", rows)
    store.write_jsonl(out / "kto.jsonl", kto)
    store.write_jsonl(out / "dropped.jsonl", dropped)
    store.write_jsonl(out / "disputed.jsonl", disputed)
    store.write_jsonl(out / "sft.jsonl", sft)
    if store.run_config(run_dir).get("output", {}).get("save_dataset", True):
        store.save_splits(out, rows, sft, kto, store.PREF_COLUMNS + COLUMNS)
    summary = {"routed": len(items), "verdicts": n_verdicts, "rows": len(rows),
               "expert_reviewed": sum(r["expert_reviewed"] for r in rows),
               "decisions": {k: status.get(k, 0) for k in (*db.VERDICTS, "disputed", "pending", "stale")},
               "retired": len(retired), "orphaned": len(orphans), "agreement": agreement(cur),
               "reviewers": per_reviewer(cur), "fast_seconds": db.FAST, "ignore_too_fast": ignore_too_fast,
               "too_fast_ignored": ignored}
    store.atomic_write(out / "review.json", json.dumps(summary, indent=2) + "\n")
    return summary
