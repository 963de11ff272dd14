"""Your own model (issue 33 item 1): its name and context come from the model, not from the default's file."""
import json
from pathlib import Path

import pytest

from .conftest import make_cfg


def _ckpt(tmp_path, ctx=32768):
    d = tmp_path / "my-ckpt-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"max_position_embeddings": ctx, "torch_dtype": "bfloat16"}))
    return d


def test_hf_model_dir_names_itself_and_takes_its_context(tmp_path):
    d = _ckpt(tmp_path, ctx=4000)
    m = make_cfg("model=hf", "model.source=path", f"model.path={d}").model
    assert (m.name, m.max_model_len, m.dtype) == ("my-ckpt-7b", 4000, "auto")


def test_hf_model_context_is_capped_and_explicit_name_wins(tmp_path):
    d = _ckpt(tmp_path, ctx=131072)
    m = make_cfg("model=hf", "model.source=path", f"model.path={d}", "model.name=X").model
    assert (m.name, m.max_model_len) == ("X", 8192)


def test_hf_hub_id_is_its_name():
    m = make_cfg("model=hf", "model.path=Qwen/Qwen2.5-7B-Instruct").model
    assert (m.name, m.source, m.max_model_len) == ("Qwen/Qwen2.5-7B-Instruct", "hub", 4096)


def test_default_model_is_unchanged():
    m = make_cfg().model
    assert (m.name, m.dtype, m.max_model_len) == ("SmolLM2-135M-Instruct", "float32", 2048)


def test_model_path_on_the_default_model_drops_its_name_dtype_and_context(tmp_path):
    d = _ckpt(tmp_path, ctx=6000)
    m = make_cfg("model.source=path", f"model.path={d}").model
    assert (m.name, m.dtype, m.max_model_len) == ("my-ckpt-7b", "auto", 6000)
    m = make_cfg("model.source=hub", "model.path=Qwen/Qwen2.5-7B-Instruct").model
    assert (m.name, m.dtype) == ("Qwen/Qwen2.5-7B-Instruct", "auto")


def test_a_run_of_a_checkpoint_dir_records_its_name_and_context(tmp_path):
    from .test_config import run_cli
    d = _ckpt(tmp_path, ctx=3000)
    r = run_cli("backend=fake", "limit=1", "samples=1", "model.source=path", f"model.path={d}",
                f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())["model"]
    assert (cfg["name"], cfg["dtype"], cfg["max_model_len"]) == ("my-ckpt-7b", "auto", 3000)
    rows = [json.loads(l) for l in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    assert rows and {r["model"] for r in rows} == {"my-ckpt-7b"}


MINE = "name: mine-model  # x\nsource: hub  # x\npath: org/mine  # x\nmax_model_len: 1024  # x\n"


def test_include_path_model_folder_is_a_model_option(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(MINE)
    m = make_cfg(f"include_path=[{tmp_path}]", "model=mine").model
    assert (m.name, m.path, m.max_model_len) == ("mine-model", "org/mine", 1024)


def test_hydra_searchpath_and_config_dir_find_a_model_of_your_own(tmp_path):
    from .test_config import run_cli
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "mine.yaml").write_text(MINE)
    for i, how in enumerate(([f"hydra.searchpath=[file://{tmp_path}/conf]"], ["--config-dir", f"{tmp_path}/conf"])):
        r = run_cli(*how, "backend=fake", "limit=1", "samples=1", "model=mine", f"hydra.run.dir={tmp_path}/out{i}")
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads((tmp_path / f"out{i}" / "config.json").read_text())["model"]["name"] == "mine-model"


def test_a_checkpoint_dir_needs_no_source(tmp_path):
    # model.path=DIR alone: the dir is read as a checkpoint (its name, its context), not taken for a hub id named
    # like its full path with a 4,096-token context
    d = _ckpt(tmp_path, ctx=6000)
    m = make_cfg(f"model.path={d}").model
    assert (m.source, m.name, m.max_model_len) == ("path", "my-ckpt-7b", 6000)


def _hub_cache(tmp_path, monkeypatch, repo="org/cached-7b", ctx=32768):
    """A local hub cache holding only `repo`'s config.json, laid out as huggingface_hub writes it."""
    import huggingface_hub.constants as c
    snap = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"max_position_embeddings": ctx}))
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the context is read from the cache, never fetched
    return repo


