"""The config reference page (reference/config.md), generated at build time from the commented schema.

Each key's comment is written once, where the project keeps it: beside the key in conf/*.yaml (every knob there is
commented), else a pydantic `Field(description=...)` or the trailing comment of the field in cai_gen/config.py.
Keys come from the pydantic schema (RunConfig, SynthConfig), so a key added to the schema is on the page at the next
build, and a key with no comment anywhere fails the build (mkdocs hook: `on_files` adds the page; `mkdocs build
--strict` in tests/test_docs.py). Nothing here is written by hand twice.
"""
from __future__ import annotations

import inspect
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # build the docs of this checkout, also without an editable install
    sys.path.insert(0, str(ROOT))

PAGE = "reference/config.md"
KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")


def split_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment); a `#` inside quotes or without a space before it is the value's."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), ""


def yaml_keys(path: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """A conf YAML's header comment and {dotted key: (value as written, its comment)}, read line by line (a YAML
    loader drops the comments). List items and block scalars are values of the key above them."""
    head, keys, stack, block = [], {}, [], None
    lines = path.read_text().splitlines()
    for line in lines:
        if not keys and line.startswith("#"):
            head.append(line.lstrip("# ").rstrip())
            continue
        m = KEY.match(line)
        if not m or line.lstrip().startswith(("#", "-")):
            continue
        indent = len(m[1])
        if block is not None and indent > block:
            continue  # inside a `key: |` block
        block = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = split_comment(m[3])
        dotted = ".".join([k for _, k in stack] + [m[2]])
        keys[dotted] = (value, comment)
        if value in ("", "|", "|-", ">", ">-"):
            stack.append((indent, m[2]))
            if value:
                block = indent
    return " ".join(h for h in head if h), keys


def class_comments(cls) -> dict[str, str]:
    """{field: its description or the trailing comment on its line in the class body} for a pydantic class."""
    out = {n: f.description for n, f in cls.model_fields.items() if f.description}
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):  # a class made at run time (tests): descriptions only
        return out
    line_field: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.line[4:].startswith(tok.string + ":"):
            line_field.setdefault(tok.start[0], tok.string)
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out.setdefault(line_field[tok.start[0]], tok.string.lstrip("# ").strip())
    return out


def _models(annotation):
    from cai_gen.cli import _models_and_dict
    return _models_and_dict(annotation)[0]


def schema_keys(schema, prefix: str = "") -> dict[str, tuple[str, str]]:
    """{dotted leaf key: (default as YAML would spell it, comment from the class)} for every key of `schema`."""
    out, notes = {}, {}
    for cls in reversed(schema.__mro__):  # a subclass's own comments win
        if hasattr(cls, "model_fields") and cls.__module__ != "pydantic.main":
            notes.update(class_comments(cls))
    for name, f in schema.model_fields.items():
        inner = _models(f.annotation)
        if inner and f.annotation is not None:
            for m in inner:
                out.update({k: v for k, v in schema_keys(m, f"{prefix}{name}.").items() if k not in out})
            continue
        out[prefix + name] = (_default(f), notes.get(name, ""))
    return out


