"""Numbers for the report, computed from the run dir's own files (so `python -m cai_gen.report RUN_DIR`
gives the same figures as the end of the run, and a test can check them against the files)."""
from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

from . import judge as judge_mod
from .store import run_config

SIM_BINS = [i / 10 for i in range(11)]


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def describe(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "mean": None, "median": None, "p10": None, "p90": None}
    s = sorted(xs)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731  (nearest-rank, no interpolation)
    return {"n": len(s), "mean": round(statistics.fmean(s), 2), "median": statistics.median(s),
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


def text(msgs: list[dict]) -> str:
    return msgs[-1]["content"] if msgs else ""


def histogram(xs: list[float], bins: list[float]) -> list[int]:
    counts = [0] * (len(bins) - 1)
    for x in xs:
        i = min(max(0, int((x - bins[0]) / (bins[1] - bins[0]))), len(counts) - 1)
        counts[i] += 1
    return counts


def gate_stats(records: list[dict], threshold: float | None) -> dict | None:
    """YES/NO per principle over every gated critique (kept, filtered and no-violation rows), and a plain warning
    when the gate is one-sided: a weak model's gate can say YES (or NO) to nearly everything."""
    per: dict[str, Counter] = {}
    ps = []
    for g in (g for r in records for g in r.get("gate") or []):
        per.setdefault(g["principle"], Counter())[g["answer"]] += 1
        if g.get("p_yes") is not None:
            ps.append(g["p_yes"])
    if not per:
        return None
    yes = sum(c["YES"] for c in per.values())
    no = sum(c["NO"] for c in per.values())
    share_no = no / (yes + no)
    warn = None
    if yes + no >= 10 and share_no < 0.05:
        warn = (f"the gate said YES to {100 * (1 - share_no):.0f}% of answers: on this model it barely filters, "
                "so nearly every answer is revised as if the gate were off")
    elif yes + no >= 10 and share_no > 0.95:
        warn = f"the gate said NO to {100 * share_no:.0f}% of answers: few pairs come out; check gate.threshold"
    return {"yes": yes, "no": no, "share_no": round(share_no, 4), "threshold": threshold,
            "per_principle": {k: {"YES": c["YES"], "NO": c["NO"]} for k, c in sorted(per.items())},
            "p_yes": describe(ps), "warning": warn, "_p": ps}


KEEP = ("edit_ratio", "similarity", "judge", "reward", "flags", "principle_ids", "domain", "gate", "reason")


def slim(path: Path, texts: bool = False) -> list[dict]:
    """A run file's rows with only what the statistics count (texts become their word and character counts),
    read line by line: the report's memory is a small fraction of the run's files, not all their text."""
    out = []
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            s = {k: r[k] for k in KEEP if k in r}
            if texts:
                c, j = text(r["chosen"]), text(r["rejected"])
                s.update(cw=len(c.split()), rw=len(j.split()), cc=len(c), rc=len(j))
            out.append(s)
    return out


def compute(out: Path) -> dict:
    prefs = slim(out / "preferences.jsonl", texts=True)
    rejected = slim(out / "rejected.jsonl")
    unpaired = slim(out / "no_violation.jsonl")
    gate = gate_stats(prefs + rejected + unpaired, (run_config(out).get("gate") or {}).get("threshold"))
    edits = [p["edit_ratio"] for p in prefs if p.get("edit_ratio") is not None]
    cw, rw = [p["cw"] for p in prefs], [p["rw"] for p in prefs]
    sims_kept = [p["similarity"] for p in prefs if p.get("similarity") is not None]
    sims_dropped = [r["similarity"] for r in rejected if r.get("similarity") is not None]
    judged = [p["judge"]["outcome"] for p in prefs if p.get("judge")] + \
             [r["judge"]["outcome"] for r in rejected if r.get("judge")]
    margins = [p["reward"]["margin"] for p in prefs if p.get("reward")] + \
              [r["reward"]["margin"] for r in rejected if r.get("reward")]
    return {
        "kept": len(prefs),
        "filtered": len(rejected),
        "no_violation": len(unpaired),
        "gate": {k: v for k, v in gate.items() if k != "_p"} if gate else None,
        "edit_ratio": {**describe(edits), "hist": histogram(edits, SIM_BINS), "bins": SIM_BINS},
        "reasons": dict(Counter(r["reason"] for r in rejected).most_common()),
        "flags": dict(Counter(re.sub(r"_r\d+$", "", f) for p in prefs for f in p.get("flags", [])).most_common()),
        "principles": dict(Counter(pid for p in prefs for pid in p["principle_ids"]).most_common()),
        "domains": dict(Counter(p.get("domain") or "none" for p in prefs).most_common()),
        "length_words": {"chosen": describe(cw), "rejected": describe(rw)},
        "length_chars": {"chosen": describe([p["cc"] for p in prefs]), "rejected": describe([p["rc"] for p in prefs])},
        # length bias check: DPO learns "longer is better" when chosen is systematically longer
        "chosen_longer": round(sum(c > r for c, r in zip(cw, rw)) / len(prefs), 4) if prefs else None,
        # what "the longer answer is chosen" alone scores (ties half), and the length gap in pooled SDs
        "length_only_accuracy": longer_chosen(cw, rw),
        "cohen_d": cohen_d(cw, rw),
        "similarity": {"kept": describe(sims_kept), "filtered": describe(sims_dropped),
                       "bins": SIM_BINS, "hist_kept": histogram(sims_kept, SIM_BINS),
                       "hist_filtered": histogram(sims_dropped, SIM_BINS)},
        "judge": judge_mod.rates(judged) if judged else None,
        "reward": {"margin": describe(margins), "below_threshold": sum(1 for p in prefs + rejected
                                                                        if "reward_margin_low" in p.get("flags", [])
                                                                        or p.get("reason") == "reward_margin_low")}
        if margins else None,
        # written by `python -m cai_gen.evaluate` (does DPO on the data beat the controls?)
        "eval": json.loads((out / "eval" / "eval.json").read_text()) if (out / "eval" / "eval.json").is_file() else None,
        # written by `python -m cai_gen.review merge` (counts and agreement of the expert verdicts)
        "review": json.loads((out / "reviewed" / "review.json").read_text()) if (out / "reviewed" / "review.json").is_file()
        else None,
        "_series": {"chosen_words": cw, "rejected_words": rw, "sims_kept": sims_kept, "sims_dropped": sims_dropped,
                    "margins": margins, "edit_ratio": edits, "p_yes": gate["_p"] if gate else []},
    }
