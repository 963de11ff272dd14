"""One quick look at the Hub before a dataset or model is loaded from it, so an unreachable Hub costs one request
and one line, not huggingface_hub's five retries per file (1 + 2 + 4 + 8 + 8 s) and a warning for each.

reachable() asks once (repo_info, 10 s timeout, no retries): a repo that is not there or is gated is a user
error now; a Hub that does not answer turns the load into an offline one (the local cache only), which either
finds the repo there or fails at once, and says why in one line.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from .errors import UserError


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the user said not to reach the Hub."""
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(repo_id: str, repo_type: str, field: str) -> str | None:
    """None when the Hub answers and has `repo_id`; the reason (one phrase) when the Hub cannot be reached.
    A repo the Hub says is missing or gated raises UserError naming `field`."""
    from huggingface_hub import repo_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    what = "dataset" if repo_type == "dataset" else "model"
    try:
        repo_info(repo_id, repo_type=repo_type, timeout=10)
    except GatedRepoError:
        raise UserError(f"{field}: {repo_id} is gated on the Hub: accept its terms and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"{field}: no {what} {repo_id} on the Hub (a typo? a private one needs HF_TOKEN)") from None
    except Exception as e:  # noqa: BLE001  (no network, DNS, a proxy, a timeout: the Hub did not answer)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no answer'}"
    return None


@contextmanager
def offline_mode():
    """huggingface_hub and datasets read HF_HUB_OFFLINE once, at import: set their copies for this block."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
