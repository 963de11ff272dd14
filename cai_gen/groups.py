"""The config groups: constitution= and prompts= found by scanning, conf/<group>/*.yaml, and the user's own
model/, sampling/, judge/, backend/ YAMLs in include_path folders. Below both cli.py (which checks overrides
against them) and schema_doc.py (which documents them), so neither imports the other's way up."""
from __future__ import annotations

from collections.abc import Sequence

from . import constitution, paths, prompts
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
