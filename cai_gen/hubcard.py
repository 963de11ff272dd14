"""The dataset card's Hub parts: YAML front matter (license, languages, size, tags, the `configs` that map splits to
data/ files), an example row per config, and the command that reproduces the run.

The front matter names only files that exist (rundir.data_files), so `load_dataset(RUN)` never looks for a
missing one. Example rows are model text: they go in fenced code blocks longer than any backtick run inside
them, so nothing in them renders as markdown or HTML on the Hub.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from . import rundir, store

TAGS = ["synthetic", "cai_gen", "constitutional-ai", "dpo", "kto", "preference"]
# what each config is for, in the examples' headings
USE = {"default": "DPO / ORPO (TRL conversational, explicit prompt)", "sft": "SFT (`messages`)",
       "kto": "KTO (unpaired `completion` + `label`)"}
CUT = 300  # characters of a string shown in an example row


def size_category(n: int) -> str:
    """The Hub's size_categories value for n rows (huggingface_hub.DatasetCardData's list)."""
    for limit, name in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                        (1e7, "1M<n<10M"), (1e8, "10M<n<100M"), (1e9, "100M<n<1B")):
        if n < limit:
            return name
    return "n>1B"


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def front_matter(out: Path, cfg: dict, const: dict, model: str) -> str:
    """The card's YAML block, `---` lines included."""
    from huggingface_hub import DatasetCardData

    files = rundir.data_files(out)
    sizes = [sum(_rows(out / f) for f in splits.values()) for splits in files.values()]
    o = cfg.get("output") or {}
    data = DatasetCardData(
        license=o.get("license", "unknown"), language=o.get("language", ["en"]),
        size_categories=[size_category(max(sizes, default=0))], task_categories=["text-generation"],
        pretty_name=f"CAI preference data: {const['name']} on {model}", tags=TAGS,
        configs=[{"config_name": c, "data_files": [{"split": s, "path": f} for s, f in splits.items()],
                  **({"default": True} if c == "default" else {})} for c, splits in files.items()] or None)
    return f"---\n{data.to_yaml()}\n---"


def fenced(text: str, lang: str = "") -> list[str]:
    """`text` in a code fence no line of it can close."""
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, run + 1)
    return [fence + lang, text, fence]


def _cut(x):
    if isinstance(x, str):
        return x if len(x) <= CUT else x[:CUT] + f"... [{len(x) - CUT} more characters]"
    if isinstance(x, list):
        return [_cut(v) for v in x]
    if isinstance(x, dict):
        return {k: _cut(v) for k, v in x.items()}
    return x


def example(path: Path) -> dict | None:
    """The first row of a parquet file as load_dataset gives it (None if it has none)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    if f.metadata.num_rows == 0:
        return None
    return next(f.iter_batches(batch_size=1)).to_pylist()[0]


def examples(out: Path) -> list[str]:
    """## Examples: one row per config, from its first split that has one."""
    L = ["## Examples", "", "One row of each config as `load_dataset` returns it (strings cut at "
         f"{CUT} characters).", ""]
    for c, splits in rundir.data_files(out).items():
        for s, f in splits.items():
            row = example(out / f)
            if row is not None:
                L += [f"### `{c}`, split `{s}`: {USE[c]}", ""]
                L += fenced(json.dumps(_cut(row), indent=1, ensure_ascii=False, default=str), "json") + [""]
                break
    return L


PAIRS, PAIR_CUT = 3, 600  # pairs shown in full on the card, and characters of each text


def pairs(out: Path) -> list[str]:
    """## A few pairs: the first kept pairs as a reader takes them in (the pairs a check fixed first): prompt,
    rejected, the critique, chosen, and what made it a pair. Every text is fenced (model text never renders)."""
    f = out / rundir.PREFS
    if not f.is_file():
        return []
    rows = []
    with f.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= 50:  # enough to find a few a check fixed; the file may hold a million
                break
    fixed = {r["id"]: store.fixed(r.get("checks") or []) for r in rows}
    shown = sorted(rows, key=lambda r: not fixed[r["id"]])[:PAIRS]
    if not shown:
        return []
    L = ["## A few pairs", "", f"The first pairs of `{rundir.PREFS}` (those a check fixed first), texts cut at "
         f"{PAIR_CUT} characters. `python -m cai_gen` shows pairs like these on the terminal as it makes them.", ""]

    def text(m: list) -> str:
        s = (m[-1]["content"] if m else "") or ""
        return s if len(s) <= PAIR_CUT else s[:PAIR_CUT] + f"... [{len(s) - PAIR_CUT} more characters]"

    for n, r in enumerate(shown, 1):
        why = (f"fixed check {', '.join(map(code, fixed[r['id']]))}" if fixed[r["id"]] else
               "no check failed on the original; the model's critique and gate")
        L += [f"### Pair {n}: {why}", "", f"Row {code(r['id'])}, principle "
              f"{', '.join(map(code, r.get('principle_ids') or []))}.", "", "Prompt:", ""]
        L += fenced(text(r["prompt"]), "text") + ["", "Rejected (the original answer):", ""]
        L += fenced(text(r["rejected"]), "text") + ["", "Critique:", ""]
        L += fenced(text([{"content": (r.get("critiques") or [""])[-1]}]), "text")
        L += ["", "Chosen (the revision):", ""] + fenced(text(r["chosen"]), "text") + [""]
    return L


def code(x) -> str:
    """An id in inline code (its own backticks dropped): nothing in it renders as markdown."""
    return "`" + str(x).replace("`", "") + "`"


def reproduce(out: Path) -> list[str]:
    """## Reproduce: the command line this run was made with (Hydra's .hydra/overrides.yaml), same seed, same
    rows; config.json holds the whole validated config either way."""
    L = ["## Reproduce", ""]
    f = out / ".hydra" / "overrides.yaml"
    try:
        import yaml

        ov = yaml.safe_load(f.read_text(encoding="utf-8")) if f.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        ov = None
    if isinstance(ov, list):
        L += fenced(" ".join(["python", "-m", "cai_gen", *map(shlex.quote, map(str, ov))]), "bash") + [""]
        L += ["`config.json` holds the whole validated config, `constitution.json` the constitution.", ""]
    else:  # made through the Python API (pipeline.run): there is no command line
        L += ["Made without a command line: `config.json` holds the whole validated config (every key can be "
              "given as `key=value` to `python -m cai_gen`), `constitution.json` the constitution.", ""]
    return L
