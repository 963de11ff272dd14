"""PNG plots for the dataset card (matplotlib, headless). Each returns the file name it wrote, or None when
there is nothing to plot (an empty run still gets a card)."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on GPU boxes or CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return f"{path.parent.name}/{path.name}"


def lengths(st: dict, d: Path) -> str | None:
    c, r = st["_series"]["chosen_words"], st["_series"]["rejected_words"]
    if not c:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max(c + r) + 1
    bins = list(range(0, top + max(1, top // 20), max(1, top // 20)))
    ax.hist(r, bins=bins, alpha=0.55, label=f"rejected (original), mean {st['length_words']['rejected']['mean']}")
    ax.hist(c, bins=bins, alpha=0.55, label=f"chosen (revision), mean {st['length_words']['chosen']['mean']}")
    ax.set(xlabel="words", ylabel="pairs", title="Answer length: chosen vs rejected")
    ax.legend(fontsize=8)
    return _save(fig, d / "lengths.png")


def similarity(st: dict, d: Path) -> str | None:
    s = st["similarity"]
    if not (st["_series"]["sims_kept"] or st["_series"]["sims_dropped"]):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([st["_series"]["sims_kept"], st["_series"]["sims_dropped"]], bins=s["bins"], stacked=True,
            label=["kept", "filtered at the pair stage"])
    ax.set(xlabel="similarity of revision to original (0-1)", ylabel="pairs", title="Revision vs original similarity")
    ax.legend(fontsize=8)
    return _save(fig, d / "similarity.png")


def _bars(counts: dict, title: str, xlabel: str, path: Path) -> str | None:
    if not counts:
        return None
    plt = _plt()
    names, values = list(counts)[::-1], list(counts.values())[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.3 * len(names)))
    ax.barh(names, values)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set(xlabel=xlabel, title=title)
    return _save(fig, path)


def principles(st: dict, d: Path) -> str | None:
    return _bars(st["principles"], "Principle usage in kept pairs", "pairs", d / "principles.png")


def filters(st: dict, d: Path) -> str | None:
    return _bars(st["reasons"], "Filtered rows by reason", "rows", d / "filters.png")


def judge(st: dict, d: Path) -> str | None:
    return _bars(st["judge"]["counts"], "Judge outcomes (both orders)", "pairs", d / "judge.png") if st["judge"] else None


def reward(st: dict, d: Path) -> str | None:
    return _hist(st["_series"]["margins"], 20, 0, d / "reward_margin.png", xlabel="reward(chosen) - reward(rejected)",
                 ylabel="pairs", title="Reward-model margin")


def _hist(xs: list[float], bins, line: float | None, path: Path, **labels) -> str | None:
    """One histogram (None when there is nothing to plot), with an optional vertical reference line."""
    if not xs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(xs, bins=bins)
    if line is not None:
        ax.axvline(line, color="k", lw=0.8)
    ax.set(**labels)
    return _save(fig, path)


def edit_ratio(st: dict, d: Path) -> str | None:
    return _hist(st["_series"]["edit_ratio"], [i / 20 for i in range(21)], None, d / "edit_ratio.png",
                 xlabel="edit ratio (0 = same words, 1 = all new)", ylabel="pairs",
                 title="How much each revision changed its original")


def gate(st: dict, d: Path) -> str | None:
    return _hist(st["_series"]["p_yes"], [i / 20 for i in range(21)], st["gate"] and st["gate"]["threshold"],
                 d / "gate.png", xlabel="P(YES): the answer violates the principle", ylabel="gated critiques",
                 title="Gate: P(YES) per critique (line: threshold)")


def evaluation(res: dict, d: Path) -> str:
    """cai_gen.evaluate: DPO accuracy on test_prefs (with its CI) beside the controls."""
    plt = _plt()
    c = res["controls"]
    names = ["DPO on the data", "reference (sum)", "reference (per token)", "length only"]
    vals = [res["accuracy"], c["reference"]["accuracy"], c["reference"]["accuracy_per_token"],
            c["length_only"]["accuracy"]]
    if "shuffled" in c:
        names.append("shuffled labels")
        vals.append(c["shuffled"]["accuracy"])
    lo, hi = res["accuracy_ci"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, vals, yerr=[[vals[0] - lo] + [0] * (len(vals) - 1), [hi - vals[0]] + [0] * (len(vals) - 1)],
           capsize=4)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set(ylim=(0, 1), ylabel=f"preference accuracy ({res['n_test']} test pairs)", title=res["verdict"])
    ax.tick_params(axis="x", labelsize=7)
    return _save(fig, d / "eval.png")  # "eval/eval.png", relative to the run dir like the card's other plots


def behaviour(b: dict, d: Path) -> str:
    """cai_gen.evaluate's behavioural pass: violation rate per principle and overall, per model, with 95% CIs."""
    plt = _plt()
    names = ["overall"] + b["principles"]
    models = list(b["models"])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.5))
    w = 0.8 / len(models)
    for j, m in enumerate(models):
        rs = [b["models"][m]["overall"]] + [b["models"][m]["per_principle"][p] for p in b["principles"]]
        vals = [r["rate"] or 0 for r in rs]
        err = [[v - r["ci"][0] for v, r in zip(vals, rs)], [r["ci"][1] - v for v, r in zip(vals, rs)]]
        ax.bar([i + j * w for i in range(len(names))], vals, w, yerr=err, capsize=3, label=m)
    ax.set_xticks([i + w * (len(models) - 1) / 2 for i in range(len(names))], names, fontsize=7, rotation=20)
    ax.set(ylim=(0, 1), ylabel=f"violation rate ({b['prompts']} prompts x {b['samples']})")
    ax.set_title(b["verdict"][:90], fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, d / "behaviour.png")


ALL = [("Length: chosen vs rejected", lengths), ("Similarity", similarity), ("Edit ratio", edit_ratio),
       ("Gate", gate), ("Principles", principles),
       ("Filter reasons", filters), ("Judge outcomes", judge), ("Reward margin", reward)]


def write_all(st: dict, d: Path) -> list[tuple[str, str]]:
    for old in d.glob("*.png") if d.is_dir() else []:
        old.unlink()  # a regenerated report must not link a stale plot
    return [(title, f) for title, fn in ALL if (f := fn(st, d))]
