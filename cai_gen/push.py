"""Put a finished run dir on the Hugging Face Hub as a dataset repository, as it is.

  python -m cai_gen.push RUN_DIR REPO_ID [--private] [--dry-run] [--message TEXT]

The run dir already is a dataset repository (rundir.py): its card's `configs` map the splits to data/*.parquet,
so the Hub's viewer and `load_dataset(REPO_ID)` read it as `load_dataset(RUN_DIR)` does. Uploaded: the files
rundir.HUB_FILES names (card, data/, plots/, eval results, setup, rejected and no-violation rows); not the
ledger, lock, trace, review database or the load_from_disk copies. `--dry-run` lists them without a network.
huggingface_hub does the upload; it finds your token as it always does (`hf auth login`, or HF_TOKEN).
"""
from __future__ import annotations

import sys
from pathlib import Path

from . import rundir
from .errors import ArgParser, UserError
from .lock import RunLock


def checked(run: Path) -> Path:
    """`run` if it is a dataset repository whose card names only files that are there; else a UserError."""
    import yaml
    from huggingface_hub import DatasetCard

    card = run / rundir.CARD
    if not run.is_dir():
        raise UserError(f"{run}: no such run dir")
    if not card.is_file():
        raise UserError(f"{run}: not a finished cai_gen run dir (no {rundir.CARD})")
    try:
        configs = DatasetCard.load(card).data.to_dict().get("configs") or []
        named = [(c["config_name"], f["path"]) for c in configs for f in c["data_files"]]
    except (ValueError, yaml.YAMLError) as e:  # YAML that does not parse, or no mapping
        raise UserError(f"{card}: front matter is not valid YAML ({str(e).splitlines()[0]})") from None
    except (KeyError, TypeError, AttributeError):  # edited by hand into another shape
        raise UserError(f"{card}: front matter `configs` is not a list of config_name + data_files (split, path); "
                        f"`python -m cai_gen.report {run}` rewrites the card") from None
    if not named:
        raise UserError(f"{card}: its front matter maps no data files (a run written before cai_gen wrote data/); "
                        "rerun it (same command and run dir: nothing is regenerated), then push")
    for c, f in named:
        if not (run / f).is_file():
            raise UserError(f"{card}: config {c!r} names {f}, which is not in the run dir; rerun it (same command "
                            "and run dir) to rewrite data/")
    return run


def files(run: Path) -> list[str]:
    """What the upload sends, in the run dir's terms: huggingface_hub's own filter over rundir.HUB_FILES."""
    from huggingface_hub.utils import filter_repo_objects

    have = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    return list(filter_repo_objects(have, allow_patterns=rundir.HUB_FILES))


def repo_id(raw: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(raw)
    except HFValidationError as e:
        raise UserError(f"repo id {raw!r}: {str(e).splitlines()[0]}") from None
    return raw


def push(run: Path, repo: str, private: bool, message: str) -> str:
    """Create the dataset repo (if missing) and upload the run's files in one commit; the commit's URL.
    Remote data/, plots/ and eval/ files this run no longer has are deleted in that commit."""
    import httpx
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(run), repo_id=repo, repo_type="dataset",
                                 allow_patterns=rundir.HUB_FILES, delete_patterns=["data/*", "plots/*", "eval/*"],
                                 commit_message=message)
    except (OSError, httpx.HTTPError) as e:  # no token, no network, no write access: huggingface_hub says which
        raise UserError(f"push to {repo}: {str(e).strip().splitlines()[0]}") from None
    return str(info)


def main(argv: list[str]) -> int:
    p = ArgParser(prog="python -m cai_gen.push", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run dir")
    p.add_argument("repo", help="the dataset repo on the Hub: USER/NAME or ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                   "visibility)")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; no network")
    p.add_argument("--message", default=None, help="commit message (default: 'cai_gen run <run dir name>')")
    a = p.parse_args(argv)
    try:
        repo = repo_id(a.repo)
        run = checked(a.run)
        with RunLock(run):  # a run writing into this dir now would swap files under the upload
            up = files(run)
            if a.dry_run:
                print(f"cai_gen.push: would upload {len(up)} files from {run} to dataset {repo}"
                      + (" (private)" if a.private else "") + ":")
                print("\n".join(up))
                return 0
            url = push(run, repo, a.private, a.message or f"cai_gen run {run.resolve().name}")
    except UserError as e:
        print(f"cai_gen.push: error: {e}", file=sys.stderr)
        return 2
    print(f"cai_gen.push: {len(up)} files from {run} -> https://huggingface.co/datasets/{repo} ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
