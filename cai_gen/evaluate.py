"""Does the data teach? Train DPO on a run's train_prefs, test on its (prompt-disjoint) test_prefs, against controls.

    python -m cai_gen.evaluate RUN_DIR [--steps 40] [--lr 5e-6] [--beta 0.1] [--loss-type sigmoid] [--lora] ...
    python -m cai_gen.evaluate RUN_DIR --preset gpu_8b_lora          # an 8B model on a GPU: LoRA (peft), bf16
    python -m cai_gen.evaluate RUN_DIR --benchmark ifeval            # also IFEval, by its own verifiers (benchmark.py)

The model starts as the run's own generator (config.json), or --model DIR. On test_prefs it reports preference
accuracy (the implicit reward beta * (log pi - log pi_ref) of chosen above rejected's) and the mean reward margin,
each with a bootstrap 95% CI over test prompts (a prompt's pairs resampled together), against three controls,
each beaten when the CI of accuracy minus the control's, paired by test pair, is above 0:
  reference   the model before training ranking the pair by its own log-probs (summed, and per token)
  length_only "the longer answer is chosen" or "the shorter", whichever scores more (DPO learns length when it
              can: SimPO, LD-DPO exist because of it)
  shuffled    the same training on labels swapped for a random half of the pairs (should stay near 50%)
Writes RUN_DIR/eval/eval.json and eval.png, and the card's "Does it teach?" section. Exit 2 on bad input or
too few test pairs (with how many are needed), 0 otherwise whatever the verdict.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from . import benchmark, rundir
from .errors import ArgParser, UserError, stop_code, stop_on_sigterm

PRESETS = {
    # the default model on a CPU: full fine-tune. A step on 4 real pairs (~400 tokens each) took ~25 s on 2 cores,
    # so 12 steps x 2 trainings (data + shuffled) keep a default-size run near 10 minutes
    "cpu_small": dict(steps=12, lr=1e-5, beta=0.1, batch_size=4, max_length=384, lora=False, dtype="float32"),
    # an 8B model on one GPU: LoRA adapters (peft), bf16; the reference is the base with adapters off
    "gpu_8b_lora": dict(steps=200, lr=5e-5, beta=0.1, batch_size=8, max_length=1024, lora=True, dtype="bfloat16"),
}
MIN_TEST = 10
# TRL's DPOTrainer loss types (TRL 1.16; its trainer raises on any other, but only at the first step, after the
# model load and the reference pass): checked at parse time so a typo is one line, before anything loads
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def parse(argv: list[str]) -> argparse.Namespace:
    p = ArgParser(prog="python -m cai_gen.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run dir (with preferences/)")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu_small", help="knob defaults (cpu_small)")
    p.add_argument("--model", help="model dir or hub id to start from (default: the run's own model)")
    p.add_argument("--steps", type=int, help="DPO optimizer steps")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--beta", type=float, help="DPO beta (also scales the implicit reward)")
    p.add_argument("--loss-type", default="sigmoid",
                   help="TRL DPO loss_type: sigmoid, ipo, apo_zero, ...; comma-separated losses add up (sigmoid,sft: "
                        "DPO plus the chosen answer's NLL, RPO, which keeps DPO from driving both answers' likelihood down)")
    p.add_argument("--batch-size", type=int, help="pairs per step")
    p.add_argument("--max-length", type=int, help="tokens per prompt + answer")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None, help="train LoRA adapters (peft)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="training dtype")
    p.add_argument("--device", default="auto", help="auto (cuda if present) | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="seeds training, the label shuffle and the bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--min-test", type=int, default=MIN_TEST, help="fewest test pairs for a verdict")
    p.add_argument("--test-size", type=float,
                   help="re-split by the prompts' text with this test share (prompt-disjoint) instead of the run's split")
    p.add_argument("--no-shuffled", dest="shuffled", action="store_false", help="skip the shuffled-label control")
    p.add_argument("--no-behaviour", dest="behaviour", action="store_false",
                   help="skip the behavioural pass (each model answers held-out prompts, the constitution's checks score them)")
    p.add_argument("--prompts", type=Path, help="behaviour: held-out prompts from this JSONL file instead of the test split's")
    p.add_argument("--samples", type=int, default=2, help="behaviour: answers per prompt and model (seeded, the run's sampling)")
    p.add_argument("--no-fluency", dest="fluency", action="store_false",
                   help="behaviour: skip the nonsense guard (each answer's NLL under the reference model)")
    p.add_argument("--max-new-tokens", type=int, help="behaviour: tokens per answer (default: the run's respond max tokens)")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="behaviour, vllm: the engine's memory share (on the CPU build: of host memory; default 0.4)")
    p.add_argument("--answer-backend", default="auto", metavar="KIND",
                   help="behaviour: the backend the models answer through: auto (vllm, else transformers) or any "
                        "backend kind (vllm, transformers, fake, openai, or a backend/NAME.py of the run's include_path, "
                        "with the run's own knobs where the run used it; not openai: a server answers with its own model)")
    benchmark.add_args(p)  # --benchmark ifeval|ifbench, --limit, ...: cai_gen/benchmark.py
    a = p.parse_args(argv)
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    for k in ("steps", "batch_size", "max_length", "bootstrap", "min_test", "lora_r", "samples"):
        if getattr(a, k) <= 0:
            p.error(f"--{k.replace('_', '-')}: must be > 0, got {getattr(a, k)}")
    bad = [t for t in a.loss_type.split(",") if t not in LOSS_TYPES]
    if bad:
        p.error(f"--loss-type: unknown {', '.join(map(repr, bad))} (TRL's: {', '.join(LOSS_TYPES)}; "
                "comma-separated to combine)")
    if a.test_size is not None and not 0 < a.test_size < 1:
        p.error(f"--test-size: must be between 0 and 1, got {a.test_size}")
    return a


def load_pairs(run: Path, test_size: float | None) -> tuple[list[dict], list[dict]]:
    """(train, test) preference rows of a run dir, prompt-disjoint. Read from preferences.jsonl and its `split`
    column: the datasets copy (preferences/) holds the same rows and is absent from a run written with
    output.save_dataset=false."""
    from . import store

    f = run / rundir.PREFS
    if not run.is_dir():
        raise UserError(f"{run}: no such run dir")
    if not f.is_file():
        raise UserError(f"{run}: no preferences.jsonl (not a finished cai_gen run dir)")
    from .yamlio import read_jsonl

    rows = [r for _, r in read_jsonl(f)]
    if test_size is not None:
        rows = store.resplit(rows, test_size, str(f))
    else:
        rows = store.with_splits(rows, store.run_test_size(run), str(f))
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "test"]


def run_model(run: Path, explicit: str | None) -> tuple[str, str]:
    """(path to load, name) of the model to start from: --model, else the run's own generator."""
    from .models import resolve
    from .store import run_config

    if explicit:
        from .models import check
        local = explicit.startswith((".", "/", "~")) or Path(explicit).exists()
        check("path" if local else "hub", explicit, "--model")  # a model that cannot load: one line, before training
        return explicit, explicit
    try:
        m = run_config(run)["model"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{run}/config.json: cannot tell the run's model; pass --model DIR") from None
    try:
        return resolve(m.get("source"), m.get("path"), m.get("cache_dir")), m["name"]
    except UserError as e:
        raise UserError(f"{run}: the run's model {m.get('name')!r} is not available here ({e}); pass --model DIR") \
            from None


def bootstrap(xs: list[float], n: int, seed: int, groups: list | None = None) -> tuple[float, list[float]]:
    """Mean and percentile 95% CI of the mean over n resamples of the groups (a test prompt's pairs go together;
    no groups: each item alone)."""
    from .stats import cluster_bootstrap

    return cluster_bootstrap(xs, list(range(len(xs))) if groups is None else groups, n, seed)


def ranking(rows: list[dict], acc: list[float], margins: list[float], ref: list[tuple], n: int, seed: int,
            shuffled: tuple[list[float], list[float]] | None = None) -> dict:
    """The ranking metrics on the test pairs `rows`: accuracy and margin (per pair, from the trained model), the
    controls, and each control's paired difference. Every CI resamples test prompts, not pairs (the pairs of one
    prompt are not independent), and a control is compared pair by pair: accuracy minus the control's on the
    same pairs, its CI over the same prompt resamples. `ref`: the reference's (sum log p chosen, tokens, sum log
    p rejected, tokens) per pair; `shuffled`: the shuffled-label model's (accuracy, margin) per pair."""
    from .backends import last_text as text
    from .stats import length_only

    groups = [r.get("prompt_id") or r["id"] for r in rows]
    per = {"reference": [float(c > j) for c, _, j, _ in ref],
           "reference_per_token": [float(c / nc > j / nj) for c, nc, j, nj in ref]}
    per["length_only"], direction = length_only([len(text(r["chosen"]).split()) for r in rows],
                                                [len(text(r["rejected"]).split()) for r in rows])
    if shuffled:
        per["shuffled"] = shuffled[0]
    mean = {k: round(sum(v) / len(v), 4) for k, v in per.items()}
    (am, aci), (mm, mci) = bootstrap(acc, n, seed, groups), bootstrap(margins, n, seed, groups)
    res = {"accuracy": round(am, 4), "accuracy_ci": aci, "margin": round(mm, 4), "margin_ci": mci,
           "ci_over": "prompts", "test_prompts": len(set(groups))}

    def minus(k: str) -> dict:
        d, ci = bootstrap([x - y for x, y in zip(acc, per[k])], n, seed, groups)
        return {"diff": round(d, 4), "ci": ci}

    # the reference ranks by summed or per-token log-prob: the stronger of the two is the control
    best = max(("reference", "reference_per_token"), key=lambda k: mean[k])
    c = {"reference": {"accuracy": mean["reference"], "accuracy_per_token": mean["reference_per_token"],
                       "minus": minus(best)},
         "length_only": {"accuracy": mean["length_only"], "direction": direction, "minus": minus("length_only")}}
    if shuffled:
        c["shuffled"] = {"accuracy": mean["shuffled"], "margin": round(sum(shuffled[1]) / len(shuffled[1]), 4),
                         "minus": minus("shuffled")}
    res["controls"] = c
    res["verdict"] = verdict(res)
    return res


def fitting(tok, rows: list[dict], max_length: int) -> tuple[list[dict], int]:
    """The pairs whose prompt leaves room for an answer token within max_length, and how many do not. A prompt that
    fills max_length alone scores no answer token: both models would score 0 and count as a tie, not a pair."""
    keep = [r for r in rows
            if len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                           return_dict=False)) < max_length]
    return keep, len(rows) - len(keep)


