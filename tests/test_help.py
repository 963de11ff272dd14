"""The command line's own help and grammar (issue 33 item 5): --help lists the groups and every key with its
comment from the schema; --key value gets one line saying key=value; `cai-gen` runs every entry point."""
import subprocess
import sys
import tomllib
import typing

import pytest

from cai_gen import schema_doc
from cai_gen.config import RunConfig, SynthConfig

from .conftest import ROOT


def _run(*args, module="cai_gen"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _console(*args):
    return subprocess.run([sys.executable, "-c", "from cai_gen.console import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("schema,module,config", [(RunConfig, "cai_gen", "config"),
                                                  (SynthConfig, "cai_gen.synth", "synth")])
def test_help_lists_the_groups_and_every_key_with_its_comment(schema, module, config):
    r = _run("--help", module=module)
    assert r.returncode == 0, r.stderr
    assert "powered by Hydra" not in r.stdout and "== Config ==" not in r.stdout  # not Hydra's raw YAML dump
    options, keys = schema_doc.conf_keys(schema, config)
    lines = r.stdout.splitlines()
    for g, (opts, default) in options.items():
        line = next(l for l in lines if l.split()[:1] == [g])
        assert f"{default}*" in line and all(o in line for o in opts), line
    flat = " ".join(r.stdout.split())  # comments wrap over lines
    for k in keys:
        assert k.comment, f"{k.name}: no comment in the schema nor in conf/"
        start = f"{k.name}" if k.section else f"{k.name}={schema_doc.show(k.default)}"
        assert any(l.strip().startswith(start) for l in lines), start
        assert " ".join(k.comment.split()[:6]) in flat, k.name


def test_help_lists_every_backends_own_knobs_with_the_kinds_that_have_them():
    """Each backend's knobs live in its own config class (cai_gen/backends/*.py), not in BackendCfg: --help and the
    reference walk every registered class, or a vLLM user never sees max_num_seqs."""
    r = _run("--help")
    flat = " ".join(r.stdout.split())
    from cai_gen import backends
    from cai_gen.config import BackendCfg

    backends.load()
    for cls in BackendCfg.variants():
        kind = typing.get_args(cls.model_fields["kind"].annotation)[0]
        for name in set(cls.model_fields) - set(BackendCfg.model_fields):
            assert f"backend.{name}=" in flat, (kind, name)
    assert "backend.max_num_seqs=256 (vllm)" in flat and "(fake, openai)" in flat


def test_help_shows_the_composed_defaults_and_the_schema_comment_first():
    r = _run("--help")
    assert "samples=1 " in r.stdout and "model.max_model_len=2048 " in r.stdout  # conf/, not the schema's 4096
    assert "filters.min_edit=0.05" in r.stdout and "drop (too_similar)" in r.stdout  # a comment conf/ holds


@pytest.mark.parametrize("args,fix", [(["--backend", "fake"], "write backend=fake"),
                                      (["--samples=4"], "write samples=4"),
                                      (["--sampels", "4"], "write samples=4"),
                                      (["--verbose"], "write verbose=true"),
                                      (["--model.path", "org/m"], "write model.path=org/m"),
                                      (["-x"], "unknown flag; settings are key=value")])
def test_key_value_flags_get_a_one_line_hint(args, fix):
    r = _run(*args)
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(err) == 1 and fix in err[0], r.stderr
    assert "Traceback" not in r.stderr and "usage:" not in r.stderr


def test_synth_flags_get_the_hint_too():
    r = _run("--n", "5", module="cai_gen.synth")
    assert r.returncode == 2 and "write n=5" in r.stderr and "Traceback" not in r.stderr


def test_hydra_flags_still_work():
    r = _run("--cfg", "job", "backend=fake")
    assert r.returncode == 0 and "kind: fake" in r.stdout, r.stderr


def test_console_script_runs_each_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"cai-gen": "cai_gen.console:main"}
    r = _console("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: cai-gen [KEY=VALUE") and "review" in r.stdout
    r = _console("--backend", "fake")  # the hint names the command the user typed
    assert r.returncode == 2 and "write backend=fake" in r.stderr
    r = _console("-x")
    assert "cai-gen --help" in r.stderr
    r = _console("synth", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: cai-gen synth")
    r = _console("review", "--help")
    assert r.returncode == 0 and "invite" in r.stdout
    r = _console("evaluate", str(ROOT / "no-such-run"))
    assert r.returncode == 2 and "no such run dir" in r.stderr and "Traceback" not in r.stderr


def test_field_comments_read_the_trailing_comment_else_the_block_above():
    from cai_gen.config import FiltersCfg, PrinciplesCfg
    assert schema_doc.field_comments(RunConfig)["samples"] == ("", "")
    own, above = schema_doc.field_comments(PrinciplesCfg)["checks"]
    assert own == "" and above.startswith("false: every check ignored")
    own, _ = schema_doc.field_comments(RunConfig)["verbose"]
    assert own.startswith("true: engine logs on the terminal")
    assert schema_doc.field_comments(FiltersCfg)["min_content_words"][1].startswith("answers that still answer")


def test_yaml_comments_follow_the_nesting(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("a: 1  # top\nb:       # section\n  c: 'x # not a comment'  # inner\n  d: 2\n")
    assert schema_doc.yaml_comments(f) == {"a": "top", "b": "section", "b.c": "inner"}


def test_markdown_reference_has_a_row_per_key_and_escaped_pipes():
    import re
    text = schema_doc.markdown(RunConfig)
    _, keys = schema_doc.conf_keys(RunConfig)
    lines = text.splitlines()
    for k in keys:
        want = f"## `{k.name}.*` keys" if k.section and "." not in k.name else f"| `{k.name}` |"
        assert any(l.startswith(want) for l in lines), want
    rows, in_keys = 0, False
    for l in lines:
        if l.startswith("| Key |"):
            in_keys = l.startswith("| Key | Default |")  # not an option file's table (key, value, note)
        elif not l.startswith("|"):
            in_keys = False
        elif l.startswith("| `"):  # a comment's "a | b" is escaped: every row keeps three columns
            rows += in_keys
            assert len(re.findall(r"(?<!\\)\|", l)) == 4, l
    assert rows == sum(1 for k in keys if not (k.section and "." not in k.name))


def test_a_subclass_keeps_its_bases_comments_and_a_description_counts():
    """A field's comment is read in the class that declares it: a schema made at run time (no source of its own)
    keeps RunConfig's comments; Field(description=...) is a comment too."""
    from pydantic import Field, create_model

    schema = create_model("WithKnob", __base__=RunConfig, new_knob=(int, Field(3, description="a knob described")))
    comments = {k.name: k.comment for k in schema_doc.keys(schema)}
    assert comments["new_knob"] == "a knob described"
    assert comments["verbose"].startswith("true: engine logs on the terminal")