def _default(f) -> str:
    from pydantic_core import PydanticUndefined
    v = f.get_default(call_default_factory=True) if f.default is PydanticUndefined else f.default
    if v is PydanticUndefined:
        return "(required)"
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    return str(list(v) if isinstance(v, tuple) else v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    return ["| key | value | what it does |", "|---|---|---|"] + \
        [f"| `{k}` | `{_cell(v)}` | {_cell(c)} |" if v else f"| `{k}` |  | {_cell(c)} |" for k, v, c in rows]


def reference(conf: Path | None = None, run_schema=None, synth_schema=None) -> str:
    """The whole page. Raises ValueError naming every schema key the page would leave without a comment."""
    from cai_gen.config import RunConfig, SynthConfig
    from cai_gen.paths import CONF

    conf = conf or CONF
    run_schema, synth_schema = run_schema or RunConfig, synth_schema or SynthConfig
    groups = ("model", "backend", "sampling", "judge")
    _, top = yaml_keys(conf / "config.yaml")
    files = {g: sorted((conf / g).glob("*.yaml")) for g in groups}
    defaults = {}  # group -> [(choice, comment)] from config.yaml's defaults list
    for line in (conf / "config.yaml").read_text().splitlines():
        if re.match(r"^\s+- \w+: ", line):
            value, note = split_comment(line.strip()[2:])
            g, _, choice = value.partition(":")
            defaults[g] = (choice.strip(), note)
    # the default option's file first: a key's comment, when its own file has none, is read from there
    read = {g: {f.stem: yaml_keys(f) for f in sorted(fs, key=lambda f: f.stem != defaults.get(g, ("",))[0])}
            for g, fs in files.items()}
    run_keys = schema_keys(run_schema)
    missing: list[str] = []

    def comment(key: str) -> str:
        """A key's comment: config.yaml, else any option file of its group, else the schema class."""
        if key in top and top[key][1]:
            return top[key][1]
        if run_keys.get(key, ("", ""))[1]:
            return run_keys[key][1]
        g, _, rest = key.partition(".")
        for _, keys in read.get(g, {}).values():
            if rest in keys and keys[rest][1]:
                return keys[rest][1]
        inner = key.split(".", 1)[1] if "." in key else ""  # judge.model.dtype: as model.dtype
        return comment(inner) if inner.split(".")[0] in groups else ""

    md = ["# Config reference", "",
          "Generated from the commented schema at each docs build (`docs/hooks/reference.py`): the keys are "
          "`cai_gen/config.py`'s, each with the comment beside it in `conf/*.yaml` (or in `config.py`). "
          "Set any key on the command line as `key=value` (`python -m cai_gen samples=4 gate.threshold=0.7`); "
          "a key that does not exist is one line naming the closest one, exit 2.", "",
          "## Groups", "", "A group picks one file of its folder: `model=llama31_8b`, then its keys can be set one by one "
          "(`model.dtype=bfloat16`). Your own files come from `include_path` folders (see "
          "[your own model](../how-to/own-model.md) and [your own domain](../how-to/own-domain.md)).", "",
          "| group | default | what it picks |", "|---|---|---|"]
    md += [f"| `{g}` | `{choice}` | {_cell(note)} |" for g, (choice, note) in defaults.items()]

    md += ["", "## Run keys (`conf/config.yaml`)", ""]
    rows = []
    for key, (default, _) in run_keys.items():
        g = key.split(".")[0]
        if g in groups or g in ("constitution", "prompts"):
            continue
        value = top[key][0] if key in top else default
        rows.append((key, value, comment(key)))
    md += _table(rows)

    for g, title in (("constitution", "constitution"), ("prompts", "prompts")):
        md += ["", f"## `{title}.*`", "", f"`{title}=NAME` picks `{title if g == 'prompts' else 'constitutions'}/NAME.yaml` "
               "(here or in an `include_path` folder); these keys pick a file or dataset instead.", ""]
        md += _table([(k, d, comment(k)) for k, (d, _) in run_keys.items() if k.startswith(g + ".")])

    for g in groups:
        md += ["", f"## `{g}` options (`conf/{g}/*.yaml`)", ""]
        seen = set()
        for name, (head, keys) in read[g].items():
            md += [f"### `{g}={name}`", "", head, ""] if head else [f"### `{g}={name}`", ""]
            md += _table([(f"{g}.{k}", v, c or (comment(f"{g}.{k}") if v else "")) for k, (v, c) in keys.items()
                          if k != "defaults" and not k.startswith("defaults.")])
            md.append("")
            seen |= {f"{g}.{k}" for k in keys}
        rest = [(k, d, comment(k)) for k, (d, _) in run_keys.items() if k.startswith(g + ".") and k not in seen]
        if rest:
            md += [f"### Other `{g}.*` keys", "", "Keys no option file sets (their schema default applies):", ""]
            md += _table(rest)

    _, synth = yaml_keys(conf / "synth.yaml")
    md += ["", "## `python -m cai_gen.synth` keys (`conf/synth.yaml`)", "",
           "Its groups are the run's own (`model`, `backend`, `constitution`); its own keys:", ""]
    synth_keys = schema_keys(synth_schema)
    rows = []
    for key, (default, note) in synth_keys.items():
        if key.split(".")[0] in ("model", "backend", "constitution"):
            continue
        value, c = synth.get(key, (default, ""))
        rows.append((key, value, c or note))
    md += _table(rows)

    documented = {r[0] for r in rows}
    for key in run_keys:
        if not comment(key) and key.split(".")[0] not in groups:
            missing.append(key)
    for g in groups:  # a group key is commented when some option file (or the schema) says what it is
        missing += [k for k in run_keys if k.startswith(g + ".") and not comment(k)]
    missing += [k for k in documented if not next(r[2] for r in rows if r[0] == k)]
    if missing:
        raise ValueError("config keys without a comment (add one beside the key in conf/*.yaml or "
                         f"cai_gen/config.py): {', '.join(sorted(set(missing)))}")
    return "\n".join(md) + "\n"


def on_files(files, config):
    """mkdocs hook: the generated page joins the site as if it were a file in docs/."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=reference()))
    return files


if __name__ == "__main__":
    sys.stdout.write(reference())
