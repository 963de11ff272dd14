"""`cai-gen`: the console script (pyproject [project.scripts]) beside `python -m cai_gen`.

`cai-gen [KEY=VALUE ...]` is `python -m cai_gen [KEY=VALUE ...]`; `cai-gen COMMAND ...` is
`python -m cai_gen.COMMAND ...` for each command below. Each entry point runs as its own `__main__`, exactly as
`python -m` runs it (its signal handling, its exit codes), so the two spellings cannot drift apart.
"""
from __future__ import annotations

import os
import runpy
import sys

COMMANDS = ("synth", "evaluate", "review", "merge", "push")  # cai_gen/<name>.py or cai_gen/<name>/__main__.py


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    module = "cai_gen"
    if argv and argv[0] in COMMANDS:
        module, argv = f"cai_gen.{argv[0]}", argv[1:]
    os.environ["CAI_GEN_COMMAND"] = "cai-gen"  # hints then say `cai-gen ...`, not `python -m cai_gen ...`
    sys.argv = [sys.argv[0], *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
