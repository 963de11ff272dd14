"""`python -m cai_gen [overrides]`: Hydra composes conf/ once -> validated RunConfig -> pipeline.run()."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .paths import CONF

if not (CONF / "config.yaml").is_file():  # a package built without its data: say so instead of Hydra's trace
    sys.exit(f"cai_gen: config folder {CONF} not found; reinstall cai_gen (pip install .) or run from a checkout")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .cli import prepare, register_groups  # noqa: E402,F401  (register_groups: for tests that compose by hand)
from .errors import Resumable, Terminated, UserError, stop_code, stop_on_sigterm  # noqa: E402


def resume_command(out: Path, resumed: bool) -> str:
    """The command that continues this run: its own overrides into its own dir. "The same command" is not it
    when the run dir is the default timestamped one (a new dir, everything generated again), nor for one job of
    a sweep (-m makes a new sweep dir)."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    ov = HydraConfig.get().overrides
    # the sweep's mode, dirs and launcher made this job; the job itself runs on its own
    drop = ("hydra.mode=", "hydra.run.dir=", "hydra.sweep.", "hydra/launcher=", "hydra.launcher.")
    args = [a for a in ov.hydra if not a.lstrip("+~").startswith(drop)] + list(ov.task)
    if not resumed:  # resume=DIR already names the dir
        args.append(f"hydra.run.dir={out.resolve()}")
    from .cli import command

    return " ".join([command("cai_gen"), *map(shlex.quote, args)])  # cai-gen when the console script ran us


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from . import rundir
    from .config import validate

    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
        run_cfg = validate(raw)
        out = Path(HydraConfig.get().runtime.output_dir)
        if run_cfg.resume:
            out = Path(run_cfg.resume).expanduser()
            if not (out / rundir.WORK / rundir.RUN_RECORD).is_file():
                raise UserError(f"resume: {out} is not a cai_gen run dir (no work/run.json)")
        from . import pipeline, report  # heavy-ish imports only once the config is known to be good

        try:
            summary = pipeline.run(run_cfg, out)
        except (KeyboardInterrupt, Resumable) as e:
            # every finished generation is in the ledger (flushed as it came); a rerun into this dir picks up there
            from .ledger import saved

            what = f"error: {e}" if isinstance(e, Resumable) else \
                "stopped by SIGTERM" if isinstance(e, Terminated) else "stopped"
            print(f"cai_gen: {what}; {saved(out / rundir.WORK)} generations saved; resume: "
                  f"{resume_command(out, bool(run_cfg.resume))}", file=sys.stderr)
            sys.exit(2 if isinstance(e, Resumable) else stop_code(e))
        report.print_summary(summary, out)
        why = report.nothing_kept(summary, out)
        if why:  # a finished run with nothing to train on is no success (exit 1: not bad input, which is 2)
            print(f"cai_gen: {why}", file=sys.stderr)
            sys.exit(1)
    except UserError as e:
        print(f"cai_gen: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from .config import RunConfig

    stop_on_sigterm()
    sys.argv[1:] = prepare(sys.argv[1:], RunConfig, "cai_gen")
    try:
        main()
    except KeyboardInterrupt as e:  # before the run started (composing, loading prompts): nothing to save
        print("cai_gen: stopped", file=sys.stderr)
        sys.exit(stop_code(e))
