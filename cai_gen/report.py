"""The run's report: dataset card README.md + plots/ in the run dir, and the closing terminal summary.

Everything is computed from the run dir's files (stats.py), so `python -m cai_gen.report RUN_DIR` rebuilds the
same card for any finished run, and the figures in the card are the figures of the files next to it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import hubcard, plots, rundir, stats
from .errors import UserError
from .store import atomic_write


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(summary: dict) -> Table:
    rep = summary.get("report") or {}
    t = Table(title=f"cai_gen: {summary['kept']} pairs kept of {summary['rows']} rows", show_header=True)
    # one line per row at 80 columns: short labels that never wrap (a long note goes below the table: notes())
    t.add_column("what", no_wrap=True)
    t.add_column("count", justify="right", no_wrap=True)
    t.add_row("prompts", str(summary.get("prompts", "")))
    t.add_row("rows (prompt x sample)", str(summary["rows"]))
    t.add_row("[green]pairs kept", f"[green]{summary['kept']}")
    if rep.get("gate"):
        g = rep["gate"]
        if g["yes"] + g["no"]:
            t.add_row("gate YES / NO (the model's)", f"{g['yes']} / {g['no']}")
        if g.get("by_checks"):
            t.add_row("gate YES / NO (by checks)", "{} / {}".format(*(sum(v[k] for v in g["by_checks"].values())
                                                                      for k in ("YES", "NO"))))
        bad = rep.get("no_violation_failing") or 0  # written as KTO undesirable, no SFT row
        t.add_row("no violation (original kept: SFT, KTO)", str(summary.get("no_violation", 0) - bad))
        if bad:
            t.add_row("[yellow]gate NO, original fails a check (KTO undesirable, no SFT)", f"[yellow]{bad}")
    if rep.get("checks"):
        c = rep["checks"]
        t.add_row("[green]verified pairs (a check fixed)", f"[green]{c['verified']}")
    for reason, n in summary["reasons"].items():
        t.add_row(f"[red]filtered: {reason}", f"[red]{n}")
    for flag, n in summary["flags"].items():
        t.add_row(f"[yellow]kept, flagged: {flag}", f"[yellow]{n}")
    if rep.get("judge"):
        j = rep["judge"]
        t.add_row("judge agrees (both orders)", _pct(j["agreement"]))
        t.add_row("judge inconsistent (position bias)", _pct(j["position_bias"]))
    if rep.get("review"):
        r = rep["review"]
        t.add_row("expert-reviewed pairs", str(r["expert_reviewed"]))
        fast = sum(x["too_fast"] for x in (r.get("reviewers") or {}).values())
        if fast:
            t.add_row("[yellow]review verdicts too_fast", f"[yellow]{fast}")
        if r["agreement"]["comparisons"]:
            t.add_row("reviewer agreement / kappa", f"{_pct(r['agreement']['agreement'])} / {r['agreement']['kappa']}")
    if rep.get("length_words") and summary["kept"]:  # no pair: no lengths to compare (it printed "None / None")
        lw = rep["length_words"]
        t.add_row("mean words chosen / rejected", f"{lw['chosen']['mean']} / {lw['rejected']['mean']}")
        t.add_row("chosen longer than rejected", _pct(rep.get("chosen_longer")))
        med = rep["similarity"]["kept"]["median"]  # a mean of two floats when the count is even: 0.08424999999999999
        t.add_row("median similarity (kept)", "n/a" if med is None else f"{med:.3f}")
    stages = summary.get("stages", {})
    gen = sum(s["completion_tokens"] for s in stages.values())
    secs = summary.get("generation_seconds") or sum(s["seconds"] for s in stages.values())
    t.add_row("tokens generated", f"{gen:,}")
    t.add_row("generation time", f"{secs:.1f}s ({gen / max(secs, 1e-6):.0f} tok/s)")
    t.add_row("wall time", f"{summary.get('seconds', 0):.1f}s")
    return t


def notes(summary: dict) -> list[str]:
    """What the table cannot say in a cell: printed below it as paragraphs that wrap between words."""
    g = (summary.get("report") or {}).get("gate") or {}
    return [f"gate warning: {g['warning']}"] if g.get("warning") else []


def print_summary(summary: dict, out: Path, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    console.print(table(summary))
    for note in notes(summary):
        console.print(Text(note, style="yellow"))
    # paths as one soft-wrapped line each (the terminal wraps them, a copy pastes whole), never read as markup
    console.print(Text.assemble(("run dir", "bold"), f": {out}"), soft_wrap=True)
    console.print(Text.assemble(("card", "bold"), f": {out / rundir.CARD}"), soft_wrap=True)


def nothing_kept(summary: dict, out: Path) -> str | None:
    """Why a run kept no pair, in one line (None when it kept some): what became of its rows. The run's files and
    card are written either way; the entry point exits non-zero with this line."""
    if summary["kept"]:
        return None
    if not summary["rows"]:
        return "0 pairs kept: there were no prompts to run (prompts, limit, shard)"
    parts = [f"the gate found no violation in {summary['no_violation']} (originals kept as SFT and KTO rows)"] \
        if summary.get("no_violation") else []
    parts += [f"filtered {k}: {v}" for k, v in summary["reasons"].items()]
    return (f"0 pairs kept of {summary['rows']} rows: {'; '.join(parts) or 'none filtered'}. Each filtered row's "
            f"stage and reason: {out / rundir.REJECTED}")


def _md_table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
           ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]


def card(summary: dict, st: dict, cfg: dict, const: dict, figs: list[tuple[str, str]], out: Path) -> str:
    lw, lc = st["length_words"], st["length_chars"]
    L = [hubcard.front_matter(out, cfg, const, summary["model"]), "",
         f"# CAI preference data: {const['name']} on {summary['model']}", "",
         f"Generated by cai_gen on {summary['created_at']}: the model answered each prompt, critiqued its answer "
         "against a sampled principle, and revised it. `chosen` = final revision, `rejected` = original answer"
         + (" (swapped where the judge preferred the original)." if cfg.get("judge", {}).get("on_disagrees") == "swap"
            and cfg["judge"].get("enabled") else "."), "",
         "## Load it", "", "This folder is a dataset repository: `load_dataset` reads it from disk, or from the Hub "
         "once `python -m cai_gen.push RUN_DIR USER/NAME` put it there.", "", "```python",
         "from datasets import load_dataset",
         "ds = load_dataset('RUN_DIR')  # train_prefs, test_prefs (prompt-disjoint)",
         "sft, kto = load_dataset('RUN_DIR', 'sft'), load_dataset('RUN_DIR', 'kto')  # train_sft, test_sft; train, test",
         "# TRL: DPOTrainer(model, args, train_dataset=ds['train_prefs'], eval_dataset=ds['test_prefs'], processing_class=tok)",
         "```", "", "```bash",
         "trl dpo --model_name_or_path MODEL --dataset_name RUN_DIR --dataset_train_split train_prefs "
         "--dataset_test_split test_prefs --output_dir OUT",
         "trl kto --model_name_or_path MODEL --dataset_name RUN_DIR --dataset_config kto --output_dir OUT",
         "```", "", "`load_from_disk('preferences')` (the four splits) and `load_from_disk('kto')` still work.", "",
         "## Counts", ""]
    bad = st.get("no_violation_failing") or 0
    rows = [["prompts", summary.get("prompts", "")], ["rows (prompt x sample)", summary["rows"]],
            ["pairs kept", st["kept"]], ["no violation (gate said NO; original kept as SFT and KTO desirable)",
                                         st["no_violation"] - bad]]
    if bad:  # the gate's NO was about another principle: what was written is a KTO undesirable row, no SFT row
        rows.append(["gate said NO but the original fails a check (KTO undesirable, no SFT row)", bad])
    rows.append(["rows filtered", st["filtered"]])
    rows += [[f"filtered: {k}", v] for k, v in st["reasons"].items()]
    rows += [[f"kept, flagged: {k}", v] for k, v in st["flags"].items()]
    L += _md_table(["what", "count"], rows)
    if st.get("checks"):
        L += checks_section(st["checks"])
    if st.get("gate"):
        L += gate_section(st["gate"])
    e = st["edit_ratio"]
    if e["n"]:
        L += ["", "## Edit ratio", "", "Word-level share of each revision that is new (0 = the original's words, 1 = all "
              f"new); revision style `{cfg.get('revision_style') or const.get('revision_style', 'free')}`. "
              f"Mean {e['mean']}, median {e['median']}, p10 {e['p10']}, p90 {e['p90']}.", ""]
        L += _md_table(["bin"] + [f"{a:.1f}-{b:.1f}" for a, b in zip(e["bins"], e["bins"][1:])], [["pairs"] + e["hist"]])
    if st["judge"]:
        j = st["judge"]
        L += ["", "## Judge", "", f"Each kept pair was judged twice by `{cfg['judge'].get('model') and cfg['judge']['model']['name'] or summary['model']}`, "
              "with the original first and with the revision first. Agreement = the revision won both orders; "
              "inconsistent = the verdict followed the position (position bias).", ""]
        L += _md_table(["outcome", "pairs", "share"], [[k, v, _pct(v / j["judged"])] for k, v in j["counts"].items()])
        L += ["", f"Judged: {j['judged']}. Agreement rate: **{_pct(j['agreement'])}**. "
              f"Position-bias rate: {_pct(j['position_bias'])}."]
    if st["reward"]:
        m = st["reward"]["margin"]
        L += ["", "## Reward model", "", f"Model `{cfg['reward']['model']}`, threshold {cfg['reward']['threshold']}, "
              f"action `{cfg['reward']['action']}`. Margin mean {m['mean']}, median {m['median']}; "
              f"{st['reward']['below_threshold']} pairs under the threshold."]
    if st.get("review"):
        L += review_section(st["review"])
    if st.get("eval"):
        L += eval_section(st["eval"])
    L += ["", "## Length (length bias is a known DPO failure)", ""]
    L += _md_table(["", "mean words", "median words", "p90 words", "mean chars"],
                   [[k, lw[k]["mean"], lw[k]["median"], lw[k]["p90"], lc[k]["mean"]] for k in ("chosen", "rejected")])
    L += ["", f"Chosen is longer than rejected in {_pct(st['chosen_longer'])} of pairs; \"the longer answer is "
          f"chosen\" alone scores {_pct(st['length_only_accuracy'])} accuracy; Cohen's d of chosen vs rejected length "
          f"(words) {st['cohen_d']}. Near 50% and near 0 mean length cannot stand in for content "
          "(`output.length_balance=match` subsamples to that).", "",
          "## Similarity of revision to original", ""]
    s = st["similarity"]
    L += _md_table(["", "pairs", "mean", "median", "p10", "p90"],
                   [[k, s[k]["n"], s[k]["mean"], s[k]["median"], s[k]["p10"], s[k]["p90"]] for k in ("kept", "filtered")])
    L += [""] + _md_table(["bin"] + [f"{a:.1f}-{b:.1f}" for a, b in zip(s["bins"], s["bins"][1:])],
                          [["kept"] + s["hist_kept"], ["filtered"] + s["hist_filtered"]])
    L += ["", "## Plots", ""] + [f"![{t}]({f})" for t, f in figs]
    L += ["", "## Constitution", "", f"`{const['ref']}` (name {const['name']}, version {const['version']}): "
          f"{const.get('description', '').strip()}", ""]
    L += _md_table(["principle", "weight", "used in kept pairs", "critique request"],
                   [[p["id"], p["weight"], st["principles"].get(p["id"], 0), p["critique"].strip().replace("\n", " ")
                     .replace("|", "\\|")] for p in const["principles"]])
    L += ["", "## Domains", ""] + _md_table(["domain", "pairs"], [[d, n] for d, n in st["domains"].items()])
    L += [""] + hubcard.pairs(out) + hubcard.examples(out) + hubcard.reproduce(out)
    L += ["## Files", "",
          "- `data/`: parquet per split, mapped by the `configs` above (what `load_dataset` and the Hub read); "
          "`python -m cai_gen.push` uploads it with this card, `plots/`, `eval/`, the JSON setup files, "
          "`rejected.jsonl` and `no_violation.jsonl`",
          "- `preferences/`, `preferences.jsonl`: prompt / chosen / rejected (conversational) + provenance",
          "- `kto/`, `kto.jsonl`: unpaired prompt / completion / label", "- `trace.jsonl`: every stage's input and output per row",
          "- `rejected.jsonl`: filtered pairs with the reason", "- `plots/`: the figures above",
          "- `no_violation.jsonl`: rows the gate found nothing to fix in (original, critique, P(YES))",
          "- `sft.jsonl`: `messages` = prompt + final revision, and the no-violation originals",
          "- `review_queue.jsonl`: pairs routed to expert review; `review.sqlite`, `reviewed/`: verdicts and the merged dataset",
          "- `summary.json` (counts and these statistics), `config.json`, `constitution.json`, `.hydra/`: the exact setup", "",
          "## Config", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    return "\n".join(L)


def eval_section(e: dict) -> list[str]:
    L = ["", "## Does it teach?", "", f"`python -m cai_gen.evaluate` trained DPO from `{e['model']}` on `train_prefs` "
         f"({e['n_train']} pairs) and tested on the prompt-disjoint `test_prefs` ({e['n_test']} pairs).", "",
         f"**Verdict: {e['verdict']}.**", ""]
    if e.get("behaviour"):
        L += behaviour_section(e["behaviour"])
    if e.get("behaviour_skipped"):
        L += [f"Behavioural pass skipped: {e['behaviour_skipped']}.", ""]
    if "accuracy" not in e:
        return L
    c = e["controls"]
    rows = [["DPO on this data", e["accuracy"], e["accuracy_ci"], e["margin"]],
            ["reference model, summed log-prob", c["reference"]["accuracy"], "", ""],
            ["reference model, per-token log-prob", c["reference"]["accuracy_per_token"], "", ""],
            [f"length only ({c['length_only'].get('direction', 'longer')} is chosen)", c["length_only"]["accuracy"], "", ""]]
    if "shuffled" in c:
        rows.append(["DPO on shuffled labels", c["shuffled"]["accuracy"], "", c["shuffled"]["margin"]])
    L += _md_table(["", "preference accuracy", "95% CI", "mean reward margin"], rows)
    cf = e["config"]
    L += ["", f"Training: {cf['steps']} steps, lr {cf['lr']}, beta {cf['beta']}, loss `{cf['loss_type']}`, "
          f"{'LoRA r=' + str(cf['lora_r']) if cf['lora'] else 'full fine-tune'}, {cf['dtype']} on {cf['device']}; "
          f"{e['timing']['total_s']} s in all. Accuracy CI by bootstrap over test prompts (a prompt's pairs "
          "together); a control is beaten when the CI of accuracy minus the control's, pair by pair, is above 0.", "", "![Does it teach?](eval/eval.png)"]
    return L


def behaviour_section(b: dict) -> list[str]:
    """The trained model's own answers on held-out prompts, scored by the constitution's checks."""
    L = ["### Behaviour: violations of the constitution on held-out prompts", "",
         f"Each model answered {b['prompts']} held-out prompts ({b['source']}) {b['samples']} times (seeded, the run's "
         "sampling); the constitution's checks scored every answer. Rates with bootstrap 95% CIs over prompts; the "
         "change from the reference is paired by prompt.", "", f"**Behaviour: {b['verdict']}.**", ""]
    ms = b["models"]
    head = ["principle"] + [m for m in ms] + [f"{m} - reference" for m in ms if m != "reference"]

    def cell(r):
        return "n/a" if r["rate"] is None else f"{100 * r['rate']:.0f}% [{100 * r['ci'][0]:.0f}, {100 * r['ci'][1]:.0f}]"

    def diff(d):
        return "n/a" if d["diff"] is None else f"{100 * d['diff']:+.0f} [{100 * d['ci'][0]:+.0f}, {100 * d['ci'][1]:+.0f}]"
    rows = [["overall"] + [cell(ms[m]["overall"]) for m in ms]
            + [diff(ms[m]["minus_reference"]["overall"]) for m in ms if m != "reference"]]
    for p in b["principles"]:
        rows.append([p] + [cell(ms[m]["per_principle"][p]) for m in ms]
                    + [diff(ms[m]["minus_reference"]["per_principle"][p]) for m in ms if m != "reference"])
    L += _md_table(head, rows)
    g = ["mean_words", "empty", "repetitive", "distinct_2", "refusal"]
    if all("nonsense" in ms[m]["guards"] for m in ms):  # each answer's NLL under the reference (fluency.py)
        g += ["nonsense", "mean_nll"]
    L += ["", "Collapse guards (a model that says nothing passes every check; nonsense: answers more surprising to "
          "the reference model than 95% of its own):", ""]
    L += _md_table(["model"] + g, [[m] + [ms[m]["guards"][k] for k in g] for m in ms])
    if b.get("plot"):
        L += ["", f"![Behaviour]({b['plot']})"]
    return L + [""]


def checks_section(c: dict) -> list[str]:
    L = ["", "## Checks", "", "The constitution's checks (cai_gen/checks) ran on every original and revision: they chose "
         "each round's principle, gated checked principles and refused revisions that still failed their principle "
         "(still_violates) or broke a check the original passed (new_violation). A pair is verified when its "
         f"chosen answer passes a check its rejected answer fails: {c['verified']} of the kept pairs"
         + (f" ({_pct(c['verified_share'])})." if c["verified_share"] is not None else "."), ""]
    L += _md_table(["check", "principle", "kind", "rows", "originals failing", "kept: fixed", "kept: still failing"],
                   [[i, v["principle"], v["kind"], v.get("rows", 0), v.get("original_fail", 0), v.get("fixed", 0),
                     v.get("kept_still_fail", 0)] for i, v in c["checks"].items()])
    if c["refused"]:
        L += ["", "Revisions refused by the checks, per principle:", ""]
        L += _md_table(["principle", "still_violates", "new_violation"],
                       [[p, v.get("still_violates", 0), v.get("new_violation", 0)] for p, v in c["refused"].items()])
    return L


def gate_section(g: dict) -> list[str]:
    L = ["", "## Gate", ""]
    by_checks = g.get("by_checks") or {}  # older report.json files lack it
    if by_checks:
        L += ["A principle with checks is gated by them, with no model request: YES when the answer fails one of "
              "the principle's checks.", ""]
        L += _md_table(["principle (gated by its checks)", "YES", "NO"],
                       [[k, v["YES"], v["NO"]] for k, v in by_checks.items()]) + [""]
    if not g["yes"] + g["no"]:
        return L
    L += ["After each critique " + ("of a principle without checks " if by_checks else "") + "the model was asked, "
          "as a forced YES/NO choice, whether its answer violates the principle; YES when P(YES) >= "
          f"{g['threshold']}. NO ends the row without a revision: its original stands (an SFT row and a KTO "
          "desirable row, unless a check fails on it: then a KTO undesirable row and no SFT row). A small "
          "model's gate can be close to chance or one-sided; the counts below say how this one behaved.", ""]
    if g["warning"]:
        L += [f"**Warning: {g['warning']}.**", ""]
    p = g["p_yes"]
    L += [f"YES {g['yes']}, NO {g['no']} (NO share {_pct(g['share_no'])}). P(YES): median {p['median']}, "
          f"p10 {p['p10']}, p90 {p['p90']} over {p['n']} critiques.", ""]
    L += _md_table(["principle", "YES", "NO"], [[k, v["YES"], v["NO"]] for k, v in g["per_principle"].items()])
    return L


def review_section(r: dict) -> list[str]:
    d, ag = r["decisions"], r["agreement"]
    L = ["", "## Expert review", "",
         f"{r['routed']} pairs were routed to expert review ({r['verdicts']} verdicts given). "
         f"`reviewed/` holds the dataset with the verdicts applied ({r['rows']} pairs, {r['expert_reviewed']} "
         "expert-reviewed): accept keeps the pair, swap makes the original the chosen answer, edit replaces "
         "the chosen answer with the expert's, reject (neither usable) and tie (both fine) drop the pair, and a "
         "skip (unsure) is no verdict: the pair stays pending. Several reviewers: the majority verdict "
         "applies; a tie is `disputed` and left out until another reviewer breaks it.", "",
         "```python", "from datasets import load_from_disk", "ds = load_from_disk('reviewed/preferences')", "```", ""]
    L += _md_table(["decision", "pairs"], [[k, v] for k, v in d.items()])
    if r.get("ratings"):  # written by merge since ratings (issue 34)
        lo, hi = r.get("scale") or (1, 5)
        L += ["", f"Ratings per guideline ({lo} poor to {hi} excellent), mean over every current vote's rating "
              "of each answer; agreement per guideline: of every two reviewers who rated the same answer on it "
              "(pairs), the share giving the same score, and a score at most one apart:", ""]
        L += _md_table(["guideline", "revision", "original", "ratings", "same score", "within one", "pairs"],
                       [[g, x["revision"], x["original"], x["n"], _pct(x.get("agreement")), _pct(x.get("within_one")),
                         x.get("pairs")] for g, x in r["ratings"].items()])
    if r.get("reviewers"):  # written by merge since blind review (issue 15); older review.json files lack it
        fast = r.get("fast_seconds", 5)
        L += ["", "Per reviewer: blind verdicts show the two answers as A and B in a seeded order per item and "
              "reviewer; **chose A** near 50% means no position bias (p: exact binomial test against 50%). "
              f"**too_fast**: verdicts given less than {fast:g} s after the item opened, "
              + ("left out of the decisions above (`--ignore-too-fast`)." if r.get("ignore_too_fast")
                 else "counted above (`merge --ignore-too-fast` leaves them out)."), ""]
        L += _md_table(["reviewer", "verdicts", "blind A/B", "chose A", "p", "too_fast", "median seconds"],
                       [[name, x["verdicts"], x["blind_ab"], _pct(x["a_share"]), x["position_p"],
                         f"{x['too_fast']} ({_pct(x['too_fast_share'])})", x["median_seconds"]]
                        for name, x in r["reviewers"].items()])
    if ag["comparisons"]:
        L += ["", f"Agreement between reviewers: **{_pct(ag['agreement'])}** over {ag['comparisons']} shared "
              f"judgements on {ag['items_multi']} items; Cohen's kappa {ag['kappa']}"
              + (" (mean over reviewer pairs: Light's kappa)." if len(ag["pairs"]) > 1 else "."), ""]
        L += _md_table(["reviewer A", "reviewer B", "shared items", "agreement", "Cohen's kappa"],
                       [[p["a"], p["b"], p["items"], _pct(p["agreement"]), p["kappa"]] for p in ag["pairs"]])
    return L


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: not a finished cai_gen run dir (no {path.name})") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def build(out: Path) -> dict:
    """Compute the statistics, write plots/*.png and README.md, store the numbers in summary.json."""
    summary = _load(out / rundir.SUMMARY)
    cfg, const = _load(out / rundir.CONFIG), _load(out / rundir.CONSTITUTION)
    try:
        st = stats.compute(out)
    except (ValueError, KeyError) as e:
        raise UserError(f"{out}: a run file is damaged ({type(e).__name__}: {e})") from None
    figs = plots.write_all(st, out / rundir.PLOTS)
    atomic_write(out / rundir.CARD, card(summary, st, cfg, const, figs, out))
    # the headline counts come from the files (stats.py), the one place they are computed
    summary.update({k: st[k] for k in ("reasons", "flags", "principles", "domains")})
    summary["report"] = {k: v for k, v in st.items() if not k.startswith("_")}
    summary["report"]["plots"] = [f for _, f in figs]
    if st.get("review"):
        summary["review"] = st["review"]
    atomic_write(out / rundir.SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m cai_gen.report RUN_DIR   (rebuilds README.md, plots/ and summary.json's report)",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    out = Path(argv[0])
    try:
        if not out.is_dir():
            raise UserError(f"{out}: no such run dir")
        summary = build(out)
    except UserError as e:
        print(f"cai_gen.report: error: {e}", file=sys.stderr)
        return 2
    print_summary(summary, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
