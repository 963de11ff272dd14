"""Failing fast and once (issue 33 item 6): an unreachable Hub is one line, not retries and a warning per file;
`evaluate` on a missing run dir says so before importing TRL, transformers and torch."""
import os
import subprocess
import sys

import pytest

from cai_gen.errors import UserError

from .conftest import ROOT


def _env(tmp_path):
    # a Hub that refuses every connection at once (a closed local port), and empty caches
    return {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_DATASETS_CACHE": str(tmp_path / "ds"), "HF_HUB_OFFLINE": "0"}


def test_an_unreachable_hub_dataset_is_one_line_without_retries(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", "prompts.dataset=someorg/no-such-set",
                        f"hydra.run.dir={tmp_path}/out"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
    assert "cannot reach the Hub" in err[0] and "someorg/no-such-set" in err[0] and "not in the local cache" in err[0]
    assert "Retry" not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_hf_hub_offline_says_so_for_a_dataset(tmp_path):
    env = _env(tmp_path) | {"HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", "prompts.dataset=someorg/no-such-set",
                        f"hydra.run.dir={tmp_path}/out"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "HF_HUB_OFFLINE is set" in r.stderr and "Retry" not in r.stderr, r.stderr[-2000:]


def _no_hub(monkeypatch, tmp_path):
    import huggingface_hub
    import huggingface_hub.constants as c

    def refused(*a, **k):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub, "repo_info", refused)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def test_an_unreachable_hub_model_fails_in_preflight(monkeypatch, tmp_path):
    # before: a printed warning, then the engine retried each file's download before failing
    from cai_gen import models
    _no_hub(monkeypatch, tmp_path)
    with pytest.raises(UserError, match=r"model.path: cannot reach the Hub \(ConnectionRefusedError.*not in the local hub cache"):
        models.check("hub", "someorg/no-such-model")


def test_evaluate_on_a_missing_run_dir_imports_no_trainer():
    code = ("import sys; from cai_gen.evaluate import main; rc = main(['/no/such/run']); "
            "print(rc, sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.stdout.split("\n")[0] == "2 []" and "no such run dir" in r.stderr, (r.stdout, r.stderr[-2000:])
