"""Numbers for the report, computed from the run dir's own files (so `python -m cai_gen.report RUN_DIR`
gives the same figures as the end of the run, and a test can check them against the files)."""
from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

from . import judge as judge_mod
from . import rundir, store
from .backends import last_text
from .checks import desirable
from .store import run_config
from .yamlio import jsonl_rows

SIM_BINS = [i / 10 for i in range(11)]


def describe(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None}
    s = sorted(xs)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731  (nearest-rank, no interpolation)
    med = statistics.median(s)  # an even count's is the mean of two: 0.08424999999999999 without the round
    return {"n": len(s), "mean": round(statistics.fmean(s), 2), "median": round(med, 4) if isinstance(med, float) else med,
            "p10": q(0.1), "p90": q(0.9)}


def cohen_d(a: list[float], b: list[float]) -> float | None:
    """(mean a - mean b) / pooled standard deviation; None when it is undefined."""
    if len(a) < 2 or len(b) < 2:
        return None
    sd = ((statistics.variance(a) * (len(a) - 1) + statistics.variance(b) * (len(b) - 1)) / (len(a) + len(b) - 2)) ** 0.5
    return round((statistics.fmean(a) - statistics.fmean(b)) / sd, 3) if sd else None


def longer_chosen(cw: list[int], rw: list[int]) -> float | None:
    """What "the longer answer is chosen" alone scores on (chosen, rejected) word counts; ties count half."""
    if not cw:
        return None
    return round(sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(cw, rw)) / len(cw), 4)


def length_only(cw: list[int], rw: list[int]) -> tuple[list[float], str]:
    """Per pair, what a length rule alone scores (1, 0.5 on a tie, 0), and which rule: "longer" or "shorter" is
    chosen, whichever scores more over these pairs. Data whose chosen answer is mostly the shorter one teaches
    length as well as data whose chosen is mostly the longer: a one-sided control would call it beaten."""
    longer = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(cw, rw)]
    if sum(longer) >= len(longer) / 2:
        return longer, "longer"
    return [1.0 - x for x in longer], "shorter"


