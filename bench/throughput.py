"""Pairs per minute: cai_gen against a naive loop, a peer framework and the raw engine, in one command.

Same model (SmolLM2-135M-Instruct, float32), same prompts (the built-in set repeated to --prompts rows with new
ids), same few-shot conversations, sampling and max tokens, same machine. Each system runs in its own subprocess
so its peak RSS (the whole process tree, sampled every 0.2 s) is its own, except that cai_gen and the raw engine
share one process and one engine (the raw pass replays cai_gen's requests on it): their peak RSS and engine start
are one measurement, printed once across both columns:

  engine   cai_gen end to end (pipeline.run, one vLLM engine, stage batches) and the raw engine: one LLM.chat
           call over exactly the requests cai_gen sent (recorded), the ceiling. Same engine, same process. One
           untimed cai_gen pass on 4 prompts first (engine warm-up), then --blocks blocks of
           cai_gen, raw, raw, cai_gen, so neither side always runs first on a warmer (or busier) engine; the
           tok/s ratio of each adjacent (cai_gen, raw) pair gives `cai_gen tok/s of raw: MEDIAN (MIN-MAX, N
           pairs)`, and the table shows each side's median pass.
  naive    the tutorial loop: transformers generate, one conversation at a time, respond -> critique -> revise,
           on the first --naive-rows rows (a rate; it would take hours on all of them).
  peer     distilabel 1.5.3 (bench/peer-requirements.txt, installed apart in bench/.peer). Its in-process vLLM
           wrapper fails on vLLM >= 0.11 (it passes `logits_processors` to SamplingParams; see --peer-inproc), so
           the peer is distilabel's supported vLLM route: its Pipeline of three ChatGeneration steps with
           ClientvLLM against `vllm serve` of the same model on localhost. Its packages missing: one line saying
           how to install them, and the other systems run.

Pairs = rows taken through respond, critique and revise (quality filters and gate off for the count: truncated
answers kept, so every system does the same work per row); cai_gen's kept pairs after its filters are shown too.
Then what a kept pair costs: cai_gen with its defaults (filters, token knobs), gate on and gate off, on the same
engine; the naive loop's and the peer's (original, critique, revision) rows through cai_gen's own stage objects
and default filters (no gate: they have none; a text at its max tokens counts as cut). Kept pairs, generated
tokens per kept pair, kept pairs per minute, and the lines `cai_gen tokens per kept pair of peer: X` (gate on)
and `cai_gen tokens per kept pair, gate on of gate off: Y`.
Prints a table, the lines `cai_gen vs naive: X` (pairs/min ratio) and `cai_gen tok/s of raw: Y (MIN-MAX, ...)`,
then JSON.

    .venv/bin/python bench/throughput.py --quick      # < 15 min on 2 CPU cores (eager engine, short answers)
    .venv/bin/python bench/throughput.py              # 300 rows, full max tokens (--no-eager: compiled engine)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

PRESETS = {
    "quick": dict(prompts=24, samples=2, naive_rows=3, respond=128, critique=96, revise=128, eager=True, blocks=1),
    "full": dict(prompts=150, samples=2, naive_rows=8, respond=256, critique=160, revise=256, eager=True, blocks=2),
}


def write_prompts(n: int, path: Path) -> None:
    """The built-in prompts, repeated with new ids until there are n."""
    from cai_gen.prompts import load

    base = load("customer_service", None, None, "train", "prompt", None, None, None)
    with path.open("w") as f:
        for i in range(n):
            r = base[i % len(base)]
            f.write(json.dumps({"id": f"{r.id}-x{i // len(base)}", "prompt": r.prompt, "domain": r.domain}) + "\n")


def overrides(a, prompts: Path, same_work: bool = True) -> list[str]:
    """same_work: filters relaxed and no gate, so every system takes every row through the same three stages;
    otherwise cai_gen's defaults (filters, gate), for what a kept pair costs."""
    common = [f"prompts.path={prompts}", f"samples={a.samples}", f"sampling.max_tokens.respond={a.respond}",
              f"sampling.max_tokens.critique={a.critique}", f"sampling.max_tokens.revise={a.revise}"]
    # same work: no token knobs either (the raw replay and the other systems have none)
    return common + (["filters.truncated_original=keep", "filters.truncated_revision=keep", "gate.enabled=false",
                      "sampling.loop_stop.critique=null", "sampling.loop_stop.revise=null",
                      "sampling.revise_max_scale=null"] if same_work else [])