def logps(model, tok, rows: list[dict], max_length: int, device: str) -> list[tuple[float, int, float, int]]:
    """Per pair: (sum log p(chosen), chosen tokens, sum log p(rejected), rejected tokens) under `model`."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for r in rows:
            res = []
            for side in ("chosen", "rejected"):
                p_ids = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
                ids = tok.apply_chat_template(r["prompt"] + r[side], tokenize=True, return_dict=False)[:max_length]
                n = max(len(ids) - len(p_ids), 1)
                x = torch.tensor([ids], device=device)
                lp = model(input_ids=x).logits[0, :-1].float().log_softmax(-1)
                tgt = x[0, 1:]
                tok_lp = lp.gather(1, tgt[:, None])[:, 0][len(p_ids) - 1:]
                res += [float(tok_lp.sum()), n]
            out.append(tuple(res))
    return out


def train(a, model_path: str, rows: list[dict], out_dir: Path, shuffle: bool):
    """DPO with TRL on `rows` (labels swapped on a seeded random half when shuffle); returns the trained model."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()  # TRL's tokenizing passes would bury the training bar
    rng = random.Random(a.seed)
    data = []
    for r in rows:
        c, j = r["chosen"], r["rejected"]
        if shuffle and rng.random() < 0.5:
            c, j = j, c
        data.append({"prompt": r["prompt"], "chosen": c, "rejected": j})
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, a.dtype))
    peft = None
    if a.lora:
        from peft import LoraConfig
        peft = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules="all-linear")
    args = DPOConfig(output_dir=str(out_dir), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
                     learning_rate=a.lr, beta=a.beta, loss_type=a.loss_type.split(","), max_length=a.max_length,
                     use_cpu=a.device == "cpu", report_to="none", save_strategy="no", logging_steps=max(1, a.steps // 5),
                     seed=a.seed, bf16=a.dtype == "bfloat16" and a.device != "cpu",
                     precompute_ref_log_probs=True)  # one reference pass up front, not one per step
    trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(data), processing_class=tok,
                         peft_config=peft)
    trainer.train()
    if a.behaviour or a.benchmark:  # the behavioural / benchmark pass loads it into an engine (LoRA merged in)
        model = trainer.model.merge_and_unload() if a.lora else trainer.model
        model.save_pretrained(out_dir / "model")
        tok.save_pretrained(out_dir / "model")
    return trainer.model


