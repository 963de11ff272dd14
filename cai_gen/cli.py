"""The command line before Hydra composes: config groups found by scanning, and every override checked against
the schema, so a mistake is one line naming the field (exit 2) instead of Hydra's multi-line composition error.

Both entry points (`python -m cai_gen`, `python -m cai_gen.synth`) and config.compose use this module; it knows
the schema only as the pydantic class it is handed, so it imports nothing above paths, constitution and prompts.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Sequence

from pydantic import BaseModel

from . import constitution, paths, prompts
from .errors import UserError
from .groups import CONF_GROUPS, groups, register_groups  # noqa: F401 (entry points call cli.register_groups)
from .paths import CONF


def check_group_choices(argv: Sequence[str], include: Sequence[str] = ()) -> None:
    """`group=unknown` is one line naming the options, before Hydra prints its multi-line composition error."""
    options_of = groups(include)
    if any(a.startswith(("hydra.searchpath", "--config-dir", "-cd", "--config-path", "-cp")) for a in argv):
        options_of = {k: v for k, v in options_of.items() if k not in CONF_GROUPS}  # Hydra finds those options
    for arg in argv:
        key, eq, val = arg.partition("=")
        options = options_of.get(key.lstrip("+~"))
        if not eq or options is None:
            continue
        for choice in val.split(","):  # sweeps: -m constitution=a,b
            if choice and choice not in options:
                raise UserError(f"{key}={choice}: unknown option (have: {', '.join(options)})")


def _models_and_dict(annotation) -> tuple[list[type[BaseModel]], bool, bool]:
    """What a field's type lets a dotted key go into: its pydantic models, whether any key goes (a dict), and
    whether an index goes (a list or tuple). Optional and unions are looked through."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_models_and_dict(a) for a in args]
        return [m for p in parts for m in p[0]], any(p[1] for p in parts), any(p[2] for p in parts)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation, *getattr(annotation, "variants", list)()], False, False
    base = origin or annotation
    return [], base is dict, base in (list, tuple)


def _fields(models: list[type[BaseModel]]) -> dict:
    """The keys of a field's models (backend: every registered kind's), the first of a name winning."""
    out = {}
    for m in models:
        for k, f in m.model_fields.items():
            out.setdefault(k, f)
    return out


