"""Installed, not only checked out: a built wheel carries every package and the demo's config and
search space, and `undial unlearn --demo` runs from it outside the checkout."""

import json
import os
import shutil
import site
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what the build reads (pyproject.toml's packages, package-dir and readme)
SOURCES = ("pyproject.toml", "README.md", "orchestrator", "trainables", "configs", "search_spaces")
SHIPPED = {"undial_assets/configs/demo.yaml": "configs/demo.yaml",
           "undial_assets/search_spaces/demo.yaml": "search_spaces/demo.yaml"}
PIP_ENV = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return out


def _copy_sources(dest: Path) -> Path:
    dest.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built offline (installed setuptools, no isolation) from a copy of the sources,
    so the checkout gets no build/ or egg-info of it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp / "dist"), str(src)], env=PIP_ENV)
    (whl,) = (tmp / "dist").glob("*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel) -> Path:
    """The wheel installed into a bare folder (pip --target)."""
    target = wheel.parent.parent / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], env=PIP_ENV)
    return target


def test_wheel_holds_every_module_and_the_demo_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for pkg in ("orchestrator", "trainables")
               for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert "trainables/tiny.py" in modules and "orchestrator/cli.py" in modules
    assert not modules - names, "missing from the wheel (pyproject.toml's packages list)"
    with zipfile.ZipFile(wheel) as zf:
        for member, source in SHIPPED.items():
            assert zf.read(member) == (ROOT / source).read_bytes(), member
    assert not [n for n in names if n.startswith(("tests/", "bench/", "configs/", "search_spaces/"))]


# `undial sweep --demo` up to the sweep itself: orchestrator.sweep (Ray) is a stand-in that
# records the space the command loaded
SWEEP_PROBE = """
import json, sys, types
import orchestrator, trainables
from orchestrator.unlearn import DEMO_CONFIG, DEMO_SPACE

seen = {}

def run_sweep(space, output, **kw):
    seen.update(name=space.name, base=space.base, num_samples=space.budget.num_samples, output=str(output))
    return {"wall_seconds": 0.0, "counts": {"ok": 1, "infeasible": 0}}

sys.modules["orchestrator.sweep"] = types.SimpleNamespace(run_sweep=run_sweep)
from orchestrator.cli import main

rc = main(["sweep", "--demo", "budget.num_samples=3", "train.max_steps=7", "--output", "sweep-out"])
files = [orchestrator.__file__, trainables.__file__, str(DEMO_CONFIG), str(DEMO_SPACE)]
print(json.dumps({"rc": rc, "files": files, **seen}))
"""


def _check_demo_sweep(got: dict) -> None:
    assert got["rc"] == 0 and got["name"] == "demo-sweep" and got["output"] == "sweep-out"
    assert got["num_samples"] == 3 and got["base"]["train"]["max_steps"] == 7
    # the space's base_config (../configs/demo.yaml) was found: the demo recipe is in the base
    assert got["base"]["method"]["subset"]["policy"] == "reference" and got["base"]["model"]["name_or_path"] == "demo:model"


def test_installed_demo_runs_outside_the_checkout(installed, tiny_demo, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    # only the installed copy importable; the demo is the session's tiny build (UNDIAL_DEMO_SIZE)
    env.update(PYTHONPATH=str(installed), UNDIAL_CACHE=str(tiny_demo.parent), UNDIAL_DEMO_SIZE="tiny",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    got = json.loads(_run([sys.executable, "-c", SWEEP_PROBE], cwd=cwd, env=env).stdout.strip().splitlines()[-1])
    for path in got["files"]:
        assert Path(path).resolve().is_relative_to(installed.resolve()), path
    _check_demo_sweep(got)

    # the demo's recipe, cut short: 2 steps, no unseen set, MAUVE and MIA off, EL3 at one prefix
    out = tmp_path / "out"
    _run([sys.executable, "-m", "orchestrator", "unlearn", "--demo", "--output", str(out), "train.max_steps=2",
          "train.warmup_steps=0", "train.eval_every=100", "train.batch_size=8", "data.unseen=null",
          "eval.mauve.enabled=false", "eval.mia=false", "eval.el_n=[3]", "eval.prefix_stride=32"],
         cwd=cwd, env=env, timeout=600)
    report = json.loads((out / "metrics.json").read_text())
    assert report["before"]["forget"]["ma"] > 0.5  # the tiny demo's model, which memorised the forget set
    assert report["after"]["forget"]["ma"] < report["before"]["forget"]["ma"]
    assert report["training"]["steps"] == 2
    config = (out / "config.yaml").read_text()
    assert str(tiny_demo / "model") in config and "demo:" not in config


def test_sweep_demo_flag_in_the_checkout(monkeypatch, capsys):
    from orchestrator.cli import main
    from orchestrator.unlearn import DEMO_CONFIG, DEMO_SPACE

    # from a checkout: the very files README users run and edit
    assert DEMO_SPACE.read_bytes() == (ROOT / "search_spaces" / "demo.yaml").read_bytes()
    assert DEMO_CONFIG.read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()
    seen = {}

    def run_sweep(space, output, **kw):
        seen.update(name=space.name, base=space.base, num_samples=space.budget.num_samples, output=str(output))
        return {"wall_seconds": 0.0, "counts": {"ok": 1, "infeasible": 0}}

    monkeypatch.setitem(sys.modules, "orchestrator.sweep", types.SimpleNamespace(run_sweep=run_sweep))
    rc = main(["sweep", "--demo", "budget.num_samples=3", "train.max_steps=7", "--output", "sweep-out"])
    _check_demo_sweep({"rc": rc, **seen})
    capsys.readouterr()
    assert main(["sweep", "--demo", "search_spaces/demo.yaml"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: give either SPACE.yaml or --demo, not both"]


def test_editable_install_finds_the_checkout_files(tmp_path):
    """`pip install -e .` (README, CI): its namespace-package path holds a placeholder that
    importlib.resources refuses; the demo files are then the checkout's."""
    src = _copy_sources(tmp_path / "src")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    # this interpreter's packages (pip, setuptools, yaml ...) on the venv's path, their .pth files
    # unread: the checkout's own editable finder stays out
    venv_site = _run([python, "-c", "import site; print(site.getsitepackages()[0])"]).stdout.strip()
    (Path(venv_site) / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(src)], env=PIP_ENV)
    probe = ("import json, orchestrator\n"
             "from orchestrator.unlearn import DEMO_CONFIG, DEMO_SPACE\n"
             "print(json.dumps([orchestrator.__file__, str(DEMO_CONFIG), str(DEMO_SPACE)]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    module, config, space = json.loads(_run([python, "-c", probe], cwd=tmp_path, env=env).stdout.splitlines()[-1])
    assert Path(module) == src / "orchestrator" / "__init__.py"
    assert (Path(config), Path(space)) == (src / "configs" / "demo.yaml", src / "search_spaces" / "demo.yaml")
