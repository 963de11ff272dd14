"""cai_gen/rundir.py is the one place that names a run dir's files: no other module spells one.

Read with `ast`: a string literal in code (not a comment, not a sentence in a message) that is a run dir file's
name, or a path ending in one, is a second spelling that can drift from rundir's.
"""
from __future__ import annotations

import ast
from pathlib import Path

from cai_gen import rundir

PKG = Path(__file__).resolve().parent.parent / "cai_gen"
# a file of that name that is not the run dir's: a model checkpoint's config.json
NOT_THE_RUN_DIRS = {("models.py", "config.json"), ("config.py", "config.json")}


def run_dir_files() -> set[str]:
    names = {v for k, v in vars(rundir).items() if k.isupper() and isinstance(v, str) and "." in v}
    return names | {Path(f).name for splits in rundir.CONFIGS.values() for f in splits.values()}


def literals(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_the_names_are_read_off_rundir():
    assert {"preferences.jsonl", "summary.json", "config.json", "review.sqlite", "generations.jsonl"} <= run_dir_files()


def test_no_module_but_rundir_spells_a_run_dir_file():
    names = run_dir_files()
    found = []
    for f in sorted(PKG.rglob("*.py")):
        if f.name == "rundir.py":
            continue
        for line, s in literals(f):
            hit = next((n for n in names if s == n or s.endswith("/" + n)), None)
            if hit and (f.name, hit) not in NOT_THE_RUN_DIRS:
                found.append(f"{f.relative_to(PKG)}:{line}: {s!r}")
    assert not found, "use cai_gen.rundir's names:\n" + "\n".join(found)
