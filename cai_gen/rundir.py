"""The run dir's file names, and which of them make the dataset repository on the Hub.

A finished run dir is a dataset repository as the Hugging Face stack reads one: parquet per split under data/ and
a card (README.md) whose YAML `configs` map each config's splits to their files, so `load_dataset(RUN)`, TRL's CLI
(`trl dpo --dataset_name RUN --dataset_train_split train_prefs`) and the Hub (`python -m cai_gen.push`) take it as
it is. The `datasets` copies (preferences/, kto/) stay beside it for `load_from_disk`.
"""
from __future__ import annotations

from pathlib import Path

PREFS = "preferences.jsonl"
SFT = "sft.jsonl"
KTO = "kto.jsonl"
NO_VIOLATION = "no_violation.jsonl"  # answers the gate found no violation in: SFT and KTO rows, no pair
REJECTED = "rejected.jsonl"          # rows a filter or check dropped, with the reason
TRACE = "trace.jsonl"                # every stage's text per row (output.trace)
REVIEW_QUEUE = "review_queue.jsonl"  # pairs routed to expert review
CARD = "README.md"
SUMMARY = "summary.json"
CONFIG = "config.json"               # the validated run config
CONSTITUTION = "constitution.json"   # the constitution as the run read it
ENGINE_LOG = "engine.log"            # the engine's own log lines (verbose=false)
PLOTS = "plots"
WORK = "work"                        # internals: the ledger, the lock, the run record, parts of unfinished files
RUN_RECORD = "run.json"              # work/: the config the run dir was made with (fingerprint)
LEDGER = "generations.jsonl"         # work/: every generation, content-addressed
LEDGER_SEGMENTS = "generations*.jsonl"  # work/: the ledger and its per-process segments (executor=ray)
LOCK = "lock"                        # work/: held while a process writes the run dir
PARTS = "parts"                      # work/: the files being written, renamed into place at the end
REVIEWED = "reviewed"                # `review merge`: the run's dataset with the experts' verdicts
REVIEW = "review.json"               # reviewed/: what the merge did
REVIEW_DB = "review.sqlite"          # the reviewers' votes
DROPPED, DISPUTED = "dropped.jsonl", "disputed.jsonl"  # reviewed/: pairs the experts dropped or disagree on
MERGE = "merge.json"                 # `python -m cai_gen.merge`: its sources and counts
EVAL = "eval"                        # `python -m cai_gen.evaluate`: models, answers, results
EVAL_JSON = "eval.json"
ANSWERS = "answers.jsonl"
PREFS_DIR, KTO_DIR = "preferences", "kto"  # save_to_disk copies (load_from_disk)
DATA = "data"                              # parquet per split (load_dataset, the Hub)

# config -> split -> parquet file, in the card's order; "default" is what load_dataset(RUN) gives. SFT rows are a
# config of their own: datasets casts every split of a config to one set of columns (the first file's), and
# preference splits must not carry SFT's `messages` (TRL's format detection would pick it)
CONFIGS = {
    "default": {"train_prefs": "data/train_prefs.parquet", "test_prefs": "data/test_prefs.parquet"},
    "sft": {"train_sft": "data/train_sft.parquet", "test_sft": "data/test_sft.parquet"},
    "kto": {"train": "data/kto_train.parquet", "test": "data/kto_test.parquet"},
}

# what `python -m cai_gen.push` uploads (huggingface_hub allow_patterns, fnmatch: * crosses /): the card, the
# parquet it maps, its plots, the setup and the rows left out of the pairs. Not uploaded: the work/ internals
# (ledger, lock, parts), .hydra/ and logs (local paths), the trace (every stage's text: large, for debugging),
# the review database (reviewers' tokens) and queue, and the JSONL / save_to_disk copies of what data/ holds
HUB_FILES = [CARD, "data/*.parquet", "plots/*.png", "eval/*.png", "eval/eval.json", "summary.json", "config.json",
             "constitution.json", "rejected.jsonl", "no_violation.jsonl"]


def segment(tag: str) -> str:
    """work/: one executor=ray replica's own ledger file (LEDGER_SEGMENTS finds it)."""
    return f"generations-{tag}.jsonl"


def data_files(out: Path) -> dict[str, dict[str, str]]:
    """CONFIGS less the files `out` lacks (an empty split has none; a config with none is left out): what the card
    may name."""
    have = {c: {s: f for s, f in splits.items() if (out / f).is_file()} for c, splits in CONFIGS.items()}
    return {c: splits for c, splits in have.items() if splits}
