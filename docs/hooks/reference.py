"""The config reference page (reference/config.md), generated at build time from the commented schema.

The page is `cai_gen.schema_doc.reference()`: the same walk of the schema (cai_gen/config.py) and its comments
(there, else beside the key in conf/*.yaml) as `python -m cai_gen --help`, so a key's meaning is written once, a
key added to the schema is on the page at the next build, and a key with no comment anywhere fails the build
(`mkdocs build --strict` in tests/test_docs.py). This hook only adds the page to the site (`on_files`).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # build the docs of this checkout, also without an editable install
    sys.path.insert(0, str(ROOT))

PAGE = "reference/config.md"


def reference(conf: Path | None = None, run_schema=None, synth_schema=None) -> str:
    """The whole page; ValueError naming every key without a comment (cai_gen.schema_doc.reference)."""
    from cai_gen import schema_doc
    from cai_gen.config import RunConfig, SynthConfig

    return schema_doc.reference(run_schema or RunConfig, synth_schema or SynthConfig, conf)


def on_files(files, config):
    """mkdocs hook: the generated page joins the site as if it were a file in docs/."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=reference()))
    return files


if __name__ == "__main__":
    sys.stdout.write(reference())
