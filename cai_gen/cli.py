"""The command line before Hydra composes: config groups found by scanning, and every override checked against
the schema, so a mistake is one line naming the field (exit 2) instead of Hydra's multi-line composition error.

Both entry points (`python -m cai_gen`, `python -m cai_gen.synth`) and config.compose use this module; it knows
the schema only as the pydantic class it is handed, so it imports nothing above paths, constitution and prompts.
"""
from __future__ import annotations

import difflib
import sys
import types
import typing
from collections.abc import Sequence

from pydantic import BaseModel

from . import constitution, paths, prompts
from .errors import UserError
from .paths import CONF


def register_groups(include: Sequence[str] = ()) -> None:
    """constitution=<name> and prompts=<name> choose files found by scanning constitutions/ and prompts/ (the
    user's include path first, then the built-ins): a new domain is a new YAML there, no conf/ entry needed."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name in constitution.available(include):
        cs.store(group="constitution", name=name, node={"name": name, "path": None})
    for name in prompts.available(include):
        cs.store(group="prompts", name=name, node={"name": name, "path": None, "dataset": None, "split": "train",
                                                   "column": "prompt", "id_column": None, "domain_column": None,
                                                   "messages_column": None, "config": None, "revision": None,
                                                   "data_files": None, "keep_duplicates": False,
                                                   "kind": None})
    from omegaconf import OmegaConf

    from . import backends
    backends.load(include)  # the user's backend/NAME.py beside backend/NAME.yaml: its kind and knobs
    for g in CONF_GROUPS:  # the user's own model/, sampling/, judge/, backend/ YAMLs (first of a name wins)
        for name in reversed(paths.names(g, include)):
            f = paths.find(g, name, include)
            if f and f.parent != CONF / g:
                cs.store(group=g, name=name, node=OmegaConf.load(f))


def groups(include: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every config group and its options: the scanned ones and conf/<group>/*.yaml."""
    found = {"constitution": constitution.available(include), "prompts": prompts.available(include)}
    for g in CONF_GROUPS:
        found[g] = sorted({p.stem for p in (CONF / g).glob("*.yaml")} | set(paths.names(g, include)))
    return found


CONF_GROUPS = ("model", "backend", "sampling", "judge")


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


def prepare(argv: Sequence[str], schema: type[BaseModel], prog: str) -> list[str]:
    """Everything an entry point checks before Hydra composes; a mistake is one line and exit 2. Returns the
    overrides as Hydra should read them (check_overrides' spelling): the caller puts them in sys.argv."""
    try:
        # the groups must be registered before Hydra composes, so include_path is read from the command line here
        include = paths.from_overrides(argv)
        register_groups(include)
        check_group_choices(argv, include)
        return check_overrides(argv, schema, include)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
