"""Every config key with its type, default and comment, read from the commented schema: what `--help` prints and
what the docs' config reference is generated from, so a key's meaning is written once.

A key's comment is its field's `Field(description=...)` or the comment on its field in the pydantic class that
declares it (the line's own `# ...`, else the comment lines right above it); a field the class leaves uncommented
takes the comment on that key in conf/ (the run's YAML, then the group's options, its default first), where most
knobs are explained beside their value. Defaults are the composed config's (what a bare `python -m cai_gen` runs
with) when given, else the schema's. reference() is the docs page (docs/hooks/reference.py puts it on the site):
a key with no comment anywhere fails the docs build.
"""
from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class Key:
    name: str          # dotted: model.max_tokens.respond
    type: str          # int | float | bool | str | one of a | b | ... ; "| null" when it may be null
    default: object    # the composed config's value where known, else the schema's default (... when required)
    comment: str       # what it does ("" when neither the schema nor conf/ says)
    section: bool      # a group of keys (model, filters...), not a value
    choices: tuple = ()  # the values a Literal key takes


@cache
def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (trailing comment, comment block above)} from a class's source. The block above may be a label
    of the fields below it (`# vllm`), so it counts only where conf/ says nothing on the key."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    trailing: dict[int, str] = {}  # line number (1-based) -> comment text on it
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for node in ast.parse(src).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        own = [trailing[n] for n in range(node.lineno, node.end_lineno + 1) if n in trailing]
        above, n = [], node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, trailing.get(n, ""))
            n -= 1
        own = [c for c in own if not c.startswith(("noqa", "type:"))]
        out[node.target.id] = (" ".join(own), " ".join(above))
    return out


def class_comment(cls: type[BaseModel], field: str) -> tuple[str, str]:
    """(own comment, block above) of `field`: its `Field(description=...)` or the comment in the source of the
    class that declares it, a subclass's before its bases' (a class made at run time has no source: its bases')."""
    f = cls.model_fields.get(field)
    if f is not None and f.description:
        return f.description, ""
    for c in cls.__mro__:
        if field in c.__dict__.get("__annotations__", {}):
            found = field_comments(c).get(field)
            if found and any(found):
                return found
    return "", ""


_LINE = re.compile(r"^(\s*)([A-Za-z_][\w]*)\s*:(.*)$")


def yaml_keys(path: Path) -> tuple[str, dict[str, tuple[str, str]]]:
    """A commented conf/ YAML's header comment and {dotted key: (value as written, its comment)}, read line by line
    (a YAML loader drops the comments), nested by indentation. List items and `key: |` blocks are the values of
    the key above them, not keys."""
    try:
        return _yaml_keys(path, path.stat().st_mtime_ns)  # read again once edited (mkdocs serve rebuilds)
    except OSError:
        return "", {}


@cache
def _yaml_keys(path: Path, mtime: int) -> tuple[str, dict[str, tuple[str, str]]]:
    head: list[str] = []
    out: dict[str, tuple[str, str]] = {}
    stack: list[tuple[int, str]] = []
    block = None
    text = path.read_text()
    for line in text.splitlines():
        if not out and line.startswith("#"):
            head.append(line.lstrip("# ").rstrip())
            continue
        m = _LINE.match(line)
        if not m or line.lstrip().startswith(("#", "-")):
            continue
        indent = len(m.group(1))
        if block is not None and indent > block:
            continue  # a line of a `key: |` block
        block = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = _split_comment(m.group(3))
        dotted = ".".join([k for _, k in stack] + [m.group(2)])
        out.setdefault(dotted, (value, comment))
        if value in ("", "|", "|-", ">", ">-"):
            stack.append((indent, m.group(2)))
            block = indent if value else None
    return " ".join(h for h in head if h), out


def yaml_comments(path: Path) -> dict[str, str]:
    """{dotted key: comment} of a commented conf/ YAML (keys without a comment left out)."""
    return {k: c for k, (_, c) in yaml_keys(path)[1].items() if c}


def _split_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment); a `#` inside quotes or right after a character is the value's."""
    quote = None
    for i, c in enumerate(rest):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), ""


def _parts(annotation) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(annotation) for p in _parts(a)]
    return [annotation]


