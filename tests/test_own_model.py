"""Your own model (issue 33 item 1): its name and context come from the model, not from the default's file."""
import json

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