def held_out(a, run: Path):
    """(constitution, held-out prompt records) for the behavioural pass: --prompts FILE, else the run's own prompt
    set's test side (the prompts no training pair came from). Bad input is one line, before any training."""
    from . import behaviour, constitution as constitution_mod, prompts as prompts_mod, store

    f = run / rundir.CONSTITUTION
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        data.pop("ref", None)
        const = constitution_mod.Constitution.model_validate(data)
    except (OSError, ValueError) as e:
        raise UserError(f"{f}: cannot read the run's constitution ({type(e).__name__}); --no-behaviour skips the "
                        "behavioural pass") from None
    if not behaviour.checkable(const):
        raise NoChecks(f"{const.ref}: no principle has a check the behavioural pass can run (it scores answers with "
                       "the constitution's checks; add `checks:`, see docs/concepts/checks.md); --no-behaviour skips it")
    if a.prompts:
        recs = prompts_mod.load(None, str(a.prompts), None)
    else:
        cfg = store.run_config(run)
        p = cfg.get("prompts") or {}
        try:
            recs = prompts_mod.load(p.get("name"), p.get("path"), p.get("dataset"), p.get("split", "train"),
                                    p.get("column", "prompt"), p.get("id_column"), p.get("domain_column"), None,
                                    cfg.get("include_path") or (), messages_column=p.get("messages_column"),
                                    config=p.get("config"), revision=p.get("revision"), data_files=p.get("data_files"),
                                    keep_duplicates=p.get("keep_duplicates", False), kind=p.get("kind"))
        except UserError as e:
            raise UserError(f"{run}: cannot reload the run's prompts ({e}); pass --prompts FILE") from None
        ts = a.test_size if a.test_size is not None else store.run_test_size(run)
        recs = [r for r in recs if store.prompt_side(r, ts) == "test"]
    if not recs:
        raise UserError(f"{a.prompts or run}: no held-out prompts for the behavioural pass "
                        "(a test split with prompts, or --prompts FILE)")
    return const, recs


