"""A non-editable install carries the config tree: `pip install .` works from any directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_trainkit

CONFIG_FILES = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (without its dependencies) into a plain folder."""
    folder = tmp_path_factory.mktemp("install")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(folder / "wheel"), str(REPO)], capture_output=True, text=True)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel offline here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    wheel = next((folder / "wheel").glob("trainkit-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(folder / "site"), str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return folder / "site"


def test_the_wheel_holds_every_config_file(installed):
    shipped = sorted(p.relative_to(installed / "trainkit" / "configs").as_posix()
                     for p in (installed / "trainkit" / "configs").rglob("*.yaml"))
    assert shipped == CONFIG_FILES



def test_the_wheel_holds_every_module_of_every_layer(installed):
    """pyproject.toml lists the packages: a new subpackage left out of it would be missing from the wheel."""
    source = sorted(p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "trainkit").rglob("*.py"))
    shipped = sorted(p.relative_to(installed).as_posix() for p in (installed / "trainkit").rglob("*.py")
                     if "configs" not in p.relative_to(installed).parts)
    assert shipped == source


def test_the_installed_package_composes_from_another_directory(installed, tmp_path):
    # PYTHONPATH puts the installed copy ahead of the editable one, away from the source tree.
    env = {"PYTHONPATH": str(installed)}
    where = subprocess.run([sys.executable, "-c", "import trainkit; print(trainkit.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr
    result = run_trainkit("train", "optimizer=adamw", "--cfg", "job", "--resolve", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "_target_: torch.optim.AdamW" in result.stdout
    result = run_trainkit("train", "model=mlp", "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
