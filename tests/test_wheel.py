"""diffexp as an installed package: the configs and sweeps are found through the package in a clone (conf/ and
sweeps/ side by side, no link between them) and ship inside a built wheel, whose commands work from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from diffexp.config import CONF_DIR, SWEEPS_DIR, groups, options
from helpers import REPO, TINY


def test_every_group_and_sweep_is_found_through_the_package():
    """Hydra lists the same options as `--help` for every group, `sweeps` included, and composes a shipped sweep."""
    assert not Path(CONF_DIR, "sweeps").is_symlink()
    assert set(groups()) == {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()} | {"sweeps"}
    assert "size_lr" in options("sweeps") and Path(SWEEPS_DIR, "size_lr.yaml").is_file()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for group in groups():
            found = [o for o in loader.get_group_options(group) if not o.startswith("_")]
            assert found == options(group), group
        cfg = compose(config_name="train", overrides=["sweeps=size_lr"], return_hydra_config=True)
    assert cfg.sweep_name == "size_lr" and set(cfg.hydra.sweeper.params) == {"model", "optim.optimizer.lr"}


def test_pyproject_ships_every_config_group():
    """Setuptools is given the packages as a list (it cannot find mapped folders), so a new group must be listed."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"diffexp.conf": "conf", "diffexp.conf.sweeps": "sweeps"}
    groups_ = {f"diffexp.conf.{p.name}" for p in (REPO / "conf").iterdir() if p.is_dir()}
    packages = {f"diffexp.{p.name}" for p in (REPO / "diffexp").iterdir() if p.is_dir() and p.name != "__pycache__"}
    plugins = {f"hydra_plugins.{p.name}" for p in (REPO / "hydra_plugins").iterdir() if (p / "__init__.py").exists()}
    expected = {"diffexp", "diffexp.conf", "diffexp.conf.sweeps", "hydra_plugins"} | groups_ | packages | plugins
    assert set(setuptools["packages"]) == expected


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (a build in the clone would leave build/ there, and its stale files could
    end up in a later wheel), built offline with the test environment's setuptools."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("diffexp", "hydra_plugins", "conf", "sweeps"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    out = subprocess.run([*pip, "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("diffexp-*.whl")
    return wheel


def new_venv(folder: Path) -> Path:
    """A virtual environment that sees the test environment's packages (a `.pth` line, so the test environment's
    own `.pth` files, such as an editable install of the clone, are not run) and holds none of diffexp."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    paths = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(own, "test-environment.pth").write_text("".join(f"{p}\n" for p in paths))
    return python


@pytest.mark.slow  # a wheel build, an install and three commands that each start Lightning: ~1 min on 2 CPU cores
def test_a_built_wheel_installs_and_trains_from_an_empty_folder(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.endswith(".yaml")}
        names = set(z.namelist())
    clone = {f"diffexp/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    clone |= {f"diffexp/conf/sweeps/{p.name}" for p in (REPO / "sweeps").glob("*.yaml")}
    assert shipped == clone
    assert {
        "hydra_plugins/diffexp_optuna_sweeper/sweeper.py",
        "hydra_plugins/diffexp_sweeps_source/__init__.py",
        "diffexp/__init__.py",
        "diffexp/report/__init__.py",
        "diffexp/assets/digits_net.safetensors",
    } <= names

    # The environment lies inside some other git repository (a project's .venv/): its commit is not diffexp's.
    project = tmp_path / "project"
    project.mkdir()
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "a project"], check=True)
    python = new_venv(project / ".venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the clone
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)]
    out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where = subprocess.run(
        [str(python), "-c", "import diffexp.config as c; print(c.__file__); print(c.CONF_DIR)"],
        env=env, capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout.split()  # fmt: skip
    for path in map(Path, where):
        assert path.is_relative_to(project / ".venv") and not path.is_relative_to(REPO), path

    empty = project / "empty"
    empty.mkdir()
    train = str(project / ".venv" / "bin" / "diffexp-train")
    out = subprocess.run(
        [train, *TINY, "logger=none", "hydra.run.dir=run"], env=env, cwd=empty, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((empty / "run" / "metrics.json").read_text())
    assert record["status"] == "finished" and record["environment"]["git_commit"] is None

    # The shipped sweeps group, from the wheel: two learning rates of the tiny model at 3 steps each.
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps")]
    sweep = [train, "-m", "sweeps=size_lr", *tiny, "logger=none", "model=tiny", "optim.optimizer.lr=1e-3,2e-3"]
    out = subprocess.run([*sweep, "budget.images=48"], env=env, cwd=empty, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted((empty / "multirun" / "size_lr").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["status"] == "finished", job