def _leaves(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of the schema (one level into each model it holds)."""
    out = []
    for name, f in schema.model_fields.items():
        out.append(prefix + name)
        for m in _models_and_dict(f.annotation)[0]:
            out += _leaves(m, f"{prefix}{name}.")
    return out


def _suggest(wrong: str, here: list[str], prefix: str, schema: type[BaseModel]) -> str:
    close = difflib.get_close_matches(wrong, here, n=1, cutoff=0.75)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    # a right name at the wrong level (treshold=0.3 for gate.threshold): offer it when exactly one key fits
    elsewhere = sorted({k for k in _leaves(schema) if difflib.get_close_matches(wrong, [k.rsplit(".", 1)[-1]],
                                                                                cutoff=0.75)})
    if len(elsewhere) == 1:
        return f" (did you mean {elsewhere[0]}?)"
    return f" ({prefix.rstrip('.') or 'the config'} has: {', '.join(here)})"


INSIDE_DICT = "inside a dict"


def check_key(key: str, schema: type[BaseModel]) -> str | None:
    """Why dotted `key` is not a key of `schema`; None when it is one, INSIDE_DICT when it names a key inside
    a dict-valued field (backend.extra_body.x: any name goes) or an index of a list."""
    models, prefix = [schema], ""
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(models)
        if part not in fields:
            return f"unknown key {prefix}{part}" + _suggest(part, list(fields), prefix, schema)
        if i == len(parts) - 1:
            return None
        models, any_key, indexed = _models_and_dict(fields[part].annotation)
        if any_key or indexed:
            return INSIDE_DICT
        if not models:
            return f"{prefix}{part} takes a value, not keys (got {key})"
        prefix = f"{prefix}{part}."
    return None


def check_overrides(argv: Sequence[str], schema: type[BaseModel], include: Sequence[str] = ()) -> list[str]:
    """Every override's key against the schema, before Hydra composes. Group selections (model=NAME, also
    model@judge.model=NAME), hydra.* and hydra/... pass through to Hydra; +key (add) and ~key (delete) are
    checked like key=value; sweep values (-m samples=1,2) are not looked at, only their key.

    Returns argv with `dict.key=value` (a key inside a dict-valued field, such as backend.extra_body.x) made
    `++dict.key=value`: Hydra wants `+` for a key the composed dict lacks and refuses `+` for one it has, and
    either way the user means "set it"."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    args = get_args_parser().parse_args(list(argv))
    if args.help or args.hydra_help or args.shell_completion:
        return list(argv)
    parser = OverridesParser.create()
    group_names = set(groups(include)) & set(schema.model_fields)  # synth has no prompts/sampling/judge groups
    forced: set[str] = set()
    picked_model, path_arg = False, None
    for arg in args.overrides:
        try:
            ov = parser.parse_overrides([arg])[0]
        except Exception as e:  # noqa: BLE001  (Hydra's parse errors span lines; the first one names the problem)
            raise UserError(f"{arg}: {str(e).strip().splitlines()[0]}") from None
        key = ov.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        if key == "model" and ov.package is None:
            picked_model = True
        if key == "model.path" and ov.type == OverrideType.CHANGE:
            path_arg = arg
        if key in group_names and (ov.package is not None or not ov.is_delete()):
            continue  # a group selection: its option is checked by check_group_choices
        if "/" in key:
            raise UserError(f"{arg}: unknown config group {key}")
        why = check_key(key, schema)
        if why == INSIDE_DICT:
            if ov.type == OverrideType.CHANGE:
                forced.add(arg)
        elif why:
            raise UserError(f"{arg}: {why}")
    out = [f"++{a}" if a in forced else a for a in argv]
    if path_arg and not picked_model and "model" in group_names:
        # another model on the default's file would inherit SmolLM2's name, float32 and 2,048-token context:
        # the generic file (conf/model/hf.yaml) takes them from the model itself instead
        out.insert(out.index(path_arg), "model=hf")
    return out


def prepare(argv: Sequence[str], schema: type[BaseModel], prog: str, config_name: str = "config") -> list[str]:
    """Everything an entry point checks before Hydra composes; a mistake is one line and exit 2. Returns the
    overrides as Hydra should read them (check_overrides' spelling): the caller puts them in sys.argv.
    -h / --help prints help_text (config_name: the conf/ file the entry point composes) and exits 0."""
    try:
        check_flags(argv, schema, prog)
        # the groups must be registered before Hydra composes, so include_path is read from the command line here
        include = paths.from_overrides(argv)
        register_groups(include)
        if "-h" in argv or "--help" in argv:
            print(help_text(schema, prog, config_name, include))
            sys.exit(0)
        check_group_choices(argv, include)
        return check_overrides(argv, schema, include)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


# Hydra's own flags (hydra/_internal/utils.py get_args_parser): everything else spelled --x is a user's --key value
def _hydra_flags() -> set[str]:
    from hydra._internal.utils import get_args_parser

    return set(get_args_parser()._option_string_actions)


def check_flags(argv: Sequence[str], schema: type[BaseModel], prog: str) -> None:
    """`--backend fake` / `--samples=4` / `--verbose`: one line saying to write backend=fake (Hydra's grammar),
    not Hydra's usage block ending in "unrecognized arguments"."""
    flags = _hydra_flags()
    for i, arg in enumerate(argv):
        if not arg.startswith("-") or arg == "-" or arg.partition("=")[0] in flags or arg[1:2].isdigit():
            continue
        if i and argv[i - 1] in flags and argv[i - 1] not in ("-m", "--multirun", "--resolve", "--run", "-r"):
            continue  # the value of --config-dir DIR, --cfg job, --info ...
        key, eq, val = arg.lstrip("-").partition("=")
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        said = arg
        if not eq and nxt is not None and not nxt.startswith("-") and "=" not in nxt:
            val, eq, said = nxt, "=", f"{arg} {nxt}"
        why = None if key.split(".")[0] in groups() else check_key(key, schema)
        if why not in (None, INSIDE_DICT) and "did you mean" not in why:  # -x, --foo: no key of ours
            raise UserError(f"{arg}: unknown flag; settings are key=value ({command(prog)} --help lists them)")
        if not eq:
            val = "true" if _annotation(schema, key) is bool else "VALUE"
        meant = re.search(r"did you mean ([\w.]+)\?", why or "")
        raise UserError(f"{said}: settings are key=value, not --key value: write {meant[1] if meant else key}={val}")


