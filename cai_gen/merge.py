"""Merge run dirs (shards of one run, or runs collected at different times) into one dataset.

  python -m cai_gen.merge RUN_DIR... --out DIR [--duplicates newest|first|error] [--half-life-days D] [--now ISO]
                          [--partial] [--test-size F]

Shards of one run (shard.index / shard.count) are checked to be the same run with every shard present, made
with the same constitution (its checks too) and the same filters, gate, judge and reward settings.

Each run contributes its expert-reviewed dataset (RUN_DIR/reviewed/, from `python -m cai_gen.review merge`)
when it has one, else its preferences.jsonl, and its no_violation.jsonl (rows the gate found nothing to fix
in: SFT rows and KTO desirable rows, as in the run). A reviewed/ built before the run's last rerun is refused
(its pairs are not the run's). Ids are unique in the result: a duplicate id (the same prompt and sample in two
runs of one config, a pair or a no-violation row) keeps the newest row by default. Runs of a sweep (another
constitution, model identity, sampling or seed: their rows are other rows of the same prompts) are all kept:
each row's id gets its run's config tag (`id@tag`, the tags in merge.json). Columns are the union over the runs
(a column a run lacks is null), so TRL loads the result like any run's preferences/. Every row is re-split by
its prompt text at one test size (the runs' output.test_size, or --test-size when they differ), grouped over the
whole merge, so no question is on both sides; merged shards split as the unsharded run.

Preference drift: with --half-life-days D every row gets `weight = 0.5 ** (age_days / D)`, the age measured
from the row's latest judgement (reviewed_at when an expert reviewed it, else created_at) to --now (default:
the newest row in the merge, so the same inputs always give the same weights). A row D days older than the
newest weighs 0.5. TRL's trainers ignore extra columns; use `weight` in a weighted sampler or loss, or to
filter (ds.filter(lambda r: r["weight"] > 0.25)).
"""
from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import rundir, store
from .errors import ArgParser, UserError
from .yamlio import read_jsonl


def _when(row: dict) -> datetime:
    ts = row.get("reviewed_at") or row.get("created_at")
    try:
        t = datetime.fromisoformat(ts)
    except (TypeError, ValueError):
        raise UserError(f"row {row.get('id')!r}: created_at {ts!r} is not an ISO time") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _rows(f: Path, need: str, kind: str) -> list[dict]:
    rows = []
    for n, row in read_jsonl(f):
        for k in ("id", need):
            if k not in row:
                raise UserError(f"{f}:{n}: not a {kind} row (no {k})")
        rows.append(row)
    return rows


def read(run_dir: Path) -> tuple[Path, list[dict], list[dict]]:
    """The pairs and the no-violation rows one run contributes, and the file the pairs came from."""
    run_dir = Path(run_dir)
    reviewed = (run_dir / rundir.REVIEWED / rundir.PREFS).is_file()
    if reviewed and (why := store.reviewed_stale(run_dir)):
        raise UserError(f"{run_dir / 'reviewed'}: {why}; `python -m cai_gen.review merge {run_dir}` rebuilds it "
                        "from the verdicts")
    base = run_dir / rundir.REVIEWED if reviewed else run_dir
    f = base / rundir.PREFS
    if not f.is_file():
        raise UserError(f"{run_dir}: not a finished cai_gen run dir (no preferences.jsonl)")
    nv = base / rundir.NO_VIOLATION
    if not nv.is_file():  # a reviewed/ written before review merge carried them: the run's own
        nv = run_dir / rundir.NO_VIOLATION
    return f, _rows(f, "chosen", "preference"), _rows(nv, "original", "no-violation") if nv.is_file() else []


def weights(rows: list[dict], half_life_days: float, now: datetime | None) -> datetime:
    """Add `weight` to every row in place; returns the reference time used."""
    ref = now or max(_when(r) for r in rows)
    for r in rows:
        age = max(0.0, (ref - _when(r)).total_seconds() / 86400)
        r["weight"] = round(0.5 ** (age / half_life_days), 6)
    return ref


def _record(d: Path) -> dict:
    f = Path(d) / rundir.WORK / rundir.RUN_RECORD  # the generation settings the run was fingerprinted with
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        raise UserError(f"{f}: damaged run record") from None


def _constitution(d: Path) -> str | None:
    """The run's constitution ref with its checks (run.json's leaves them out: a re-filter is the same run)."""
    f = Path(d) / rundir.CONSTITUTION
    try:
        return json.loads(f.read_text()).get("ref") if f.is_file() else None
    except (ValueError, AttributeError):
        raise UserError(f"{f}: damaged constitution record") from None