def in_train(recs: list, train_rows: list[dict]) -> int:
    """How many held-out prompts a training pair came from: prompts the split would group with a train_prefs
    row (ids.groups: the same opening or answered user turn, as ids.norm compares text). A --prompts FILE drawn
    from the run's own prompt set scores the model on what it was trained on: the behaviour rates would flatter
    it."""
    from .ids import groups

    convs = [[m["content"] for m in r["prompt"] if m.get("role") == "user"] for r in train_rows]
    keys = groups(convs + [r.users() for r in recs])
    seen = set(keys[:len(convs)])
    return sum(k in seen for k in keys[len(convs):])


class NoChecks(UserError):
    """The constitution has nothing the behavioural pass can score: the ranking metrics are still reported."""


ENGINES = ("vllm", "transformers", "fake")  # load the model dir they are given, with their default knobs


def answer_backend(a, cfg: dict) -> tuple[str, dict]:
    """--answer-backend's kind and its backend config: auto is vllm where installed, else transformers; any
    registered kind, a backend/NAME.py of the run's include_path too (loaded here). The engines answer with their
    default knobs (vllm eager, at --gpu-memory-utilization); another kind takes the run's own backend knobs where the
    run used it (a server's URL, say). An unknown kind: one line naming the kinds there are."""
    from . import backends

    kind = a.answer_backend
    if kind == "auto":
        import importlib.util
        kind = "vllm" if importlib.util.find_spec("vllm") else "transformers"
    backends.load(cfg.get("include_path") or ())
    if kind not in backends.configs():
        raise UserError(f"--answer-backend: unknown backend {kind!r} (use auto, {', '.join(backends.configs())})")
    if kind == "openai":  # it would answer for every model with the one the server serves, whatever dir it is given
        raise UserError("--answer-backend openai: a server answers with the model it serves, not the models trained "
                        "here; use vllm or transformers")
    run_b = cfg.get("backend") or {}
    if kind == "vllm":
        knobs = {"kind": kind, "enforce_eager": True, "gpu_memory_utilization": a.gpu_memory_utilization}
    elif kind not in ENGINES and run_b.get("kind") == kind:
        knobs = dict(run_b)
    else:
        knobs = {"kind": kind}
    from .config import validate

    try:
        validate(knobs, backends.config_class(kind))
    except UserError as e:  # a kind that needs knobs the run did not give it (openai's base_url, say)
        raise UserError(f"--answer-backend {kind}: {e}") from None
    return kind, knobs