def _annotation(schema: type[BaseModel], key: str):
    """The type of dotted `key` in `schema` (None when it is not a plain field path)."""
    model, ann = schema, None
    for part in key.split("."):
        f = model.model_fields.get(part) if model else None
        if f is None:
            return None
        ann = f.annotation
        models = _models_and_dict(ann)[0]
        model = models[0] if models else None
    return ann


def command(prog: str) -> str:
    """How the user started `prog` (cai_gen, cai_gen.synth): `cai-gen [synth]` (the console script says so in
    $CAI_GEN_COMMAND, cai_gen/console.py) or `python -m cai_gen[.synth]`."""
    if os.environ.get("CAI_GEN_COMMAND"):
        return " ".join([os.environ["CAI_GEN_COMMAND"], *prog.split(".")[1:]])
    return f"python -m {prog}"


COMMANDS = {"synth": "prompts for a constitution, written by the model", "evaluate": "does DPO on a run dir teach?",
            "review": "expert review of routed pairs (invite, serve, status, merge ...)",
            "merge": "merge shard run dirs into one", "push": "upload a run dir to the Hub as a dataset repository"}


def help_text(schema: type[BaseModel], prog: str, config_name: str, include: Sequence[str] = (),
              width: int | None = None) -> str:
    """`--help`: the usage, the config groups with their options, and every key with its default and comment
    (cai_gen/schema_doc.py reads them from the schema and conf/)."""
    import shutil
    import textwrap

    from . import schema_doc

    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    options, rows = schema_doc.conf_keys(schema, config_name, include)

    cmd = " ".join(["cai-gen", *prog.split(".")[1:]])
    L = [f"usage: {cmd} [KEY=VALUE ...] [GROUP=OPTION ...]   (the same: python -m {prog} ...)"]
    if prog == "cai_gen":
        L += [f"       {cmd} -m KEY=A,B ...   a sweep: one run per combination",
              f"       {cmd} COMMAND ...      {' | '.join(COMMANDS)} ({cmd} COMMAND --help)", "",
              "Makes Constitutional-AI preference data: answers, critiques against a constitution's principles and",
              "revisions, written as (chosen, rejected) pairs, KTO and SFT rows to a run dir.", "",
              "  " + "\n  ".join(f"{c:<9} {what}" for c, what in COMMANDS.items())]
    L += ["", f"Settings are KEY=VALUE (Hydra's grammar, not --key value), e.g. {cmd} backend=fake limit=5",
          "Hydra's own flags: --cfg job (print the composed config), --hydra-help, --config-dir DIR, -m", "",
          "Config groups: GROUP=OPTION loads conf/GROUP/OPTION.yaml (* the default); then GROUP.KEY=VALUE"]
    for g, (opts, default) in options.items():
        L.append(f"  {g:<13} " + " | ".join(o + ("*" if o == default else "") for o in opts))

    def entry(k) -> list[str]:
        left = f"  {k.name}" if k.section else f"  {k.name}={schema_doc.show(k.default)}"
        text = schema_doc.described(k)  # the reference's text too
        col = 34
        body = textwrap.wrap(text, max(width - col, 30), break_on_hyphens=False, break_long_words=False) or [""]
        if not text:
            return [left]
        if len(left) >= col:
            return [left] + [" " * col + b for b in body if b]
        return [left.ljust(col) + body[0]] + [" " * col + b for b in body[1:]]

    L += ["", "Keys (KEY=DEFAULT  what it does):"]
    top = [k for k in rows if "." not in k.name and not k.section]  # the run's own knobs first, then each section
    for k in top + [k for k in rows if k not in top]:
        if k.section and "." not in k.name:
            L.append("")
        L += entry(k)
    return "\n".join(L)