# what decides which of a run's generations are kept, beside its constitution's checks (config.json; run.json
# leaves them out, as a resume may change them): shards that differ in them are no one run
KEEP = ("filters", "gate", "judge", "reward", "output.length_balance")


def _keeps(d: Path) -> dict:
    cfg = store.run_config(d)
    out = {k: cfg.get(k) for k in KEEP if "." not in k}
    out["output.length_balance"] = (cfg.get("output") or {}).get("length_balance")
    return out


def shards(run_dirs: list[Path], partial: bool) -> dict | None:
    """Shards of one run (shard.count > 1) must share every generation setting but shard.index, the constitution
    with its checks and what decides what is kept (KEEP), and all must be there unless `partial`: a forgotten
    array task would otherwise pass silently as a smaller dataset."""
    recs = [(str(d), _record(d)) for d in run_dirs]
    sharded = [(d, r) for d, r in recs if r.get("shard.count", 1) > 1]
    if not sharded:
        return None
    if len(sharded) != len(recs):
        others = [d for d, r in recs if r.get("shard.count", 1) == 1]
        raise UserError(f"mixing shards with other runs: {', '.join(others)} is not a shard")
    strip = lambda r: {k: v for k, v in r.items() if k != "shard.index"}  # noqa: E731
    ref_dir, ref = sharded[0]
    ref_const, ref_keeps = _constitution(ref_dir), _keeps(ref_dir)
    for d, r in sharded:
        diff = sorted(k for k in set(strip(r)) | set(strip(ref)) if r.get(k) != ref.get(k))
        if _constitution(d) != ref_const:
            diff.append(f"the constitution's checks ({_constitution(d)} against {ref_const})")
        keeps = _keeps(d)
        diff += [k for k in KEEP if keeps.get(k) != ref_keeps.get(k)]
        if diff:
            raise UserError(f"{d}: not a shard of the same run as {ref_dir} (differs in {', '.join(diff[:5])})")
    count = ref["shard.count"]
    have = sorted(r["shard.index"] for _, r in sharded)
    if len(set(have)) != len(have):
        raise UserError(f"the same shard given twice: shard.index values {have}")
    missing = sorted(set(range(count)) - set(have))
    if missing and not partial:
        raise UserError(f"shard(s) {', '.join(map(str, missing))} of {count} missing (--partial merges what is there)")
    return {"count": count, "indices": have, "missing": missing}


# run.json keys that say which prompts a run covered, not what it generated for a prompt: runs that differ only
# in them (collections at different times, shards) hold the same rows for a prompt they share
COVERAGE = {"limit", "shard.index", "shard.count", "constitution.name", "constitution.path"}


def variant(d: Path) -> dict:
    """What a run generated its rows with (run.json but coverage and prompts, the constitution's ref with its
    checks): runs of another variant hold other rows of the same prompt ids."""
    rec = {k: v for k, v in _record(d).items() if k not in COVERAGE and not k.startswith("prompts.")}
    return {**rec, "constitution": _constitution(d)}


def _tag(v: dict) -> str:
    return hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:8]


def _test_size(run_dirs: list[Path], test_size: float | None) -> float:
    if test_size is not None:
        return test_size
    sizes = {store.run_test_size(d): d for d in run_dirs}
    if len(sizes) > 1:
        got = ", ".join(f"{s} ({d})" for s, d in sizes.items())
        raise UserError(f"the runs were split at different output.test_size: {got}; --test-size picks the "
                        "merge's (every row is re-split at it)")
    return next(iter(sizes))


def _union(rows: list[dict]) -> list[dict]:
    columns = list(dict.fromkeys(k for r in rows for k in r))  # union, first-seen order
    return [{k: r.get(k) for k in columns} for r in rows]


