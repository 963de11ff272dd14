"""The docs are promises: the site builds strictly (a broken link or anchor, or a page left out of nav, fails), the
config reference is generated from the schema and lists every key, and every command quoted in README.md and
docs/ parses: `python -m cai_gen ...` composes through the run's own config loading (keys, groups, values
validated; nothing runs), the other entry points and bench scripts parse their arguments."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _reference_module():
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "hooks" / "reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mkdocs(cfg: Path, site: Path) -> subprocess.CompletedProcess:
    # no skip: CI must build the docs strictly (setup.sh --test installs mkdocs-material with the test extra)
    import material  # noqa: F401
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(cfg), "-d", str(site)],
                          cwd=cfg.parent, env=env, capture_output=True, text=True, timeout=300)


# ---- the site ------------------------------------------------------------------------------------------------

def test_site_builds_strictly_with_the_generated_reference(tmp_path):
    r = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "gate.threshold" in page and "revise_n" in page


def _copy_site(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize("breakage,named", [
    (("how-to/own-model.md", "(scale-out.md)", "(scale-outt.md)"), "scale-outt.md"),             # a missing page
    (("index.md", "(getting-started.md)", "(getting-started.md#no-such-part)"), "no-such-part"),  # a missing anchor
    (("orphan.md", None, "# Orphan\n"), "orphan.md"),                                            # a page not in nav
])
def test_a_broken_link_or_a_page_outside_nav_fails_the_build(tmp_path, breakage, named):
    cfg = _copy_site(tmp_path)
    page, old, new = breakage
    f = tmp_path / "docs" / page
    if old is None:
        f.write_text(new)
    else:
        text = f.read_text()
        assert old in text
        f.write_text(text.replace(old, new, 1))
    r = _mkdocs(cfg, tmp_path / "site")
    assert r.returncode != 0 and named in r.stdout + r.stderr


def _slug(heading: str) -> str:
    from markdown.extensions.toc import slugify

    return slugify(re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading), "-")


def test_readme_links_resolve():
    """README.md is read on GitHub, outside the site: its relative links (and their anchors) must hold too."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"\w+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README.md links to {link}: no such file"
        if anchor:
            heads = re.findall(r"^#+ (.+)$", FENCE.sub("", target.read_text()), re.M)
            assert anchor in {_slug(h) for h in heads}, f"README.md links to {link}: no such heading"


# ---- the config reference -------------------------------------------------------------------------------------

def test_reference_lists_every_schema_key():
    from cai_gen.cli import _leaves, _models_and_dict
    from cai_gen.config import RunConfig, SynthConfig

    page = _reference_module().reference()
    # a key holding a model met before (judge.model) is one row saying so: its keys are that model's rows
    same = dict(re.findall(r"^\| `([\w.]+)` \|.*the same keys as ([\w.]+)\.\\\*", page, re.M))
    assert same == {"judge.model": "model"}
    for schema in (RunConfig, SynthConfig):
        for key in _leaves(schema):
            models = [schema]
            for part in key.split("."):  # a key that holds a model is a heading of its keys, not a row
                # backend: the base class and each registered backend's own (its knobs are the variant's fields)
                f = next(m.model_fields[part] for m in models if part in m.model_fields)
                models = _models_and_dict(f.annotation)[0]
            if not models:
                alias = next((same[p] + key[len(p):] for p in same if key.startswith(p + ".")), key)
                assert f"| `{alias}` |" in page, key


def _conf_copy(tmp_path: Path, extra: str) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    text = (conf / "config.yaml").read_text()
    (conf / "config.yaml").write_text(text.replace("\nhydra:\n", f"\n{extra}\nhydra:\n", 1))
    return conf


def test_a_new_key_appears_with_its_comment(tmp_path):
    from pydantic import create_model

    from cai_gen.config import RunConfig

    ref = _reference_module()
    schema = create_model("WithNewKey", __base__=RunConfig, new_knob=(int, 3))
    conf = _conf_copy(tmp_path, "new_knob: 3       # a knob added for this test")
    page = ref.reference(conf, run_schema=schema)
    assert "| `new_knob` | `3` | a knob added for this test |" in page
    assert "new_knob" not in ref.reference()