def answers(a, run: Path, model_dir: str, name: str, recs: list) -> list[str]:
    """The model's own answers: K seeded samples per prompt through cai_gen's backends, with the run's respond
    sampling (temperature and top-p drawn per prompt and sample, the same draws for every model: paired)."""
    from .backends import Params, config, make_backend, seed_of
    from .config import ModelCfg
    from .rows import _draw
    from .store import run_config

    cfg = run_config(run)
    smp = cfg.get("sampling") or {}
    mt = a.max_new_tokens or (smp.get("max_tokens") or {}).get("respond") or 256
    kind, knobs = answer_backend(a, cfg)
    m = ModelCfg(**{**(cfg.get("model") or {"name": name}), "name": name, "source": "path", "path": model_dir})
    bcfg = config(knobs)
    opts = bcfg.options(m, a.seed) | ({"dtype": a.dtype} if kind in ("vllm", "transformers") else {})
    convs, params = [], []
    for r in recs:
        for k in range(a.samples):
            rng = random.Random(json.dumps([a.seed, "eval", r.id, k]))
            params.append(Params(_draw(rng, smp.get("temperature", (0.6, 1.0))), _draw(rng, smp.get("top_p", (0.9, 1.0))),
                                 mt, seed_of(a.seed, "eval", r.id, k)))
            convs.append(r.messages())
    from . import enginelog
    from .progress import Tracker

    tracker = Tracker()  # the run's own progress bar (answers, tok/s, ETA); a summary line when not a terminal
    # the engine's own log lines go to eval/engine.log (as a run's go to engine.log); the terminal shows progress
    with enginelog.to_log(run / rundir.EVAL / rundir.ENGINE_LOG, tracker.console) if kind != "fake" else nullcontext():
        try:
            backend = make_backend(kind, model_dir, name, opts)
        except UserError:
            raise
        except Exception as e:  # a model an engine cannot load: one line
            raise UserError(f"{model_dir}: the {kind} engine cannot load it ({type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None
        try:
            with tracker.stage(f"answers: {name}", len(convs)) as on_done:
                gens = backend.generate(convs, params, on_done)
            return [g.text.strip() for g in gens]
        finally:
            backend.close()


def evaluate(a) -> dict:
    t0 = time.perf_counter()
    # the run dir, its model and the benchmark's data first: a mistake there is one line before the ~9 s of
    # importing TRL, transformers and torch
    train_rows, test_rows = load_pairs(a.run, a.test_size)
    model_path, model_name = run_model(a.run, a.model)
    benchmark.check(a)  # the benchmark's data pinned and present: one line before any training
    if a.behaviour or a.benchmark:
        from .store import run_config

        answer_backend(a, run_config(a.run))  # an unknown or unconfigured --answer-backend: one line, before training
    try:
        import trl  # noqa: F401
        if a.lora:
            import peft  # noqa: F401
    except ImportError as e:
        raise UserError(f"evaluate needs TRL{' and peft' if a.lora else ''} ({e.name} is missing): "
                        "pip install -e '.[eval]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import behaviour

    held, no_checks = None, None
    if a.behaviour:
        try:
            held = held_out(a, a.run)
        except NoChecks as e:
            no_checks = str(e)
    tok = AutoTokenizer.from_pretrained(model_path)
    test_rows, too_long = fitting(tok, test_rows, a.max_length)
    n_test, n_train = len(test_rows), len(train_rows)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    a.device = device
    cfg = {k: getattr(a, k) for k in ("preset", "steps", "lr", "beta", "loss_type", "batch_size", "max_length", "lora",
                                      "lora_r", "dtype", "device", "seed", "bootstrap", "min_test", "test_size",
                                      "samples")}
    res = {"model": model_name, "n_train": n_train, "n_test": n_test, "config": cfg}
    if too_long:  # left out of the ranking metrics, counted: their prompt alone fills --max-length
        res["test_skipped_long_prompt"] = too_long
    if no_checks:
        res["behaviour_skipped"] = no_checks
    rank = n_test >= a.min_test
    if n_train < 1:
        res["verdict"] = "no training pairs"
        return res
    if not rank:
        res["verdict"] = f"too few test pairs: {n_test}, need {a.min_test}"
        if held is None and not a.benchmark:
            return res
    res["test_ids"] = [r["id"] for r in test_rows]
    timing = {}
    if rank:
        ref_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, a.dtype)).to(device)
        t = time.perf_counter()
        ref = logps(ref_model, tok, test_rows, a.max_length, device)
        del ref_model
        timing["reference_s"] = round(time.perf_counter() - t, 1)

    def trained(shuffle: bool):
        t1 = time.perf_counter()
        model = train(a, model_path, train_rows, a.run / "eval" / ("shuffled" if shuffle else "dpo"), shuffle)
        timing["shuffled_s" if shuffle else "train_s"] = round(time.perf_counter() - t1, 1)
        if not rank:
            return None, None
        model.to(device)
        pol = logps(model, tok, test_rows, a.max_length, device)
        margins = [a.beta * ((pc - rc) - (pj - rj)) for (pc, _, pj, _), (rc, _, rj, _) in zip(pol, ref)]
        return [float(m > 0) for m in margins], margins

    acc, margins = trained(False)
    if a.shuffled:
        sacc, smargins = trained(True)
    if rank:
        res |= ranking(test_rows, acc, margins, ref, a.bootstrap, a.seed, (sacc, smargins) if a.shuffled else None)
    if held is not None:
        const, recs = held
        t = time.perf_counter()
        models = {"reference": model_path, "trained": str(a.run / "eval" / "dpo" / "model")}
        if a.shuffled:
            models["shuffled"] = str(a.run / "eval" / "shuffled" / "model")
        said = {m: answers(a, a.run, d, f"{model_name} ({m})", recs) for m, d in models.items()}
        nll = None
        if a.fluency:  # the nonsense guard: every model's answers scored by the reference model
            from . import fluency
            from .progress import Tracker

            nll = fluency.nll(model_path, recs, said, a.samples, a.device, tracker=Tracker())
        res["behaviour"] = behaviour.report(const, recs, said, a.samples, a.bootstrap, a.seed, nll)
        res["behaviour"]["source"] = str(a.prompts) if a.prompts else "the run's test split"
        res["behaviour"]["in_train"] = in_train(recs, train_rows)
        write_answers(a.run / rundir.EVAL / rundir.ANSWERS, recs, said, a.samples)
        timing["behaviour_s"] = round(time.perf_counter() - t, 1)
    if a.benchmark:  # IFEval / IFBench: the same models answer the benchmark's prompts, its own verifiers score them
        t = time.perf_counter()
        res["benchmark"] = benchmark.run(a, model_path,
                                         lambda b, d, m, recs: answers(b, a.run, d, f"{model_name} ({m})", recs))
        timing["benchmark_s"] = round(time.perf_counter() - t, 1)
    res["timing"] = timing | {"total_s": round(time.perf_counter() - t0, 1)}
    return res