def _models(annotation) -> list[type[BaseModel]]:
    return [a for a in _parts(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def type_name(annotation) -> str:
    """A short spelling for a reader: `int`, `good | echo`, `float | [low, high]`, `list`, `... | null`."""
    names: list[str] = []
    for a in _parts(annotation):
        origin = typing.get_origin(a)
        if a is type(None):
            continue
        if origin is typing.Literal:
            names += [str(v) for v in typing.get_args(a)]
        elif origin in (tuple, list):
            names.append("[low, high]" if origin is tuple and len(typing.get_args(a)) == 2 else "list")
        elif origin is dict or a is dict:
            names.append("dict")
        elif isinstance(a, type) and issubclass(a, BaseModel):
            names.append("keys")
        else:
            names.append(getattr(a, "__name__", str(a)))
    names = list(dict.fromkeys(names))
    if type(None) in _parts(annotation):
        names.append("null")
    return " | ".join(names)


def _default(f):
    if f.default is not PydanticUndefined:
        return f.default.model_dump() if isinstance(f.default, BaseModel) else f.default
    if f.default_factory is not None:
        v = f.default_factory()
        return v.model_dump() if isinstance(v, BaseModel) else v
    return ...


def _lookup(values, dotted: str):
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return ...
        values = values[part]
    return values


def keys(schema: type[BaseModel], values: dict | None = None, yamls: dict[str, list[Path]] | None = None) -> list[Key]:
    """Every key of `schema`, depth first in the schema's order. A model class met again (judge.model is a
    model config) is listed once, as a section whose comment names the first place its keys are listed.

    values: the composed config (defaults shown are its values); yamls: {prefix: [conf files]} whose comments
    explain keys under that prefix ("" for the top-level file, "model" for conf/model/*.yaml, default first)."""
    yamls = yamls or {}
    out: list[Key] = []
    seen: dict[type, str] = {}

    def comment_for(dotted: str, cls: type, field: str) -> str:
        own, above = class_comment(cls, field)
        if own:
            return own
        for prefix, files in sorted(yamls.items(), key=lambda kv: -len(kv[0])):  # the most specific prefix first
            if prefix and not dotted.startswith(prefix + "."):
                continue
            rel = dotted[len(prefix) + 1:] if prefix else dotted
            for f in files:
                c = yaml_comments(f).get(rel)
                if c and len(c.split()) > 1:  # "# unused" in judge/none.yaml says nothing of the key
                    return c
        return above

    def walk(cls: type[BaseModel], prefix: str) -> None:
        seen[cls] = prefix.rstrip(".")
        for name, f in cls.model_fields.items():
            dotted = prefix + name
            models = _models(f.annotation)
            default = _lookup(values, dotted) if values is not None else ...
            if default is ...:
                default = _default(f)
            comment = comment_for(dotted, cls, name)
            if models and models[0] in seen:  # judge.model: the same keys as model
                comment = (comment + "; " if comment else "") + f"the same keys as {seen[models[0]]}.*"
                out.append(Key(dotted, type_name(f.annotation), default, comment, True))
                continue
            if models:
                own_doc = " ".join((models[0].__dict__.get("__doc__") or "").split())  # its own, not BaseModel's
                out.append(Key(dotted, type_name(f.annotation), None, comment or own_doc, True))
                walk(models[0], dotted + ".")
                variants(models[0], dotted + ".")
            else:
                choices = tuple(str(v) for a in _parts(f.annotation) if typing.get_origin(a) is typing.Literal
                                for v in typing.get_args(a))
                out.append(Key(dotted, type_name(f.annotation), default, comment, False, choices))

    def variants(base: type[BaseModel], prefix: str) -> None:
        """A base class whose value validates as one of several classes (backend: each backend's own config
        class, registered beside it): every variant's own keys, once, each saying which kinds have it."""
        kinds: dict[str, list[str]] = {}
        first: dict[str, tuple[type, object]] = {}
        for v in getattr(base, "variants", list)():
            kind = "|".join(str(a) for a in typing.get_args(v.model_fields["kind"].annotation)) or v.__name__
            for name, f in v.model_fields.items():
                if name in base.model_fields:
                    continue
                kinds.setdefault(name, []).append(kind)
                first.setdefault(name, (v, f))
        for name, (v, f) in first.items():
            dotted = prefix + name
            default = _lookup(values, dotted) if values is not None else ...
            if default is ...:
                default = _default(f)
            comment = comment_for(dotted, v, name)
            comment = f"({', '.join(kinds[name])}) {comment}".rstrip() if comment else ""
            choices = tuple(str(x) for a in _parts(f.annotation) if typing.get_origin(a) is typing.Literal
                            for x in typing.get_args(a))
            out.append(Key(dotted, type_name(f.annotation), default, comment, False, choices))

    walk(schema, "")
    return out


def show(value) -> str:
    """A value as it is written on the command line (Hydra's grammar): null, true, [a, b]."""
    if value is ...:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def described(k: Key) -> str:
    """A key's comment as `--help` and the reference print it: with the values a Literal key takes, where the
    comment does not name them all."""
    if k.choices and not all(c in k.comment for c in k.choices):
        return (k.comment + " " if k.comment else "") + "(" + " | ".join(k.choices) + ")"
    return k.comment


def _defaults_list(path: Path) -> dict[str, tuple[str, str]]:
    """{group: (default option, the comment beside it)} from a conf file's `defaults:` list."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s+- (\w+): (.*)$", line)
        if m:
            value, note = _split_comment(m.group(2))
            out[m.group(1)] = (value, note)
    return out


def conf_keys(schema: type[BaseModel], config_name: str = "config", include=(), conf: Path | None = None
              ) -> tuple[dict, list[Key]]:
    """What `--help` and the docs' reference show for an entry point: ({group: (options, default option)},
    every key with its composed default and comment). config_name: the conf/ file it composes (config, synth);
    include: the user's include_path folders (their own options and comments); conf: the conf/ folder (tests)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from . import groups, paths

    conf = conf or paths.CONF
    groups.register_groups(include)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        values = OmegaConf.to_container(compose(config_name=config_name), resolve=False)
    defaults = {g: opt for g, (opt, _) in _defaults_list(conf / f"{config_name}.yaml").items()}
    options = {g: (o, defaults.get(g)) for g, o in groups.groups(include).items() if g in schema.model_fields}
    yamls = {"": [conf / f"{config_name}.yaml"]}
    for g in set(options) & set(groups.CONF_GROUPS):  # the default option's comments first, then the others'
        yamls[g] = option_files(g, [defaults.get(g)] + options[g][0], include, conf)
    return options, keys(schema, values, yamls)


def option_files(group: str, names, include=(), conf: Path | None = None) -> list[Path]:
    """The files of a conf group's options, in the order of `names`: the user's (include_path) first."""
    from . import paths

    conf = conf or paths.CONF
    found = [paths.find(group, n, include) or conf / group / f"{n}.yaml" for n in names if n]
    return list(dict.fromkeys(f for f in found if f.is_file()))


def cell(text: str) -> str:
    """Text in a Markdown table cell: pipes and asterisks escaped, `<name>` not read as an HTML tag."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;").replace("\n", " ")


def code(text: str) -> str:
    """Text as code in a Markdown table cell: only its pipes escaped (a code span shows the rest as written)."""
    return "`" + text.replace("|", "\\|").replace("\n", " ") + "`"


def markdown(schema: type[BaseModel], config_name: str = "config", title: str = "Configuration keys",
             conf: Path | None = None, level: int = 1, same_as: list[Key] | None = None) -> str:
    """The config reference of one entry point as Markdown, as `--help` shows it: the groups with their options,
    a table of keys per section (each with its default and comment), then what each conf/ option file sets.
    level: the title's heading level; same_as: another entry point's keys, whose sections this one shares
    (the same keys, defaults and comments) are named, not repeated. Keys without a comment: see missing()."""
    from . import groups, paths

    conf = conf or paths.CONF
    options, rows = conf_keys(schema, config_name, conf=conf)
    h = "#" * level
    notes = _defaults_list(conf / f"{config_name}.yaml")
    L = [f"{h} {title}", "", "| Group | Options (default in bold) | What it picks |", "|---|---|---|"]
    L += [f"| `{g}` | " + ", ".join(f"**`{o}`**" if o == d else f"`{o}`" for o in opts)
          + f" | {cell(notes.get(g, ('', ''))[1])} |" for g, (opts, d) in options.items()]
    top = [k for k in rows if "." not in k.name and not k.section]
    sections = [(None, top)] + [(k.name, [r for r in rows if r.name.startswith(k.name + ".")])
                                for k in rows if k.section and "." not in k.name]
    shared = []
    if same_as is not None:
        for name, keys_ in sections[1:]:
            if name and [(k.name, k.default, k.comment) for k in keys_] == \
                    [(k.name, k.default, k.comment) for k in same_as if k.name.startswith(name + ".")]:
                shared.append(name)
    if shared:
        L += ["", "Its keys of these sections are the run's (the same keys, defaults and comments: above):", ""]
        L += [f"- [`{k.name}.*`](#{k.name}-keys): {cell(described(k))}" for k in rows if k.name in shared]
    for name, keys_ in sections:
        if name in shared:
            continue
        head = next((k.comment for k in rows if k.name == name), "")
        L += ["", f"{h}# `{name}.*` keys" if name else f"{h}# Top-level keys", ""]
        L += [cell(head), ""] if head else []
        L += ["| Key | Default | What it does |", "|---|---|---|"]
        for k in keys_:
            default = "" if k.section and k.default is None else code(show(k.default))
            L.append(f"| `{k.name}` | {default} | {cell(described(k))} |")
        if name in groups.CONF_GROUPS and name in options:
            L += _options(name, options[name], conf, h + "##")
    return "\n".join(L) + "\n"


def _options(group: str, opts: tuple[list[str], str | None], conf: Path, h: str) -> list[str]:
    """What each option file of a conf group sets: its header comment, then each key's value as written and the
    note beside it (why this value, for this option)."""
    L = []
    for f in option_files(group, [opts[1]] + opts[0], conf=conf):
        head, entries = yaml_keys(f)
        L += ["", f"{h} `{group}={f.stem}`", ""] + ([cell(head), ""] if head else [])
        rows = [(k, v, c) for k, (v, c) in entries.items() if k != "defaults" and not k.startswith("defaults.")]
        L += ["| Key | Value | Note |", "|---|---|---|"]
        L += [f"| `{group}.{k}` | " + (code(v) if v else "") + f" | {cell(c)} |" for k, v, c in rows]
    return L


def missing(rows: list[Key]) -> list[str]:
    """The keys that neither the schema nor conf/ explains: a docs build with one fails."""
    return [k.name for k in rows if not k.comment]


def reference(run_schema: type[BaseModel], synth_schema: type[BaseModel], conf: Path | None = None) -> str:
    """The docs' config reference page (docs/hooks/reference.py puts it on the site at each build): the run's keys,
    then cai_gen.synth's, as their `--help` lists them. Raises ValueError naming every key without a comment."""
    # the schemas come from the caller: config.py imports cli, which imports this module for --help
    _, run_rows = conf_keys(run_schema, "config", conf=conf)
    _, synth_rows = conf_keys(synth_schema, "synth", conf=conf)
    bad = sorted(set(missing(run_rows)) | set(missing(synth_rows)))
    if bad:
        raise ValueError("config keys without a comment (add one beside the key in cai_gen/config.py or "
                         f"conf/*.yaml): {', '.join(bad)}")
    intro = ["# Config reference", "",
             "Generated at each docs build from the commented schema by `cai_gen/schema_doc.py`, the same walk as "
             "`python -m cai_gen --help`: the keys are `cai_gen/config.py`'s, each with the comment beside its field "
             "there, else beside the key in `conf/*.yaml`; defaults are those of a bare run (the composed config). "
             "Set any key on the command line as `key=value` (`python -m cai_gen samples=4 gate.threshold=0.7`); a "
             "key that does not exist is one line naming the closest one, exit 2. A group picks one file of its "
             "folder (`model=llama31_8b`), then its keys can be set one by one (`model.dtype=bfloat16`); your own "
             "files come from `include_path` folders ([your own model](../how-to/own-model.md), "
             "[your own domain](../how-to/own-domain.md)).", ""]
    run = markdown(run_schema, "config", "`python -m cai_gen` keys (`conf/config.yaml`)", conf, level=2)
    synth = markdown(synth_schema, "synth", "`python -m cai_gen.synth` keys (`conf/synth.yaml`)", conf,
                     level=2, same_as=run_rows)
    return "\n".join(intro) + "\n" + run + "\n" + synth