def test_a_key_without_a_comment_fails_the_build(tmp_path):
    from pydantic import create_model

    from cai_gen.config import RunConfig

    schema = create_model("WithNewKey", __base__=RunConfig, new_knob=(int, 3))
    with pytest.raises(ValueError, match="without a comment.*new_knob"):
        _reference_module().reference(_conf_copy(tmp_path, "new_knob: 3"), run_schema=schema)


def _unescape(text: str) -> str:
    return re.sub(r"\\([|*])", r"\1", text).replace("&lt;", "<")


def _page_keys(part: str) -> dict[str, str]:
    """{key: "key=default what it does"} of the key tables (not the option files' tables) of a page part, spelled
    as --help spells an entry (a section, a row without a default: "key what it does")."""
    out, in_keys = {}, False
    lines = part.splitlines()
    for i, line in enumerate(lines):
        head = re.match(r"^#+ `(\w+)\.\*` keys$", line)  # a section: its heading, then its comment
        if head:
            out[head[1]] = " ".join(f"{head[1]} {'' if lines[i + 2].startswith('|') else _unescape(lines[i + 2])}".split())
        if line.startswith("| Key |"):
            in_keys = line.startswith("| Key | Default |")
        m = re.match(r"^\| `([\w.]+)` \| (.*?) \| (.*) \|$", line)
        if m and in_keys:
            default = _unescape(m[2]).strip("`")
            out[m[1]] = " ".join(f"{m[1]}{'=' + default if m[2] else ''} {_unescape(m[3])}".split())
    return out


def _help_keys(text: str) -> dict[str, str]:
    """{key: "key=default what it does"} from --help's key list (a comment wraps onto indented lines)."""
    out, name = {}, None
    for line in text.split("Keys (KEY=DEFAULT  what it does):", 1)[1].splitlines():
        if not line.strip():
            continue
        if line.startswith(" " * 34):
            out[name] += " " + line.strip()
        else:
            name = re.match(r"  ([\w.]+)", line)[1]
            out[name] = line.strip()
    return {k: " ".join(v.split()) for k, v in out.items()}


def test_help_and_the_reference_list_the_same_keys_with_the_same_comments():
    """--help and the docs page are one walk of the schema (cai_gen/schema_doc.py): the same keys, defaults and
    comments. Where synth's sections are the run's (model.*, backend.*), the page names them once."""
    page = _reference_module().reference()
    run_part, synth_part = page.split("## `python -m cai_gen.synth` keys", 1)
    run_page, synth_page = _page_keys(run_part), _page_keys(synth_part)
    shared = dict(re.findall(r"^- \[`(\w+)\.\*`\]\(#\1-keys\): (.*)$", synth_part, re.M))  # "the run's"
    assert {"model", "backend"} <= set(shared)
    synth_page.update({k: v for k, v in run_page.items() if k.split(".")[0] in shared and k not in shared})
    synth_page.update({k: " ".join(f"{k} {_unescape(c)}".split()) for k, c in shared.items()})
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT)}
    for module, want in (("cai_gen", run_page), ("cai_gen.synth", synth_page)):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        got = _help_keys(r.stdout)
        assert sorted(got) == sorted(want), module
        for k in got:
            assert got[k] == want[k], k
    assert "model.dtype=float32 auto: bfloat16 on a GPU" in run_page["model.dtype"]  # the walk has its values


# ---- every quoted command parses -------------------------------------------------------------------------------

