"""A backend is one file that registers itself with its config class: a user's backend/NAME.py beside its
backend/NAME.yaml in an include_path folder runs with no cai_gen file edited (the fake engine underneath)."""
import json
from pathlib import Path

import pytest

from cai_gen import backends, pipeline
from cai_gen.errors import UserError

from .conftest import ONE, make_cfg

PLUGIN = '''
from typing import Literal

from cai_gen.backends import register
from cai_gen.backends.fake import FakeBackend, FakeCfg


class GreetCfg(FakeCfg):
    kind: Literal["greet"] = "greet"
    greeting: str = "Hello."  # what every first answer opens with

    def options(self, model, seed):
        return super().options(model, seed) | {"greeting": self.greeting}


@register("greet", GreetCfg)
class GreetBackend(FakeBackend):
    name = "greet"

    def __init__(self, model_path, model_name, *, greeting, **opts):
        super().__init__(model_path, model_name, **opts)
        self.greeting = greeting

    def _text(self, conv, p):
        text = super()._text(conv, p)
        return self.greeting + text[len("Sure."):] if text.startswith("Sure.") else text
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    # the registry is process-wide: this test's backend leaves with it
    monkeypatch.setattr(backends, "_configs", dict(backends.configs()))
    monkeypatch.setattr(backends, "_classes", dict(backends._classes))
    monkeypatch.setattr(backends, "_loaded", set())
    d = tmp_path / "mine"
    (d / "backend").mkdir(parents=True)
    (d / "backend" / "greet.py").write_text(PLUGIN)
    (d / "backend" / "greet.yaml").write_text("kind: greet\ngreeting: Hello.\nmax_model_len: 2048\n")
    return d


def test_a_backend_is_one_file_and_one_yaml(plugin_dir, tmp_path):
    cfg = make_cfg("backend=greet", f"include_path={plugin_dir}", "backend.greeting=Ahoy.", "limit=2", "samples=1", ONE)
    assert type(cfg.backend).__name__ == "GreetCfg" and cfg.backend.greeting == "Ahoy."
    out = tmp_path / "run"
    s = pipeline.run(cfg, out)  # opens its own engine through the registry
    prefs = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert s["kept"] == len(prefs) > 0
    assert all(r["rejected"][0]["content"].startswith("Ahoy. ") for r in prefs)  # the originals are its answers
    assert json.loads((out / "config.json").read_text())["backend"]["greeting"] == "Ahoy."


def test_a_plugin_backend_key_is_checked_like_a_built_in_one(plugin_dir):
    with pytest.raises(UserError, match=r"unknown key backend\.greting \(did you mean backend\.greeting\?\)"):
        make_cfg("backend=greet", f"include_path={plugin_dir}", "backend.greting=x")
    with pytest.raises(UserError, match=r"^config: backend\.kind: Input should be 'vllm', 'transformers', 'fake', "
                                        r"'openai' or 'greet' \(got 'gret'\)$"):
        make_cfg("backend=greet", f"include_path={plugin_dir}", "backend.kind=gret")


def test_a_broken_backend_file_is_one_line(plugin_dir):
    (plugin_dir / "backend" / "greet.py").write_text("import no_such_module_here\n")
    with pytest.raises(UserError, match=r"greet\.py: ModuleNotFoundError: No module named 'no_such_module_here'$"):
        make_cfg("backend=greet", f"include_path={plugin_dir}")


def test_unknown_kind_lists_the_built_ins_as_before():
    with pytest.raises(UserError, match=r"^config: backend\.kind: Input should be 'vllm', 'transformers', 'fake' or "
                                        r"'openai' \(got 'zz'\)$"):
        make_cfg("backend=fake", "backend.kind=zz")


def test_evaluate_answers_through_the_runs_own_backend(plugin_dir, tmp_path):
    # --answer-backend took vllm, transformers or fake only: a run made with a backend of the user's own could not
    # be evaluated through it. Now any registered kind, loaded from the run's include_path, with the run's knobs.
    from cai_gen import evaluate, prompts

    cfg = make_cfg("backend=greet", f"include_path={plugin_dir}", "backend.greeting=Ahoy.", "limit=2", "samples=1", ONE)
    out = tmp_path / "run"
    pipeline.run(cfg, out)
    # as in a fresh process, where only the run's include_path can register it
    backends._configs.pop("greet"), backends._classes.pop("greet"), backends._loaded.clear()
    a = evaluate.parse([str(out), "--answer-backend", "greet", "--samples", "1"])
    recs = prompts.load("customer_service", None, None, limit=2)
    texts = evaluate.answers(a, out, "unused-model-dir", "mine", recs)
    assert len(texts) == 2 and all(t.startswith("Ahoy. ") for t in texts)  # the run's knob, not the yaml's Hello.
    with pytest.raises(UserError, match=r"^--answer-backend: unknown backend 'gret' \(use auto, vllm, transformers, "
                                        r"fake, openai, greet\)$"):
        evaluate.answer_backend(evaluate.parse([str(out), "--answer-backend", "gret"]), json.loads(
            (out / "config.json").read_text()))
    with pytest.raises(UserError, match=r"^--answer-backend openai: a server answers with the model it serves"):
        evaluate.answer_backend(evaluate.parse([str(out), "--answer-backend", "openai"]), {})
