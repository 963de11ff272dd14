"""The include path: users' own constitutions/ and prompts/ folders, searched before the built-ins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai_gen import constitution, paths, prompts
from cai_gen.errors import UserError

from .conftest import ROOT, make_cfg

PRINCIPLE = "principles:\n  - {id: p1, critique: Find the flaw., revision: Fix the flaw.}\n"


def folder(root: Path, constitutions: dict[str, str], prompt_sets: dict[str, str] | None = None) -> Path:
    """An include folder laid out like the repo: root/constitutions/<name>.yaml, root/prompts/<name>.yaml."""
    for sub, files in (("constitutions", constitutions), ("prompts", prompt_sets or {})):
        for name, text in files.items():
            (root / sub).mkdir(parents=True, exist_ok=True)
            (root / sub / f"{name}.yaml").write_text(text)
    return root


def test_include_path_adds_names_and_wins_a_clash(tmp_path: Path):
    mine = folder(tmp_path / "mine",
                  {"legal": f"name: legal\n{PRINCIPLE}", "harmless": f"name: my_harmless\n{PRINCIPLE}"},
                  {"legal": "prompts:\n  - {id: l1, prompt: hello}\n"})
    assert {"legal", "harmless", "customer_service"} <= set(constitution.available([str(mine)]))
    assert "legal" not in constitution.available()
    assert constitution.load("harmless", include=[str(mine)]).name == "my_harmless"
    assert constitution.load("harmless").name == "harmless"  # the built-in, when not on the path
    assert [r.id for r in prompts.load("legal", None, None, include=[str(mine)])] == ["l1"]
    cfg = make_cfg(f"include_path=[{mine}]", "constitution=legal", "prompts=legal")
    assert (cfg.include_path, cfg.constitution.name, cfg.prompts.name) == ([str(mine)], "legal", "legal")


def test_include_path_entries_come_before_the_env_and_in_order(tmp_path: Path, monkeypatch):
    a = folder(tmp_path / "a", {"x": f"name: from_a\n{PRINCIPLE}"})
    b = folder(tmp_path / "b", {"x": f"name: from_b\n{PRINCIPLE}"})
    e = folder(tmp_path / "e", {"x": f"name: from_env\n{PRINCIPLE}", "only_env": f"name: only_env\n{PRINCIPLE}"})
    monkeypatch.setenv(paths.ENV, str(e))
    assert constitution.load("x").name == "from_env"
    assert constitution.load("x", include=[str(b), str(a)]).name == "from_b"
    assert constitution.load("only_env", include=[str(a)]).name == "only_env"


def test_include_falls_back_to_the_builtin_base_and_a_neighbour_wins(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text(f"include: _base.yaml\nname: c\n{PRINCIPLE}")
    ids = [p.id for p in constitution.load(path=str(f)).principles]
    assert "harmful_content" in ids and ids[-1] == "p1"  # the built-in constitutions/_base.yaml, then local
    (tmp_path / "_base.yaml").write_text("name: near\nprinciples:\n  - {id: near, critique: q, revision: r}\n")
    assert [p.id for p in constitution.load(path=str(f)).principles] == ["near", "p1"]
    f.write_text(f"include: _nowhere.yaml\nname: c\n{PRINCIPLE}")
    with pytest.raises(UserError, match=r"_nowhere\.yaml: file not found"):
        constitution.load(path=str(f))


def test_installed_package_reads_its_own_copies(tmp_path: Path):
    checkout = tmp_path / "repo"
    (checkout / "conf").mkdir(parents=True)
    (checkout / "conf" / "config.yaml").write_text("{}\n")
    (checkout / "pyproject.toml").write_text("")
    assert paths.data_root(checkout / "cai_gen") == checkout
    site = tmp_path / "site-packages"
    assert paths.data_root(site / "cai_gen") == site / "cai_gen" / "_data"
    assert paths.ROOT == ROOT  # these tests run from the checkout


@pytest.mark.parametrize("arg,env,msg", [
    ("include_path=[{t}/nope]", None, "include_path: {t}/nope is not a directory"),
    ("include_path={t}", None, "include_path: {t} has no constitutions/ or prompts/ folder"),
    ("include_path=[{t}", None, "include_path=[{t}: no viable alternative"),
    ("limit=1", "{t}/gone", "CAI_GEN_INCLUDE_PATH: {t}/gone is not a directory"),
])
def test_bad_include_dir_is_one_line_exit_2(tmp_path: Path, arg, env, msg):
    t = tmp_path
    e = {k: v for k, v in os.environ.items() if k != paths.ENV} | ({paths.ENV: env.format(t=t)} if env else {})
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=fake", arg.format(t=t), f"hydra.run.dir={t}/out"],
                       cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"cai_gen: error: {msg.format(t=t)}"), r.stderr