def quoted_commands() -> list[tuple[str, str]]:
    """(page:line, command) for every command in a bash block, and every inline `python ...` command, of README.md,
    docs/ and the generated reference. A command of several lines (trailing backslash) is one; `a && b` is two."""
    found = []
    pages = [(p.relative_to(ROOT), p.read_text()) for p in PAGES]
    for rel, text in pages + [(_reference_module().PAGE, _reference_module().reference())]:
        for m in FENCE.finditer(text):
            if m[1] not in ("bash", "sh", "shell", "console"):
                continue
            first = text[:m.start(2)].count("\n") + 1
            for i, line in enumerate(m[2].replace("\\\n", " ").splitlines()):
                found += [(f"{rel}:{first + i}", c.strip()) for c in line.split("&&") if c.strip()]
        prose = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
        for m in re.finditer(r"`([^`]+)`", prose):
            span = " ".join(m[1].split())
            if re.match(r"((\.venv/bin/)?python (-m cai_gen|bench/)|cai-gen)\S* \S", span):
                found += [(f"{rel}:{prose[:m.start()].count(chr(10)) + 1}", c.strip()) for c in span.split("&&")]
    return found


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch):
    """argparse parses, then stops: whatever the tool would do next is not run."""
    real = argparse.ArgumentParser.parse_args

    def parse_args(self, *a, **k):
        real(self, *a, **k)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def _compose(argv: list[str], synth: bool):
    """What `python -m cai_gen[.synth] ARGV` would run with: its own checks, Hydra's composition, the schema."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from cai_gen import paths
    from cai_gen.cli import check_group_choices, check_overrides, register_groups
    from cai_gen.config import RunConfig, SynthConfig, validate

    schema = SynthConfig if synth else RunConfig
    argv = list(argv)
    if "--config-dir" in argv:  # Hydra's flag for a primary config folder: the same search as hydra.searchpath
        i = argv.index("--config-dir")
        argv[i:i + 2] = [f"hydra.searchpath=[file://{argv[i + 1]}]"]
    if argv in (["--help"], ["-h"]):
        return
    sweep = argv[:1] == ["-m"]
    argv = argv[1:] if sweep else argv
    include = paths.from_overrides(argv)
    register_groups(include)
    check_group_choices(argv, include)
    argv = check_overrides(argv, schema, include)
    if sweep:  # one job of the sweep: each swept key at its first value
        parser = OverridesParser.create()
        argv = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else a
                for a, o in ((a, parser.parse_overrides([a])[0]) for a in argv)]
    with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3"):
        cfg = compose(config_name="synth" if synth else "config", overrides=argv)
    validate(OmegaConf.to_container(cfg, resolve=False if sweep else True), schema)


MODULES = ("review", "evaluate", "merge", "push", "benchmark", "constrain")


def check_command(cmd: str, user_dir: Path) -> str | None:
    """None when `cmd` parses, else why not. Commands of other tools (bash, pip, git, vllm) are not ours."""
    with pytest.MonkeyPatch.context() as mp:  # argparse stops after parsing only inside this call
        return _check(cmd, user_dir, mp)


def _check(cmd: str, user_dir: Path, monkeypatch) -> str | None:
    argv = shlex.split(re.sub(r"\bDIR\b", str(user_dir), cmd), comments=True)
    if argv and argv[0].endswith("/python"):
        argv[0] = "python"
    if argv[:1] == ["cai-gen"]:  # the console script: `cai-gen review ...` is `python -m cai_gen.review ...`
        tool = argv[1:2] if argv[1:2] and argv[1] in (*MODULES, "synth", "report") else []
        argv = ["python", "-m", ".".join(["cai_gen", *tool]), *argv[1 + len(tool):]]
    try:
        if argv[:2] == ["trl", "dpo"]:
            from trl.scripts.dpo import make_parser

            # TRL's own flags, parsed without building its configs (DPOConfig wants a GPU for bf16 by default)
            _, rest = argparse.ArgumentParser.parse_known_args(make_parser(), argv[2:])
            return f"trl dpo: unknown {rest}" if rest else None
        if argv[:1] != ["python"] or len(argv) < 2:
            return None
        if argv[1].startswith("bench/"):
            script = ROOT / argv[1]
            if not script.is_file():
                return f"no such script {argv[1]}"
            _parse_only(monkeypatch)
            monkeypatch.setattr(sys, "argv", [str(script), *argv[2:]])
            runpy.run_path(str(script), run_name="__main__")
            return "ran without parsing arguments"
        if argv[1] != "-m" or not argv[2].startswith("cai_gen"):
            return None
        mod, args = argv[2], argv[3:]
        if mod in ("cai_gen", "cai_gen.synth"):
            _compose(args, synth=mod == "cai_gen.synth")
            return None
        if mod == "cai_gen.report":
            return None if len(args) == 1 else f"cai_gen.report takes one RUN_DIR, got {args}"
        name = mod.removeprefix("cai_gen.")
        if name not in MODULES:
            return f"no such entry point {mod}"
        if name == "evaluate":  # its own checks after argparse (loss types, ranges) too
            from cai_gen.evaluate import parse

            parse(args)
            return None
        main = importlib.import_module(f"cai_gen.{name}" + (".__main__" if name == "review" else "")).main
        _parse_only(monkeypatch)
        main(args)
        return "ran without parsing arguments"
    except _Parsed:
        return None
    except SystemExit as e:
        return None if e.code in (0, None) else f"exit {e.code}"
    except Exception as e:  # noqa: BLE001  (Hydra's and pydantic's errors: the message is the finding)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """DIR in the docs: a folder of the user's own, laid out as the docs say."""
    d = tmp_path_factory.mktemp("mine")
    for sub in ("constitutions", "prompts", "model"):
        (d / sub).mkdir()
    (d / "constitutions" / "my_domain.yaml").write_text(
        "include: _base.yaml\nname: my_domain\nprinciples:\n  - {id: p, critique: Find it., revision: Fix it.}\n")
    (d / "prompts" / "my_domain.yaml").write_text("name: my_domain\nprompts:\n  - {id: a, prompt: Hello?}\n")
    (d / "model" / "mine.yaml").write_text("name: mine\nsource: hub\npath: org/mine\nmax_model_len: 1024\n")
    return d


