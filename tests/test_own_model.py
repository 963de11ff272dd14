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