# ---------------------------------------------------------------- systems (each runs in a subprocess)

def alternate(run_cai_gen, run_raw, blocks: int) -> tuple[list[dict], list[dict]]:
    """Timed passes in blocks of cai_gen, raw, raw, cai_gen: each side runs first as often as second, so a
    drifting engine or machine (warming caches, a neighbour's load) does not favour one. Returns both sides'
    passes in pair order: pair i is (cai_gen[i], raw[i]), which ran next to each other."""
    cg, raw = [], []
    for _ in range(blocks):
        cg.append(run_cai_gen())
        raw.append(run_raw())
        raw.append(run_raw())
        cg.append(run_cai_gen())
    return cg, raw


def tps_ratio(cg: list[dict], raw: list[dict]) -> dict:
    """cai_gen tok/s of raw over adjacent pairs: the median and its spread (min, max)."""
    import statistics

    ratios = sorted((c["tokens"] / c["seconds"]) / (r["tokens"] / r["seconds"]) for c, r in zip(cg, raw))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "pairs": len(ratios)}


def median_pass(passes: list[dict]) -> dict:
    """The pass of median duration (every pass does the same requests, so its counts are the run's)."""
    return sorted(passes, key=lambda p: p["seconds"])[(len(passes) - 1) // 2]


def sys_engine(a, prompts: Path) -> dict:
    from overhead import cai_gen_pass, raw_pass, start_engine

    from cai_gen.config import compose

    cfg = compose(*overrides(a, prompts))
    rec, start = start_engine(cfg, a.eager)
    # warm-up, untimed, on the first 4 prompts: the first batches after the engine start are slower for either side
    cai_gen_pass(compose(*overrides(a, prompts), "limit=4"), rec)
    calls: list = []  # the requests of one full cai_gen pass (every pass sends the same: seeds are keyed by row)

    def cg_pass():
        rec.calls.clear()
        r = cai_gen_pass(cfg, rec)
        if not calls:  # the first timed pass records what raw replays (raw never runs before it)
            calls.extend(rec.calls)
        return r

    cgs, raws = alternate(cg_pass, lambda: raw_pass(rec, calls), a.blocks)
    cg, raw = median_pass(cgs), median_pass(raws)
    raw["of_raw"] = tps_ratio(cgs, raws)
    # what a kept pair costs with cai_gen's defaults, gate on and off, on the same engine (own run dirs: no reuse)
    cost = {}
    for gate in ("true", "false"):
        r = cai_gen_pass(compose(*overrides(a, prompts, same_work=False), f"gate.enabled={gate}"), rec)
        cost[f"gate_{'on' if gate == 'true' else 'off'}"] = r
    rec.inner.close()
    raw["pairs_made"] = cg["pairs_made"]  # the same requests: the same rows through all three stages
    return {"cai_gen": cg | {"engine_start_s": start}, "raw": raw | {"engine_start_s": start}, "cost": cost}


def sys_naive(a, prompts: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai_gen import constitution, prompts as prompts_mod, rows as rows_mod, turns
    from cai_gen.config import compose
    from cai_gen.models import resolve

    cfg = compose(*overrides(a, prompts))
    path = resolve(cfg.model.source, cfg.model.path, cfg.model.cache_dir)
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    start = time.perf_counter() - t
    const = constitution.load(cfg.constitution.name, None)
    recs = prompts_mod.load(None, str(prompts), None, "train", "prompt", None, None, None)
    rows = rows_mod.build_rows(cfg, recs, const)[: a.naive_rows]
    fs = turns.few_shot_turns(const, cfg.few_shot)
    s = cfg.sampling
    tokens = 0

    def gen(conv, temperature, top_p, max_new, seed) -> str:
        nonlocal tokens
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = lm.generate(**ids, max_new_tokens=max_new, do_sample=True, temperature=temperature, top_p=top_p,
                              pad_token_id=tok.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        tokens += int((new != tok.eos_token_id).sum())
        return tok.decode(new, skip_special_tokens=True).strip()

    texts = []
    t = time.perf_counter()
    for row in rows:  # one conversation at a time, as in the typical tutorial
        pid = row.principles[0]
        n0 = tokens
        original = gen(turns.head(row.prompt.system, [], row.prompt.prompt), row.params.temperature,
                       row.params.top_p, a.respond, row.params.seed)
        n1 = tokens
        conv = turns.head(row.prompt.system, fs, row.prompt.prompt) + [
            {"role": "assistant", "content": original}, turns.critique_turn(const, pid, 1)]
        critique = gen(conv, s.critique_temperature, s.critique_top_p, a.critique, row.params.seed + 1)
        n2 = tokens
        conv += [{"role": "assistant", "content": critique}, turns.revision_turn(const, pid, 1)]
        revision = gen(conv, s.critique_temperature, s.critique_top_p, a.revise, row.params.seed + 2)
        texts.append({"id": row.id, "original": original, "critique": critique, "revision": revision,
                      "original_tokens": n1 - n0, "critique_tokens": n2 - n1, "revision_tokens": tokens - n2})
    dt = time.perf_counter() - t
    return {"naive": {"seconds": dt, "tokens": tokens, "requests": 3 * len(rows), "pairs_made": len(rows),
                      "engine_start_s": start, "texts": texts}}


def refilter(a, prompts: Path, texts: list[dict]) -> int:
    """How many of another system's (original, critique, revision) rows cai_gen would keep: each goes through
    cai_gen's own stage objects (respond, critique, revise, pair accept) with its default filters and no gate (the
    other systems have none). A text at its stage's max tokens counts as cut (finish_reason "length")."""
    from cai_gen import constitution, prompts as prompts_mod, rows as rows_mod, stages
    from cai_gen.backends import Generation
    from cai_gen.config import compose
    from cai_gen.progress import Tracker

    cfg = compose(*overrides(a, prompts, same_work=False), "gate.enabled=false")
    const = constitution.load(cfg.constitution.name, None)
    recs = prompts_mod.load(None, str(prompts), None, "train", "prompt", None, None, None)
    rows = {r.id: r for r in rows_mod.build_rows(cfg, recs, const)}
    job = rows_mod.Run(cfg, None, const, Tracker(), None)
    limits = {"original": a.respond, "critique": a.critique, "revision": a.revise}
    column = {"respond": "original", "critique": "critique", "revise": "revision"}  # pair: no text of its own
    flow = stages.build(cfg)  # the run's own stage list (gate off): respond, critique, revise, pair
    kept = 0
    for t in texts:
        row = rows[t["id"]]
        for stage in flow:
            stage.requests(job, row)  # extends the row's conversation as in a run
            col = column.get(stage.name)
            gens = [] if col is None else [Generation(t[col], "length" if t[f"{col}_tokens"] >= limits[col]
                                                      else "stop", 0, t[f"{col}_tokens"])]
            if not stage.accept(job, row, gens):
                break
        else:
            kept += 1
    return kept


PEER_INSTALL = ".venv/bin/pip install --no-deps --target bench/.peer -r bench/peer-requirements.txt"


def sys_peer(a, prompts: Path) -> dict:
    try:
        import peer
    except ModuleNotFoundError as e:  # the peer lives apart, in bench/.peer: not there, say how to get it
        missing = (e.name or "distilabel").split(".")[0]
        return {"peer": {"error": f"skipped: {missing} is not installed; install the peer once with {PEER_INSTALL}"}}

    return {"peer": peer.run(a, prompts)}


def with_kept(name: str, a, prompts: Path, res: dict) -> dict:
    """A system's texts through cai_gen's filters: its kept pairs (the texts themselves are not reported)."""
    r = res[name]
    if "texts" in r:
        r["kept"] = refilter(a, prompts, r.pop("texts"))
    return res


SYSTEMS = {"engine": sys_engine, "naive": sys_naive, "peer": sys_peer}


# ---------------------------------------------------------------- orchestration

def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_system(name: str, a, prompts: Path) -> dict:
    """Run one system in a subprocess; sample its process tree's RSS; return its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    if name == "peer":
        env["PYTHONPATH"] = os.pathsep.join([str(HERE / ".peer"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--system", name, "--result", str(out)] + a.pass_through
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    done.set()
    th.join()
    if rc != 0 or not out.stat().st_size:
        return {name: {"error": f"exit code {rc}"}}
    res = json.loads(out.read_text())
    shared = [k for k in res if k in ("cai_gen", "raw")]
    for k, v in res.items():
        if "error" in v:  # skipped (the peer not installed): no figures of its own
            continue
        v["peak_rss_mb"] = round(peak / 2**20)
        if len(shared) > 1 and k in shared:
            v["shared_process"] = "+".join(shared)  # one process: not two separate measurements
    return res


def fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def report(res: dict) -> None:
    cols = ["naive", "peer", "raw", "cai_gen"]
    for r in res.values():
        if "seconds" in r:
            r["pairs_per_min"] = r["pairs_made"] / r["seconds"] * 60
            r["tok_per_s"] = r["tokens"] / r["seconds"]
    lines = [("pairs made (rows through 3 stages)", "pairs_made", "d"), ("generated tokens", "tokens", "d"),
             ("seconds", "seconds", ".1f"), ("pairs/min", "pairs_per_min", ".2f"), ("generated tok/s", "tok_per_s", ".1f"),
             ("prompt tokens", "prompt_tokens", "d"), ("  from prefix cache", "cached_prompt_tokens", "d"),
             ("peak RSS (MB, process tree)", "peak_rss_mb", "d"), ("engine start (s)", "engine_start_s", ".0f")]
    print(f"{'':38}" + "".join(f"{c:>12}" for c in cols))
    for label, key, spec in lines:
        cells = [fmt(res.get(c, {}).get(key), spec) for c in cols]
        if key in ("peak_rss_mb", "engine_start_s") and res.get("raw", {}).get("shared_process"):
            # raw and cai_gen ran in one process on one engine: one figure, centred across both columns
            i = cols.index("raw")
            cells[i:i + 2] = [f"{'<- ' + cells[i + 1] + ' ->':^24}"]
            print(f"{label:38}" + "".join(f"{c:>12}" if len(c) <= 12 else c for c in cells))
            continue
        print(f"{label:38}" + "".join(f"{c:>12}" for c in cells))
    if "kept_after_filters" in res.get("cai_gen", {}) or "pairs" in res.get("cai_gen", {}):
        print(f"{'cai_gen pairs kept after its filters':38}{res['cai_gen'].get('pairs'):>48}")
    for c in cols:
        if "error" in res.get(c, {}) or "note" in res.get(c, {}):
            print(f"{c}: {res[c].get('error') or ''} {res[c].get('note') or ''}".strip())
    cg = res.get("cai_gen", {})
    if "pairs_per_min" in cg:
        if "pairs_per_min" in res.get("naive", {}):
            print(f"cai_gen vs naive: {cg['pairs_per_min'] / res['naive']['pairs_per_min']:.1f}x pairs/min")
        if "pairs_per_min" in res.get("peer", {}):
            print(f"cai_gen vs peer: {cg['pairs_per_min'] / res['peer']['pairs_per_min']:.2f}x pairs/min")
        if "of_raw" in res.get("raw", {}):
            q = res["raw"]["of_raw"]
            print(f"cai_gen tok/s of raw: {q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f}, median of {q['pairs']} "
                  "adjacent pairs)")
    cost = dict(res.get("cost") or {})
    for c in ("naive", "peer"):  # their pairs through cai_gen's filters (no gate: they have none)
        if "kept" in res.get(c, {}):
            cost[c] = {"pairs": res[c]["kept"], "tokens": res[c]["tokens"], "seconds": res[c]["seconds"]}
    if cost:
        cols = [c for c in ("naive", "peer", "gate_on", "gate_off") if c in cost]
        names = {"gate_on": "cai_gen", "gate_off": "gate off"}
        print("\nwhat a kept pair costs: cai_gen's default filters (its token knobs, gate on and off); the naive loop's "
              "and the peer's pairs through the same filters, no gate")
        print(f"{'':38}" + "".join(f"{names.get(c, c):>12}" for c in cols))
        for label, f in (("kept pairs", lambda r: f"{r['pairs']}"), ("generated tokens", lambda r: f"{r['tokens']}"),
                         ("generated tokens per kept pair", lambda r: f"{r['tokens'] / r['pairs']:.0f}" if r["pairs"]
                          else "-"),
                         ("kept pairs per minute", lambda r: f"{r['pairs'] / r['seconds'] * 60:.2f}")):
            print(f"{label:38}" + "".join(f"{f(cost[c]):>12}" for c in cols))

        def per(r):
            return r["tokens"] / r["pairs"] if r.get("pairs") else None

        on, off, peer = (per(cost[c]) if c in cost else None for c in ("gate_on", "gate_off", "peer"))
        if on and peer:
            print(f"cai_gen tokens per kept pair of peer: {on / peer:.2f}")
        if on and off:
            print(f"cai_gen tokens per kept pair, gate on of gate off: {on / off:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small preset: under 15 minutes on 2 CPU cores")
    ap.add_argument("--prompts", type=int, help="prompt rows (built-in set repeated)")
    ap.add_argument("--samples", type=int, help="responses per prompt")
    ap.add_argument("--naive-rows", type=int, help="rows the naive loop runs (it is timed as a rate)")
    ap.add_argument("--respond", type=int, help="max tokens: respond")
    ap.add_argument("--critique", type=int, help="max tokens: critique")
    ap.add_argument("--revise", type=int, help="max tokens: revise")
    ap.add_argument("--eager", action=argparse.BooleanOptionalAction, default=None, help="vLLM enforce_eager")
    ap.add_argument("--blocks", type=int, help="timed blocks of cai_gen, raw, raw, cai_gen after the warm-up")
    ap.add_argument("--skip", default="", help="comma list of systems to skip: naive,peer")
    ap.add_argument("--system", choices=list(SYSTEMS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    preset = PRESETS["quick" if a.quick else "full"]
    for k, v in preset.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.pass_through = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in preset if k != "eager"] + \
        ["--eager" if a.eager else "--no-eager"]

    if a.system:  # child: run one system, write its result
        res = SYSTEMS[a.system](a, Path(a.prompts_file))
        for name in ("naive", "peer"):
            if name in res:
                res = with_kept(name, a, Path(a.prompts_file), res)
        Path(a.result).write_text(json.dumps(res))
        return

    with tempfile.TemporaryDirectory() as d:
        prompts = Path(d) / "prompts.jsonl"
        write_prompts(a.prompts, prompts)
        a.pass_through.append(f"--prompts-file={prompts}")
        res: dict = {}
        t = time.perf_counter()
        for name in ("engine", "naive", "peer"):
            if name not in a.skip.split(","):
                res |= run_system(name, a, prompts)
    report(res)
    print(json.dumps({"config": {k: getattr(a, k) for k in PRESETS["quick"]}, "wall_s": round(time.perf_counter() - t),
                      "results": res}))


if __name__ == "__main__":
    main()
