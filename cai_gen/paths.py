"""Where conf/, constitutions/ and prompts/ are read from, and the user's include path.

The repo keeps the three folders at the top level, where users know them and edit them. Run from a checkout
(an editable install or PYTHONPATH), cai_gen reads them there; an installed wheel carries copies in
cai_gen/_data/, mapped from the top level by pyproject.toml at build time.

Include path: folders of the user's own, each holding constitutions/, prompts/ and/or conf-group folders (model/,
sampling/, judge/, backend/; backend/ also NAME.py backends, cai_gen.backends.load) laid out like the repo's, given
as include_path=[DIR,...] and/or $CAI_GEN_INCLUDE_PATH (os.pathsep-separated). They are searched before the
built-ins, in that order (include_path entries first), and the first file of a name wins: a local
constitutions/harmless.yaml replaces the built-in harmless.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError

PKG = Path(__file__).resolve().parent
ENV = "CAI_GEN_INCLUDE_PATH"
KINDS = ("constitutions", "prompts", "model", "sampling", "judge", "backend")  # conf groups too: DIR/model/mine.yaml


def data_root(pkg: Path = PKG) -> Path:
    """The checkout when cai_gen is imported from one, else the copies inside the installed package."""
    top = pkg.parent
    # pyproject.toml marks a checkout: an installed package's parent is site-packages, which has neither file
    if (top / "pyproject.toml").is_file() and (top / "conf" / "config.yaml").is_file():
        return top
    return pkg / "_data"


ROOT = data_root()
CONF = ROOT / "conf"


def _checked(raw: str, origin: str) -> Path:
    d = Path(raw).expanduser()
    if not d.is_dir():
        raise UserError(f"{origin}: {d} is not a directory")
    if not any((d / k).is_dir() for k in KINDS):
        raise UserError(f"{origin}: {d} has no constitutions/ or prompts/ folder (nor model/, sampling/, "
                        "judge/, backend/) (the include path lists folders that hold them, not the YAML folders themselves)")
    return d.resolve()  # relative entries mean the launch dir, also after a later chdir


def include_dirs(include: Iterable[str] = ()) -> list[Path]:
    """The user's folders in search order: include_path entries, then $CAI_GEN_INCLUDE_PATH."""
    env = [e for e in os.environ.get(ENV, "").split(os.pathsep) if e]
    return [_checked(d, "include_path") for d in include] + [_checked(d, ENV) for d in env]


def folders(kind: str, include: Iterable[str] = ()) -> list[Path]:
    """Where `kind` (constitutions | prompts) files are looked up, first match wins: the user's, then the built-ins."""
    return [d / kind for d in include_dirs(include) if (d / kind).is_dir()] + [ROOT / kind]


def find(kind: str, name: str, include: Iterable[str] = ()) -> Path | None:
    return next((f / f"{name}.yaml" for f in folders(kind, include) if (f / f"{name}.yaml").is_file()), None)


def names(kind: str, include: Iterable[str] = ()) -> list[str]:
    """Selectable names: every <kind>/*.yaml on the search path not starting with '_' (those are include bases)."""
    return sorted({p.stem for f in folders(kind, include) for p in f.glob("*.yaml") if not p.name.startswith("_")})


def from_overrides(overrides: Iterable[str]) -> list[str]:
    """include_path from Hydra command-line overrides, read before Hydra composes: constitution=<name> and
    prompts=<name> are config-group options that must exist by then. Hydra's own parser, so quoting matches."""
    hits = [o for o in overrides if o.lstrip("+~").partition("=")[0] == "include_path"]
    if not hits:
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        ov = OverridesParser.create().parse_overrides([hits[-1]])[0]
    except Exception as e:  # Hydra's parse errors span lines; the user needs the one that names the problem
        raise UserError(f"{hits[-1]}: {str(e).strip().splitlines()[0]}") from None
    if ov.is_sweep_override():
        raise UserError(f"{hits[-1]}: include_path cannot be swept; give one list of folders")
    value = ov.value()
    if value is None or ov.is_delete():
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]