def test_a_hub_id_takes_its_context_from_the_local_hub_cache(tmp_path, monkeypatch):
    repo = _hub_cache(tmp_path, monkeypatch, ctx=32768)
    m = make_cfg(f"model.path={repo}").model
    assert (m.name, m.source, m.max_model_len) == (repo, "hub", 8192)
    m = make_cfg("model.path=org/not-cached").model  # not in the cache: the 4,096 default, no download
    assert m.max_model_len == 4096


def test_max_tokens_scale_to_the_context_unless_set(tmp_path):
    from cai_gen.config import scaled
    d = _ckpt(tmp_path, ctx=2048)
    c = make_cfg(f"model.path={d}")
    assert c.model.max_tokens.model_dump() == {"respond": 256, "critique": 128, "revise": 256} == scaled(2048)
    assert (c.sampling.max_tokens.respond, c.sampling.max_tokens.critique) == (256, 128)
    # a value the user set wins: on the model, or per run under sampling
    c = make_cfg(f"model.path={d}", "model.max_tokens.respond=300", "sampling.max_tokens.critique=50")
    assert (c.sampling.max_tokens.respond, c.sampling.max_tokens.critique, c.sampling.max_tokens.revise) == (300, 50, 256)
    assert scaled(131072) == {"respond": 1024, "critique": 384, "revise": 1024}


def test_auto_dtype_is_float32_on_the_cpu_and_a_set_dtype_stays():
    from cai_gen.models import engine_dtype
    assert engine_dtype("auto", cpu=True) == "float32"
    assert engine_dtype("bfloat16", cpu=True) == "bfloat16"
    assert engine_dtype("float16", cpu=False) == "float16"


def _copy_of_default(tmp_path, default_model_dir, name="my-smol", torch_dtype="bfloat16"):
    """The real default model as a checkpoint dir of the user's own: weights linked, config.json a copy that
    declares `torch_dtype` (a bf16 checkpoint, as most hub models are)."""
    src = Path(default_model_dir)
    d = tmp_path / name
    d.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (d / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(torch_dtype=torch_dtype, dtype=torch_dtype)
    (d / "config.json").write_text(json.dumps(cfg))
    return d, cfg["max_position_embeddings"]


def test_real_default_model_copied_to_a_dir_runs_as_itself(tmp_path, default_model_dir):
    # one override: the written config and every row name the copy, with its context and max tokens
    from .test_config import run_cli
    from cai_gen.config import CONTEXT_CAP, scaled
    d, ctx = _copy_of_default(tmp_path, default_model_dir)
    r = run_cli("backend=fake", "limit=2", "samples=1", f"model.path={d}", f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "out" / "config.json").read_text())["model"]
    context = min(ctx, CONTEXT_CAP)
    assert (m["name"], m["source"], m["dtype"], m["max_model_len"]) == ("my-smol", "path", "auto", context)
    assert m["max_tokens"] == scaled(context)
    rows = [json.loads(l) for l in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    assert rows and {r["model"] for r in rows} == {"my-smol"}


@pytest.mark.slow
def test_auto_dtype_loads_a_bf16_checkpoint_in_float32_on_the_cpu(tmp_path, default_model_dir):
    # the real default model, its copy declaring bf16: dtype=auto on the CPU loads float32 (bf16 output of this
    # model was visibly worse there), where "the checkpoint's torch_dtype" loaded bf16
    import torch
    from cai_gen.backends.transformers import HFBackend
    d, _ = _copy_of_default(tmp_path, default_model_dir)
    b = HFBackend(str(d), "my-smol", dtype="auto", device="cpu")
    assert (b.dtype, b.lm.dtype) == ("float32", torch.float32)


def test_a_hub_id_runs_as_itself_with_one_override(tmp_path, monkeypatch):
    # one override, as for a dir: the written model is the id, with the context its cached config.json says
    import os
    import subprocess
    import sys
    from cai_gen.config import scaled
    from .conftest import ROOT
    repo = _hub_cache(tmp_path, monkeypatch, repo="org/cached-3b", ctx=4096)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", "limit=2", "samples=1", f"model.path={repo}",
                        f"hydra.run.dir={tmp_path}/out"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "out" / "config.json").read_text())["model"]
    assert (m["name"], m["source"], m["max_model_len"], m["max_tokens"]) == (repo, "hub", 4096, scaled(4096))
    rows = [json.loads(l) for l in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()]
    assert rows and {r["model"] for r in rows} == {repo}
