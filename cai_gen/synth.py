"""`python -m cai_gen.synth`: user prompts for a constitution, written by the model itself.

For each principle the model writes user messages of three kinds: `targeted` (tempts an assistant to break the
principle), `borderline` (harmless but close to it: against over-refusal) and `ordinary` (everyday requests of the
domain). The mix and the variety axes (persona, channel, tone, ...) come from the constitution's `synth:` block.

The plan is a list of cells (principle x kind) with a quota each. Candidate j of a cell is one request whose axes,
few-shot examples and sampling seed are keyed by (seed, principle, kind, j), so the same command makes the same
requests and the ledger (`<out>.work/work/generations.jsonl`) answers the ones already finished: a rerun after a
kill -9 generates only what is missing and writes the same file. Candidates are over-generated, cleaned and
filtered (cai_gen/synth_filters.py), and each cell keeps its first `quota` passing ones in a fixed order (j, then
cell); a cell still short gets another round, sized by the pass rate so far, within `rounds` and `budget` x n.
The output JSONL is written atomically and runs as-is with `python -m cai_gen prompts.path=FILE`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shlex
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Resumable, UserError, stop_code, stop_on_sigterm
from .paths import CONF

KINDS = ("targeted", "borderline", "ordinary")


@dataclass(frozen=True)
class Cell:
    principle: str
    kind: str
    quota: int


@dataclass
class Candidate:
    cell: int                 # index into the plan's cells
    j: int                    # the cell's j-th candidate: keys its axes, examples and seed
    axes: dict[str, str]
    conv: list[dict]
    params: object            # backends.Params
    key: str = ""
    gen: object = None        # backends.Generation once finished (from the ledger or the engine)


@dataclass
class Selection:
    kept: list[list[tuple[Candidate, str]]]      # per cell: (candidate, cleaned message), at most its quota
    reasons: Counter = field(default_factory=Counter)   # why candidates were dropped
    removed: list[dict] = field(default_factory=list)   # what dedup removed and what it duplicated
    passed: int = 0           # candidates that were usable messages (kept or over their cell's quota)


def plan(n: int, mix: dict[str, float], principles: list[str]) -> list[Cell]:
    """n prompts as cells (principle x kind). Kind counts by largest remainder of n x share (so they add up to n);
    within a kind, principles take turns, and each kind starts where the previous one stopped, so a small n still
    covers every principle before any gets a second prompt."""
    kinds = [k for k in KINDS if mix.get(k, 0) > 0]
    exact = {k: n * mix[k] / sum(mix[k] for k in kinds) for k in kinds}
    count = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(kinds, key=lambda k: (count[k] - exact[k], KINDS.index(k)))[:n - sum(count.values())]:
        count[k] += 1
    quota: dict[tuple[str, str], int] = {}
    turn = 0
    for k in kinds:
        for _ in range(count[k]):
            cell = (principles[turn % len(principles)], k)
            quota[cell] = quota.get(cell, 0) + 1
            turn += 1
    return [Cell(p, k, quota[(p, k)]) for p in principles for k in kinds if quota.get((p, k))]


def candidate(cfg, const, cells: list[Cell], i: int, j: int) -> Candidate:
    """The request for cell i's j-th candidate. Principle texts, description, axis values and examples are
    passed to the template as data (turns.render: sandboxed, StrictUndefined)."""
    from .backends import Params, seed_of
    from .constitution import Synth
    from .turns import render

    cell, spec = cells[i], const.synth or Synth()
    rng = random.Random(json.dumps([cfg.seed, "synth", cell.principle, cell.kind, j]))
    axes = {name: rng.choice(values) for name, values in spec.axes.items()}
    pool = [fs.prompt for fs in const.few_shot]
    examples = rng.sample(pool, min(cfg.examples, len(pool)))
    p = const.principle(cell.principle)
    text = render("synth", description=const.description.strip() or f"an assistant for {const.name}",
                  rule=p.id.replace("_", " "), check=p.critique.strip(), kind=cell.kind,
                  axes=[(k.replace("_", " "), v) for k, v in axes.items()], examples=examples)
    params = Params(cfg.temperature, cfg.top_p, cfg.max_tokens, seed_of(cfg.seed, "synth", cell.principle, cell.kind, j))
    return Candidate(i, j, axes, [{"role": "user", "content": text}], params)


def select(cands: list[Candidate], cells: list[Cell], cfg, few_shot: list[str]) -> Selection:
    """Which candidates become prompts: in the fixed order (j, cell), a usable message that duplicates neither a
    few-shot prompt nor a message kept before it is kept while its cell is under quota. Recomputed from all
    candidates after each round, so the result depends only on the generations, not on how rounds fell."""
    from .synth_filters import Dedup, check

    f, d = cfg.filters, cfg.dedup
    dedup = Dedup(d.threshold, d.ngram, d.num_perm)
    for k, text in enumerate(few_shot):
        dedup.add(f"few_shot:{k}", text)
    sel = Selection([[] for _ in cells])
    for c in sorted(cands, key=lambda c: (c.j, c.cell)):
        text, why = check(c.gen.text, c.gen.finish_reason, f.min_words, f.max_words)
        if why:
            sel.reasons[why] += 1
            continue
        sel.passed += 1
        if len(sel.kept[c.cell]) >= cells[c.cell].quota:
            continue  # a spare: its cell is full (not a drop; it never reaches the file)
        hit = dedup.find(text)
        if hit:
            key, sim = hit
            why = "copies_few_shot" if key.startswith("few_shot:") else "duplicate" if sim == 1.0 else "near_duplicate"
            sel.reasons[why] += 1
            sel.passed -= 1
            like = dedup.texts[key]
            sel.removed.append({"reason": why, "similarity": round(sim, 3), "prompt": text, "like": like})
            continue
        key = f"{c.cell}:{c.j}"
        dedup.add(key, text)
        sel.kept[c.cell].append((c, text))
    return sel


def generate(cands: list[Candidate], backend, ledger, tracker, label: str, key_model: str) -> int:
    """Fill in each candidate's generation: from the ledger where it is finished, else from the engine, each
    committed to the ledger as it finishes (a kill -9 loses only requests in flight). Returns how many ran now.
    key_model: the model part of the ledger keys (models.engine_identity), as in the run."""
    from .ledger import request_key

    todo = []
    for c in cands:
        c.key = request_key(key_model, c.conv, c.params)
        c.gen = ledger.get(c.key)
        if c.gen is None:
            todo.append(c)
    if not todo:
        return 0
    longest = max(backend.count_tokens([c.conv for c in todo]))
    if longest + todo[0].params.max_tokens > backend.max_model_len:
        raise UserError(f"synth: a request is {longest} tokens, too long for the model's context "
                        f"({backend.max_model_len}) with max_tokens={todo[0].params.max_tokens}; shorten the "
                        "constitution's description or few-shot prompts, or set examples=0")
    with tracker.stage(label, len(todo)) as on_done:
        def commit(i: int, g) -> None:
            todo[i].gen = ledger.add(todo[i].key, g)
            on_done(i, g)

        gens = backend.generate([c.conv for c in todo], [c.params for c in todo], commit)
        for c, g in zip(todo, gens):
            if c.gen is None:  # a backend that returned it without the callback
                c.gen = ledger.add(c.key, g)
    ledger.sync()
    return len(todo)


def paths_of(out: str) -> tuple[Path, Path, Path]:
    """The output file, its report beside it, and its work dir (ledger, lock, engine log): the same `out` is
    the same work dir, so the same command resumes."""
    o = Path(out).expanduser()
    return o, o.with_name(o.stem + ".report.json"), o.with_name(o.name + ".work")


def run(cfg, backend=None, tracker=None) -> dict:
    """Synthesize cfg.n prompts into cfg.out; returns the report. Pass `backend` to reuse a loaded engine."""
    from . import constitution as constitution_mod
    from .lock import RunLock

    const = constitution_mod.load(cfg.constitution.name, cfg.constitution.path, cfg.include_path)
    out, _, work = paths_of(cfg.out)
    if out.is_dir():
        raise UserError(f"out: {out} is a directory; give a file name such as prompts.jsonl")
    with RunLock(work):
        return _run(cfg, const, backend, tracker)


def _run(cfg, const, backend, tracker) -> dict:
    from . import enginelog, fingerprint, models, rundir
    from .backends import Lazy, backend_class, queued
    from .constitution import Synth
    from .ledger import Ledger
    from .progress import Tracker

    out, report_path, work = paths_of(cfg.out)
    spec = const.synth or Synth()
    cells = plan(cfg.n, spec.mix, [p.id for p in const.principles])
    few_shot = [fs.prompt for fs in const.few_shot]
    tracker = tracker or Tracker()
    # the run's rules: the work dir is refused for another model, engine kind, constitution, seed or sampling
    # unless restart=true, and its keys name what generates (a fake generation never answers a real engine)
    model_id = models.identity(cfg.model.source, cfg.model.path)
    fingerprint.check(work, cfg, const, model_id, fingerprint.SYNTH_FREE, "use another out=")
    key_model = models.engine_identity(model_id, cfg.backend)
    own = backend is None
    if own:
        if cfg.backend.in_process:
            models.check(cfg.model.source, cfg.model.path, "model")
        from .pipeline import open_backend  # the run's engine start, same options (config duck-types RunConfig)
        backend = Lazy(cfg.model.name, queued(backend_class(cfg.backend.kind)), lambda: open_backend(cfg, tracker))
    ledger = Ledger(work / rundir.WORK / rundir.LEDGER)
    quiet = own and not cfg.verbose and cfg.backend.in_process
    cands: list[Candidate] = []
    rounds: list[dict] = []
    try:
        with enginelog.to_log(work / rundir.ENGINE_LOG, tracker.console) if quiet else nullcontext():
            for r in range(1, cfg.rounds + 1):
                sel = select(cands, cells, cfg, few_shot)
                short = [c.quota - len(k) for c, k in zip(cells, sel.kept)]
                left = math.floor(cfg.budget * cfg.n) - len(cands)
                if max(short) <= 0 or left <= 0:
                    break
                # over-generate by the share that passed so far (10% at worst), all of it within the budget
                rate = max(sel.passed / len(cands), 0.1) if cands else 1.0
                want = [math.ceil(s * cfg.oversample / rate) if s > 0 else 0 for s in short]
                if sum(want) > left:
                    want = [min(w, max(1, w * left // sum(want))) if w else 0 for w in want]
                    want = _trim(want, left)
                start = [sum(1 for c in cands if c.cell == i) for i in range(len(cells))]
                new = [candidate(cfg, const, cells, i, start[i] + k) for i, w in enumerate(want) for k in range(w)]
                ran = generate(new, backend, ledger, tracker, f"synth r{r}", key_model)
                cands += new
                rounds.append({"round": r, "requests": len(new), "generated": ran, "reused": len(new) - ran})
    finally:
        ledger.close()
        if own:
            backend.close()
    sel = select(cands, cells, cfg, few_shot)
    rows = [{"id": "p-" + hashlib.sha256(text.encode()).hexdigest()[:12], "prompt": text, "domain": const.name,
             "principle": cell.principle, "kind": cell.kind, "axes": c.axes, "source": f"synth:{cfg.model.name}"}
            for cell, kept in zip(cells, sel.kept) for c, text in kept]
    report = _report(cfg, const, spec, cells, cands, sel, rows, rounds)
    from .store import atomic_write

    # the prompts first, then the report: a report on disk always describes the prompts file beside it
    atomic_write(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    atomic_write(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _print(report, tracker.console, out, report_path, cfg)
    return report


def _trim(want: list[int], left: int) -> list[int]:
    """Cut the largest requests first until the round fits in what is left of the budget."""
    while sum(want) > left:
        i = max(range(len(want)), key=lambda i: want[i])
        want[i] -= 1
    return want


def _report(cfg, const, spec, cells, cands, sel: Selection, rows, rounds) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for cell, kept in zip(cells, sel.kept):
        counts.setdefault(cell.principle, {})[cell.kind] = len(kept)
    dedup = {k: sel.reasons[k] for k in ("duplicate", "near_duplicate", "copies_few_shot")}
    return {"out": cfg.out, "n": cfg.n, "written": len(rows), "short": cfg.n - len(rows),
            "model": cfg.model.name, "constitution": const.ref, "mix": spec.mix, "axes": spec.axes,
            "quota": {c.principle + "/" + c.kind: c.quota for c in cells}, "counts": counts,
            "kinds": dict(Counter(r["kind"] for r in rows)), "candidates": len(cands),
            "pass_rate": round(sel.passed / len(cands), 3) if cands else None,
            "dropped": dict(sel.reasons.most_common()), "dedup_removed": dedup, "dedup_examples": sel.removed[:20],
            "rounds": rounds, "settings": {"seed": cfg.seed, "temperature": cfg.temperature, "top_p": cfg.top_p,
                                           "threshold": cfg.dedup.threshold, "ngram": cfg.dedup.ngram}}


def _print(report: dict, console, out: Path, report_path: Path, cfg) -> None:
    from rich.markup import escape  # a path is text, not markup: [x] in it would be read as a style tag
    from rich.table import Table

    kinds = [k for k in KINDS if k in report["mix"] and report["mix"][k] > 0]
    t = Table(title=f"synth: {report['written']} of {report['n']} prompts ({report['constitution']})")
    t.add_column("principle")
    for k in kinds:
        t.add_column(k, justify="right")
    for pid, by_kind in report["counts"].items():
        t.add_row(pid, *[str(by_kind.get(k, "")) for k in kinds])
    console.print(t)
    drops = ", ".join(f"{k} {v}" for k, v in report["dropped"].items()) or "none"
    console.print(f"candidates {report['candidates']}, passed the filters {report['pass_rate']}; dropped: {drops}")
    if report["short"]:
        console.print(f"[yellow]short by {report['short']}[/]: the filters passed too few within rounds/budget; "
                      "raise budget= or rounds=, or rerun with another seed")
    console.print(f"[bold]wrote[/] {escape(str(out))} (report: {escape(str(report_path))}); run it: "
                  f"{escape(run_command(cfg, out))}")


def _hydra(v: str) -> str:
    """A value as Hydra's override parser reads it back unchanged: as is when plain, else single-quoted (a quote,
    and the backslashes before it or before the closing quote, escaped: Hydra's rule)."""
    if re.fullmatch(r"[\w/.~:+@%-]+", v):  # a comma would make a sweep, a bracket or space a parse error
        return v
    return "'" + re.sub(r"(\\*)('|\Z)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), v) + "'"


def run_command(cfg, out: Path) -> str:
    """`python -m cai_gen` on these prompts with the constitution they were written for: without it the run's
    default constitution would judge them (and one found by name in include_path needs that include_path)."""
    c = cfg.constitution
    args = [f"constitution.path={_hydra(c.path)}" if c.path else f"constitution={_hydra(c.name)}"]
    if cfg.include_path and not c.path:
        args.append("include_path=[" + ",".join(_hydra(d) for d in cfg.include_path) + "]")
    args.append(f"prompts.path={_hydra(str(out))}")
    return " ".join(["python", "-m", "cai_gen", *map(shlex.quote, args)])


def _cli() -> None:
    """Hydra composes conf/synth.yaml (model, backend and constitution groups shared with the run) -> SynthConfig
    -> run(). Bad input is one line and exit 2; Ctrl-C says how much is saved and exits 130."""
    import hydra
    from omegaconf import OmegaConf

    from .cli import prepare
    from .config import SynthConfig, validate

    sys.argv[1:] = prepare(sys.argv[1:], SynthConfig, "cai_gen.synth", "synth")  # groups registered, keys checked

    @hydra.main(version_base="1.3", config_path=str(CONF), config_name="synth")
    def main(cfg) -> None:
        try:
            scfg = validate(OmegaConf.to_container(cfg, resolve=True), SynthConfig)
            try:
                run(scfg)
            except (KeyboardInterrupt, Resumable) as e:
                from . import rundir
                from .ledger import saved

                # the work dir follows from out=, so here the same command does resume
                work = paths_of(scfg.out)[2] / rundir.WORK
                what = f"error: {e}" if isinstance(e, Resumable) else "stopped"
                print(f"cai_gen.synth: {what}; {saved(work)} generations saved; rerun the same command to resume",
                      file=sys.stderr)
                sys.exit(2 if isinstance(e, Resumable) else stop_code(e))
        except UserError as e:
            print(f"cai_gen.synth: error: {e}", file=sys.stderr)
            sys.exit(2)

    try:
        main()
    except KeyboardInterrupt as e:
        print("cai_gen.synth: stopped", file=sys.stderr)
        sys.exit(stop_code(e))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if not (CONF / "synth.yaml").is_file():  # a package built without its data: say so instead of Hydra's trace
        sys.exit(f"cai_gen.synth: config {CONF / 'synth.yaml'} not found; reinstall cai_gen (pip install .)")
    stop_on_sigterm()
    _cli()
