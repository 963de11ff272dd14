"""`python -m cai_gen [overrides]`: Hydra composes conf/ once -> validated RunConfig -> pipeline.run()."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .paths import CONF

if not (CONF / "config.yaml").is_file():  # a package built without its data: say so instead of Hydra's trace
    sys.exit(f"cai_gen: config folder {CONF} not found; reinstall cai_gen (pip install .) or run from a checkout")

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from . import constitution, paths, prompts  # noqa: E402  (light: pydantic + yaml only)
from .errors import UserError  # noqa: E402


def register_groups(include: Sequence[str] = ()) -> None:
    """constitution=<name> and prompts=<name> choose files found by scanning constitutions/ and prompts/ (the
    user's include path first, then the built-ins): a new domain is a new YAML there, no conf/ entry needed."""
    cs = ConfigStore.instance()
    for name in constitution.available(include):
        cs.store(group="constitution", name=name, node={"name": name, "path": None})
    for name in prompts.available(include):
        cs.store(group="prompts", name=name, node={"name": name, "path": None, "dataset": None, "split": "train",
                                                   "column": "prompt", "id_column": None, "domain_column": None,
                                                   "messages_column": None, "config": None, "revision": None,
                                                   "data_files": None, "keep_duplicates": False})


def check_group_choices(argv: list[str], include: Sequence[str] = ()) -> None:
    """One-line error for `group=unknown` before Hydra prints its multi-line composition error."""
    groups = {"constitution": constitution.available(include), "prompts": prompts.available(include)}
    for g in ("model", "backend", "sampling", "judge"):
        groups[g] = sorted(p.stem for p in (CONF / g).glob("*.yaml"))
    for arg in argv:
        key, eq, val = arg.partition("=")
        options = groups.get(key.lstrip("+~"))
        if not eq or options is None:
            continue
        for choice in val.split(","):  # sweeps: -m constitution=a,b
            if choice and choice not in options:
                print(f"cai_gen: error: {key}={choice}: unknown option (have: {', '.join(options)})", file=sys.stderr)
                sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .config import validate

    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
        run_cfg = validate(raw)
        out = Path(HydraConfig.get().runtime.output_dir)
        if run_cfg.resume:
            out = Path(run_cfg.resume).expanduser()
            if not (out / "work" / "run.json").is_file():
                raise UserError(f"resume: {out} is not a cai_gen run dir (no work/run.json)")
        from . import pipeline, report  # heavy-ish imports only once the config is known to be good

        try:
            summary = pipeline.run(run_cfg, out)
        except KeyboardInterrupt:
            # every finished generation is in the ledger (flushed as it came); the same command picks up there
            from .ledger import saved

            print(f"cai_gen: stopped; {saved(out / 'work')} generations saved; rerun the same command to resume",
                  file=sys.stderr)
            sys.exit(130)
        report.print_summary(summary, out)
    except UserError as e:
        print(f"cai_gen: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        # the groups must be registered before Hydra composes, so include_path is read from the command line here
        include = paths.from_overrides(sys.argv[1:])
        register_groups(include)
    except UserError as e:
        print(f"cai_gen: error: {e}", file=sys.stderr)
        sys.exit(2)
    check_group_choices(sys.argv[1:], include)
    try:
        main()
    except KeyboardInterrupt:  # before the run started (composing, loading prompts): nothing to save
        print("cai_gen: stopped", file=sys.stderr)
        sys.exit(130)
