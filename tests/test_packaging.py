"""The wheel works like the checkout: it holds every file of the package (assets, data with
SOURCES.md, configs, modules) and LICENSE, and installed on its own (no checkout on the path)
it runs a shipped paper config by name."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "sert"

pytest.importorskip("setuptools", minversion="77")  # the build backend pyproject.toml names


def package_files() -> set[str]:
    """Every file of the package in the source tree, named as in a wheel (``sert/...``)."""
    return {"sert/" + p.relative_to(PKG).as_posix() for p in PKG.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def build_wheel(tmp: Path, edit_pyproject=None) -> Path:
    """Build the wheel offline from a copy of what a build reads (so the checkout gets no build/)."""
    src = tmp / "src-copy"
    shutil.copytree(PKG, src / "src" / "sert", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    if edit_pyproject:
        (src / "pyproject.toml").write_text(edit_pyproject((src / "pyproject.toml").read_text()))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = (tmp / "dist").glob("sert-*.whl")
    return whl


def wheel_names(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_holds_every_package_file_and_the_licences(wheel):
    names = wheel_names(wheel)
    files = package_files()
    assert {"sert/assets/smollm2-135m/tokenizer.json", "sert/data/SOURCES.md",
            "sert/configs/paper/strategyqa_gpt2.yaml", "sert/configs/demo.yaml", "sert/cli.py",
            "sert/commands/__init__.py", "sert/commands/mine.py", "sert/sampling.py", "sert/tools/__init__.py",
            "sert/tools/bench/__init__.py", "sert/tools/bench/driver.py"} <= files
    assert not files - names, f"missing from the wheel: {sorted(files - names)}"
    lic = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert len(lic) == 1
    with zipfile.ZipFile(wheel) as z:
        assert "MIT License" in z.read(lic[0]).decode()
        assert "sert = sert.cli:main" in z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta


def test_the_check_sees_a_file_the_package_data_misses(tmp_path):
    """Without the assets glob the wheel lacks the embedded tokenizer: the comparison above must say so."""
    whl = build_wheel(tmp_path, lambda s: s.replace('"assets/**/*", ', ""))
    missing = package_files() - wheel_names(whl)
    assert missing == {f for f in package_files() if f.startswith("sert/assets/")} and missing


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed alone into a fresh directory; commands run from a directory outside the
    checkout with only that directory on the path (the editable checkout install comes later)."""
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}

    def run(*args, timeout=600):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=timeout)
    return target, cwd, run


def test_installed_wheel_is_what_runs_and_reads_its_assets(installed):
    target, _, run = installed
    r = run("-c", "import sert, sert.models as m; from transformers import AutoConfig, AutoTokenizer; "
                  "print(sert.__file__); print(len(AutoTokenizer.from_pretrained(m.ASSETS))); "
                  "print(AutoConfig.from_pretrained(m.ASSETS).model_type)")
    assert r.returncode == 0, r.stderr
    where, vocab, kind = r.stdout.split()
    assert Path(where).is_relative_to(target) and int(vocab) > 40000 and kind == "llama"
    r = run("-m", "sert", "configs")
    assert r.returncode == 0 and "paper/strategyqa_gpt2 " in r.stdout and "demo " in r.stdout, r.stderr


def test_installed_wheel_runs_a_shipped_paper_config_by_name(installed, tiny_dir):
    """``sert run paper/strategyqa_gpt2`` from the wheel: the paper's settings, the Base arm only,
    on a tiny model and two test questions."""
    _, cwd, run = installed
    r = run("-m", "sert", "run", "paper/strategyqa_gpt2", "--set", f"model={tiny_dir}", "--set", "arms=[base]",
            "--set", "eval.limit=2", "--set", "eval.max_new_tokens=4", "--set", "device=cpu", "--out", "run",
            "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = yaml.safe_load((cwd / "run" / "config.yaml").read_text())
    assert cfg["task"] == "strategyqa" and cfg["train"]["epochs"] == 20 and cfg["mine"]["top_k_branches"] == 5
    assert json.loads((cwd / "run" / "eval" / "base" / "metrics.json").read_text())["n"] == 2