def write_answers(path: Path, recs: list, said: dict[str, list[str]], k: int) -> None:
    """Every answer the behavioural pass scored, to read (eval/answers.jsonl)."""
    from .store import write_jsonl

    write_jsonl(path, [{"prompt_id": r.id, "sample": j, "prompt": r.messages(),
                        **{m: t[i * k + j] for m, t in said.items()}} for i, r in enumerate(recs) for j in range(k)])


def verdict(res: dict) -> str:
    """Beats a control when the CI of accuracy minus the control's, paired by test pair, is above 0."""
    c = res["controls"]
    if c["length_only"]["minus"]["ci"][0] <= 0:
        return "does not beat the length-only predictor"
    if c["reference"]["minus"]["ci"][0] <= 0:
        return "does not beat the reference model's own ranking"
    if "shuffled" in c and c["shuffled"]["minus"]["ci"][0] <= 0:
        return "does not beat training on shuffled labels"
    return "beats every control"


def write(run: Path, res: dict) -> None:
    from . import plots, report
    from .store import atomic_write

    out = run / rundir.EVAL
    out.mkdir(exist_ok=True)
    if "accuracy" in res:
        res["plot"] = plots.evaluation(res, out)
    if res.get("behaviour"):
        res["behaviour"]["plot"] = plots.behaviour(res["behaviour"], out)
    atomic_write(out / rundir.EVAL_JSON, json.dumps(res, indent=2) + "\n")
    if (run / rundir.SUMMARY).is_file():
        report.build(run)  # the card gains its "Does it teach?" section from eval/eval.json