def cluster_bootstrap(xs: list[float], groups: list, n: int, seed: int) -> tuple[float, list[float]]:
    """Mean of xs and its percentile 95% CI, resampling whole groups (a prompt's pairs or answers together: they
    are not independent, and resampling them one by one gives a CI too narrow). The mean over the resampled
    groups' items is the same estimator as the point (items, not groups, weigh equally)."""
    import numpy as np

    ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    g = np.array([ids[k] for k in groups])
    a = np.asarray(xs, dtype=float)
    sums, counts = np.bincount(g, a, len(ids)), np.bincount(g, minlength=len(ids)).astype(float)
    pick = np.random.default_rng(seed).integers(0, len(ids), size=(n, len(ids)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    return float(a.mean()), [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def histogram(xs: list[float], bins: list[float]) -> list[int]:
    counts = [0] * (len(bins) - 1)
    for x in xs:
        i = min(max(0, int((x - bins[0]) / (bins[1] - bins[0]))), len(counts) - 1)
        counts[i] += 1
    return counts


class Gates:
    """Every gated critique's answer (kept, filtered and no-violation rows), counted as the rows stream by."""

    def __init__(self):
        self.per: dict[str, Counter] = {}  # principle -> the model's YES/NO counts
        self.checks: dict[str, Counter] = {}  # principle -> YES/NO of gates decided by its checks (no model asked)
        self.ps: list[float] = []          # P(YES) of each, for the plot

    def add(self, row: dict) -> None:
        for g in row.get("gate") or []:
            per = self.checks if g.get("by") == "checks" else self.per
            per.setdefault(g["principle"], Counter())[g["answer"]] += 1
            if g.get("p_yes") is not None:
                self.ps.append(g["p_yes"])


def gate_stats(gates: Gates, threshold: float | None) -> dict | None:
    """The model's YES/NO per principle, and a plain warning when it is one-sided: a weak model's gate can say YES
    (or NO) to nearly everything. Gates decided by a principle's checks are counted apart: they asked no model, so
    they say nothing of its gate."""
    per, ps = gates.per, gates.ps
    if not per and not gates.checks:
        return None
    yes = sum(c["YES"] for c in per.values())
    no = sum(c["NO"] for c in per.values())
    share_no = no / (yes + no) if yes + no else None
    by_checks = {k: {"YES": c["YES"], "NO": c["NO"]} for k, c in sorted(gates.checks.items())}
    warn = None
    if yes + no >= 10 and share_no < 0.05:
        warn = (f"the gate said YES to {100 * (1 - share_no):.0f}% of answers: on this model it barely filters, "
                "so nearly every answer is revised as if the gate were off")
    elif yes + no >= 10 and share_no > 0.95:
        warn = f"the gate said NO to {100 * share_no:.0f}% of answers: few pairs come out; check gate.threshold"
    return {"yes": yes, "no": no, "share_no": None if share_no is None else round(share_no, 4), "threshold": threshold,
            "per_principle": {k: {"YES": c["YES"], "NO": c["NO"]} for k, c in sorted(per.items())},
            "by_checks": by_checks,
            "p_yes": describe(ps), "warning": warn, "_p": ps}


class Checks:
    """Per check, over every row it applied to: originals failing it, kept pairs whose chosen answer passes it where
    the rejected one fails it (fixed), kept pairs whose chosen answer still fails it; per principle, revisions refused (still_violates, new_violation)."""

    def __init__(self):
        self.per: dict[str, Counter] = {}
        self.meta: dict[str, tuple[str, str]] = {}
        self.refused: dict[str, Counter] = {}
        self.verified = 0

    def add(self, row: dict, where: str) -> None:
        # a pair's sides are its written answers': after a judge swap the model's original is the chosen one
        orig = "revision" if where == "kept" and "judge_swapped" in (row.get("flags") or []) else "original"
        for c in row.get("checks") or []:
            k = self.per.setdefault(c["id"], Counter())
            self.meta[c["id"]] = (c["principle"], c["kind"])
            k["rows"] += 1
            k["original_fail"] += c[orig] is False
            if where == "kept":
                k["fixed"] += c["original"] is False and c["revision"] is True
                k["kept_still_fail"] += c["revision"] is False
        if where == "kept":
            self.verified += bool(row.get("verified"))
        if where == "rejected" and row.get("reason") in ("still_violates", "new_violation"):
            pid = (row.get("principle_ids") or ["?"])[-1]
            self.refused.setdefault(pid, Counter())[row["reason"]] += 1

    def stats(self, kept: int) -> dict | None:
        if not self.per:
            return None
        return {"checks": {i: {"principle": self.meta[i][0], "kind": self.meta[i][1], **dict(c)}
                           for i, c in sorted(self.per.items(), key=lambda kv: self.meta[kv[0]])},
                "refused": {p: dict(c) for p, c in sorted(self.refused.items())},
                "verified": self.verified, "verified_share": round(self.verified / kept, 4) if kept else None}


def rows(path: Path):
    """A run file's rows one at a time (none when it is absent): the report holds counters and lists of numbers,
    never the rows, so its memory is a small fraction of the files' (bench/scale.py)."""
    return jsonl_rows(path) if path.is_file() else iter(())


def compute(out: Path) -> dict:
    kept = filtered = unpaired = unpaired_failing = below = 0
    edits, cw, rw, cc, rc, sims_kept, sims_dropped, judged, margins = ([] for _ in range(9))
    gates, checks = Gates(), Checks()
    reasons, flags, principles, domains = Counter(), Counter(), Counter(), Counter()

    def common(r: dict) -> None:  # what every kind of row adds: its gate answers, judge verdict, reward margin
        gates.add(r)
        if r.get("judge"):
            judged.append(r["judge"]["outcome"])

    for p in rows(out / rundir.PREFS):
        kept += 1
        common(p)
        checks.add(p, "kept")
        if p.get("edit_ratio") is not None:
            edits.append(p["edit_ratio"])
        c, j = last_text(p["chosen"]), last_text(p["rejected"])
        cw.append(len(c.split()))
        rw.append(len(j.split()))
        cc.append(len(c))
        rc.append(len(j))
        if p.get("similarity") is not None:
            sims_kept.append(p["similarity"])
        if p.get("reward"):
            margins.append(p["reward"]["margin"])
        fl = p.get("flags", [])
        below += "reward_margin_low" in fl
        flags.update(re.sub(r"_r\d+$", "", f) for f in fl)
        principles.update(p["principle_ids"])
        domains[p.get("domain") or "none"] += 1
    # judge verdicts and reward margins list kept rows first, then filtered (the plots' order)
    for r in rows(out / rundir.REJECTED):
        filtered += 1
        common(r)
        checks.add(r, "rejected")
        if r.get("similarity") is not None:
            sims_dropped.append(r["similarity"])
        if r.get("reward"):
            margins.append(r["reward"]["margin"])
        below += "reward_margin_low" in r.get("flags", []) or r.get("reason") == "reward_margin_low"
        reasons[r["reason"]] += 1
    for u in rows(out / rundir.NO_VIOLATION):
        unpaired += 1
        # the gate said NO, but a check fails on the original (principles.choose=sample drew another principle):
        # written as KTO undesirable with no SFT row, so the card does not count it as an original kept
        unpaired_failing += not desirable(u, "original")
        gates.add(u)
        checks.add(u, "no_violation")
    gate = gate_stats(gates, (run_config(out).get("gate") or {}).get("threshold"))
    return {
        "kept": kept,
        "filtered": filtered,
        "no_violation": unpaired,
        "no_violation_failing": unpaired_failing,
        "gate": {k: v for k, v in gate.items() if k != "_p"} if gate else None,
        "checks": checks.stats(kept),
        "edit_ratio": {**describe(edits), "hist": histogram(edits, SIM_BINS), "bins": SIM_BINS},
        "reasons": dict(reasons.most_common()),
        "flags": dict(flags.most_common()),
        "principles": dict(principles.most_common()),
        "domains": dict(domains.most_common()),
        "length_words": {"chosen": describe(cw), "rejected": describe(rw)},
        "length_chars": {"chosen": describe(cc), "rejected": describe(rc)},
        # length bias check: DPO learns "longer is better" when chosen is systematically longer
        "chosen_longer": round(sum(c > r for c, r in zip(cw, rw)) / kept, 4) if kept else None,
        # what "the longer answer is chosen" alone scores (ties half), and the length gap in pooled SDs
        "length_only_accuracy": longer_chosen(cw, rw),
        "cohen_d": cohen_d(cw, rw),
        "similarity": {"kept": describe(sims_kept), "filtered": describe(sims_dropped),
                       "bins": SIM_BINS, "hist_kept": histogram(sims_kept, SIM_BINS),
                       "hist_filtered": histogram(sims_dropped, SIM_BINS)},
        "judge": judge_mod.rates(judged) if judged else None,
        "reward": {"margin": describe(margins), "below_threshold": below} if margins else None,
        # written by `python -m cai_gen.evaluate` (does DPO on the data beat the controls?)
        "eval": json.loads((out / rundir.EVAL / rundir.EVAL_JSON).read_text()) if (out / rundir.EVAL / rundir.EVAL_JSON).is_file() else None,
        # written by `python -m cai_gen.review merge` (counts and agreement of the expert verdicts)
        "review": json.loads((out / rundir.REVIEWED / rundir.REVIEW).read_text())
        if (out / rundir.REVIEWED / rundir.REVIEW).is_file() and store.reviewed_stale(out) is None else None,  # a stale one: none
        "_series": {"chosen_words": cw, "rejected_words": rw, "sims_kept": sims_kept, "sims_dropped": sims_dropped,
                    "margins": margins, "edit_ratio": edits, "p_yes": gate["_p"] if gate else []},
    }
