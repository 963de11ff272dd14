"""Every config key with its type, default and comment, read from the commented schema: what `--help` prints and
what the docs' config reference is generated from, so a key's meaning is written once.

A key's comment is the comment on its field in the pydantic class (the line's own `# ...`, else the comment lines
right above it); a field the class leaves uncommented takes the comment on that key in conf/ (the run's YAML,
then the group's options, its default first), where most knobs are explained beside their value.
Defaults are the composed config's (what a bare `python -m cai_gen` runs with) when given, else the schema's.
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


_LINE = re.compile(r"^(\s*)([A-Za-z_][\w]*)\s*:(.*)$")


@cache
def yaml_comments(path: Path) -> dict[str, str]:
    """{dotted key: comment} of a commented conf/ YAML: `key: value  # comment` lines, nested by indentation."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        comment = _comment_of(rest)
        if comment:
            out.setdefault(dotted, comment)
    return out


def _comment_of(rest: str) -> str:
    """The `# comment` after a YAML value, outside quotes."""
    quote = None
    for i, c in enumerate(rest):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1:].strip()
    return ""


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
        own, above = field_comments(cls).get(field, ("", ""))
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
            else:
                choices = tuple(str(v) for a in _parts(f.annotation) if typing.get_origin(a) is typing.Literal
                                for v in typing.get_args(a))
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


def conf_keys(schema: type[BaseModel], config_name: str = "config", include=()) -> tuple[dict, list[Key]]:
    """What `--help` and the docs' reference show for an entry point: ({group: (options, default option)},
    every key with its composed default and comment). config_name: the conf/ file it composes (config, synth);
    include: the user's include_path folders (their own options and comments)."""
    import yaml
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from . import cli, paths

    cli.register_groups(include)
    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        values = OmegaConf.to_container(compose(config_name=config_name), resolve=False)
    defaults = {}
    for d in yaml.safe_load((paths.CONF / f"{config_name}.yaml").read_text()).get("defaults", []):
        if isinstance(d, dict) and len(d) == 1:
            (g, opt), = d.items()
            defaults[g] = opt
    options = {g: (o, defaults.get(g)) for g, o in cli.groups(include).items() if g in schema.model_fields}
    yamls = {"": [paths.CONF / f"{config_name}.yaml"]}
    for g in set(options) & set(cli.CONF_GROUPS):  # the default option's comments first, then the others'
        names = [defaults.get(g)] + options[g][0]
        found = [paths.find(g, n, include) or paths.CONF / g / f"{n}.yaml" for n in names if n]
        yamls[g] = list(dict.fromkeys(f for f in found if f.is_file()))
    return options, keys(schema, values, yamls)


def markdown(schema: type[BaseModel], config_name: str = "config", title: str = "Configuration keys") -> str:
    """The config reference as Markdown (for a docs page generated at build time): the groups with their
    options, then a table of keys per section, each with its default and comment, as `--help` shows them."""
    options, rows = conf_keys(schema, config_name)

    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    L = [f"# {title}", "", "Set any key on the command line as `key=value`; pick a group's file with `group=option`.", "",
         "| Group | Options (default in bold) |", "|---|---|"]
    L += [f"| `{g}` | " + ", ".join(f"**`{o}`**" if o == d else f"`{o}`" for o in opts) + " |"
          for g, (opts, d) in options.items()]
    top = [k for k in rows if "." not in k.name and not k.section]
    sections = [("Run", top)] + [(k.name, [r for r in rows if r.name.startswith(k.name + ".")])
                                 for k in rows if k.section and "." not in k.name]
    for name, keys_ in sections:
        head = next((k.comment for k in rows if k.name == name), "")
        L += ["", f"## {name}", ""] + ([cell(head), ""] if head else [])
        L += ["| Key | Default | What it does |", "|---|---|---|"]
        for k in keys_:
            shown = k.choices and not all(c in k.comment for c in k.choices)
            choices = " (" + cell(" | ".join(k.choices)) + ")" if shown else ""
            default = "" if k.section and k.default is None else f"`{cell(show(k.default))}`"
            L.append(f"| `{k.name}` | {default} | {cell(k.comment)}{choices} |")
    return "\n".join(L) + "\n"