def main(argv: list[str]) -> int:
    a = parse(argv)
    try:
        res = evaluate(a)
        write(a.run, res)
    except UserError as e:
        print(f"cai_gen.evaluate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (errors.Terminated): the engine closed on the way out
        print("cai_gen.evaluate: interrupted", file=sys.stderr)
        return stop_code(e)
    b = res.get("behaviour")
    if b:
        print(f"cai_gen.evaluate: behaviour on {b['prompts']} held-out prompts x {b['samples']}: {b['verdict']}")
        if a.prompts or b["in_train"]:
            print(f"cai_gen.evaluate: {b['in_train']} of {b['prompts']} prompts in {b['source']} are in the run's "
                  f"train split (a training pair came from them{': not held out' if b['in_train'] else ''})",
                  file=sys.stderr if b["in_train"] else sys.stdout)
    for r in (res.get("benchmark") or {}).values():
        print(f"cai_gen.evaluate: {r['verdict']}")
    if res.get("behaviour_skipped"):
        print(f"cai_gen.evaluate: behaviour skipped: {res['behaviour_skipped']}", file=sys.stderr)
    if "accuracy" not in res:
        print(f"cai_gen.evaluate: {a.run}: {res['verdict']} (test_prefs has {res['n_test']}; a bigger run, or "
              f"--test-size to re-split by prompt)", file=sys.stderr)
        return 0 if b or res.get("benchmark") else 2
    code = 2 if res.get("behaviour_skipped") else 0  # the ranking metrics are reported, the pass could not run
    c = res["controls"]
    if res.get("test_skipped_long_prompt"):
        print(f"cai_gen.evaluate: {res['test_skipped_long_prompt']} test pairs left out: the prompt alone fills "
              f"--max-length {a.max_length}", file=sys.stderr)
    print(f"cai_gen.evaluate: {res['verdict']}: accuracy {res['accuracy']:.3f} {res['accuracy_ci']} on {res['n_test']} "
          f"test pairs, CI over {res['test_prompts']} prompts (reference {c['reference']['accuracy']:.3f}, length-only "
          f"{c['length_only']['accuracy']:.3f} ({c['length_only']['direction']} is chosen)"
          + (f", shuffled {c['shuffled']['accuracy']:.3f}" if "shuffled" in c else "") + f"); {a.run / 'eval'}")
    return code


if __name__ == "__main__":
    stop_on_sigterm()
    sys.exit(main(sys.argv[1:]))