COMMANDS = quoted_commands()


def test_the_docs_quote_commands_of_every_kind():
    kinds = {c.split()[2] if c.startswith(("python -m", ".venv/bin/python -m")) else c.split()[1].split("/")[0]
             for _, c in COMMANDS if c.startswith(("python ", ".venv/bin/python "))}
    assert {"cai_gen", "cai_gen.synth", "cai_gen.review", "cai_gen.evaluate", "cai_gen.merge", "bench"} <= kinds


@pytest.mark.parametrize("where,cmd", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_quoted_command_parses(where, cmd, user_dir):
    assert check_command(cmd, user_dir) is None, f"{where}: {cmd}"


@pytest.mark.parametrize("cmd", [
    "python -m cai_gen samplez=4",                             # a key
    "python -m cai_gen judge=slef",                            # a group's option
    "python -m cai_gen gate.threshold=high",                   # a value
    "python -m cai_gen -m model=smollm2_135m,llama31_8b seedz=1",
    "python -m cai_gen.synth constitution=harmless n=200",     # synth's required out=
    "python -m cai_gen.review serve RUN --unblnd",             # a flag
    "python -m cai_gen.review sever RUN",                      # a subcommand
    "python -m cai_gen.evaluate RUN --loss-type sigmoid,sfft",
    "python -m cai_gen.merge RUN_A RUN_B",                     # a required flag left out
    "python -m cai_gen.benchmark score A.jsonl --benchmark ifevl",
    "python -m cai_gen.evalute RUN",                           # a module
    ".venv/bin/python bench/knobs.py --onlyy revise_n",
    ".venv/bin/python bench/throughput.py --quik",
    "cai-gen review serve RUN --unblnd",
    "python bench/nosuch.py",
])
def test_a_typo_in_a_quoted_command_fails(cmd, user_dir):
    assert check_command(cmd, user_dir) is not None


def test_console_script_lines_are_checked_as_their_modules(user_dir):
    assert check_command("cai-gen samples=4 gate.threshold=0.7", user_dir) is None
    assert check_command("cai-gen review serve RUN --unblind", user_dir) is None
    assert check_command("cai-gen samplez=4", user_dir) is not None