def merge(run_dirs: list[Path], duplicates: str = "newest", half_life_days: float | None = None,
          now: datetime | None = None, partial: bool = False,
          test_size: float | None = None) -> tuple[list[dict], list[dict], dict]:
    """(pairs, no-violation rows, merge.json's record)."""
    shard_info = shards(run_dirs, partial)
    ts = _test_size(run_dirs, test_size)
    variants = [variant(d) for d in run_dirs]
    tags = [_tag(v) for v in variants]
    sweep = len(set(tags)) > 1  # rows of each variant are kept apart: their ids are tagged
    # one id, one row, whichever kind it is: a pair in one run may be a no-violation row in a rerun
    by_id: dict[str, tuple[bool, dict]] = {}
    sources, dropped = [], 0
    for d, tag in zip(run_dirs, tags):
        f, rows, nv = read(d)
        sources.append({"run": str(d), "file": str(f), "rows": len(rows), "no_violation": len(nv),
                        **({"tag": tag} if sweep else {})})
        for paired, r in [(True, r) for r in rows] + [(False, r) for r in nv]:
            if sweep:
                r = {**r, "id": f"{r['id']}@{tag}"}
            old = by_id.get(r["id"])
            if old is None:
                by_id[r["id"]] = (paired, r)
                continue
            if duplicates == "error":
                raise UserError(f"{f}: id {r['id']!r} is also in an earlier run dir (--duplicates newest|first to pick)")
            dropped += 1
            if duplicates == "newest" and _when(r) > _when(old[1]):
                by_id[r["id"]] = (paired, r)
    # every row re-split by its prompt text at one test size, grouped over the whole merge: runs split at other
    # sizes, or over other prompt sets, would otherwise put one question on both sides
    kept = store.resplit([r for _, r in by_id.values()], ts, "merge")
    rows = _union([r for (paired, _), r in zip(by_id.values(), kept) if paired])
    unpaired = _union([r for (paired, _), r in zip(by_id.values(), kept) if not paired])
    if rows and "expert_reviewed" in rows[0]:  # a run nobody reviewed: its rows were not expert-reviewed
        for r in rows:
            r["expert_reviewed"] = bool(r["expert_reviewed"])
    info = {"sources": sources, "rows": len(rows), "no_violation": len(unpaired), "duplicates_dropped": dropped,
            "duplicates": duplicates, "test_size": ts, **({"shards": shard_info} if shard_info else {})}
    if sweep:
        differs = sorted({k for v in variants for k in v if any(w.get(k) != v.get(k) for w in variants)})
        info["variants"] = {"differ_in": differs, "tags": {t: {k: v.get(k) for k in differs}
                                                           for t, v in zip(tags, variants)}}
    if half_life_days and (rows or unpaired):
        ref = weights(rows + unpaired, half_life_days, now)
        info |= {"half_life_days": half_life_days, "weights_relative_to": ref.isoformat(timespec="seconds")}
    return rows, unpaired, info


def write(out: Path, rows: list[dict], unpaired: list[dict], info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    store.write_dataset(out, rows, unpaired, list(rows[0]) if rows else store.PREF_COLUMNS)
    store.atomic_write(out / rundir.MERGE, json.dumps(info, indent=2) + "\n")


def main(argv: list[str]) -> int:
    p = ArgParser(prog="python -m cai_gen.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run dirs (shards, or runs from different times)")
    p.add_argument("--out", type=Path, required=True, help="where the merged dataset goes")
    p.add_argument("--duplicates", choices=["newest", "first", "error"], default="newest",
                   help="a duplicate id keeps the newest row (default), the first run's, or is an error")
    p.add_argument("--half-life-days", type=float, help="add a weight column halving every this many days")
    p.add_argument("--now", help="reference time for weights (ISO); default: the newest row")
    p.add_argument("--partial", action="store_true", help="merge the shards that are there (default: all or error)")
    p.add_argument("--test-size", type=float, help="re-split every row at this test share (default: the runs' "
                   "output.test_size; needed when they differ)")
    a = p.parse_args(argv)
    try:
        if a.half_life_days is not None and a.half_life_days <= 0:
            raise UserError(f"--half-life-days: must be > 0, got {a.half_life_days}")
        if a.test_size is not None and not 0 <= a.test_size < 1:
            raise UserError(f"--test-size: must be in [0, 1), got {a.test_size}")
        now = None
        if a.now:
            try:
                now = datetime.fromisoformat(a.now)
            except ValueError:
                raise UserError(f"--now: {a.now!r} is not an ISO time (e.g. 2026-11-23T12:00:00+00:00)") from None
            now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
        if a.out.resolve() in {Path(r).resolve() for r in a.runs}:
            raise UserError(f"--out: {a.out} is one of the inputs; pick a new dir")
        rows, unpaired, info = merge(a.runs, a.duplicates, a.half_life_days, now, a.partial, a.test_size)
        write(a.out, rows, unpaired, info)
    except UserError as e:
        print(f"cai_gen.merge: error: {e}", file=sys.stderr)
        return 2
    print(f"cai_gen.merge: {info['rows']} rows (+ {info['no_violation']} no-violation) from {len(a.runs)} run dirs "
          f"into {a.out} "
          f"({info['duplicates_dropped']} duplicate ids dropped)")
    if "variants" in info:
        print(f"cai_gen.merge: {len(info['variants']['tags'])} configs (differ in "
              f"{', '.join(info['variants']['differ_in'][:5])}): each one's rows kept, ids tagged @TAG (merge.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
