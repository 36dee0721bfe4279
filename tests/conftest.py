"""Shared test fixtures: the offline datasets in ../shared/data and small torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRAINKIT_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def require_shared(*parts: str) -> Path:
    """The path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (see ../shared/data/README.md)")
    return path


@pytest.fixture
def one_thread():
    """For tests of tiny tensors: a second intra-op thread only adds hand-off cost (10x on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_config(*overrides: str, checked: bool = False):
    """The train config for these overrides, as Hydra composes it for the CLI (real Hydra, its
    schemas included); `checked`: also through the config check the CLI runs before a run.
    The one way tests compose: plain calls from helpers and module fixtures, or the fixture below."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="trainkit.configs", version_base=None):
        cfg = compose(config_name="train", overrides=list(overrides))
    if checked:
        from trainkit.config.check import check_config

        check_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def compose_train():
    """compose(*overrides) -> the train config, as the CLI composes it (real Hydra)."""
    return compose_config


@pytest.fixture
def shared_data() -> Path:
    return require_shared()


def trainkit_command() -> list[str]:
    """The installed `trainkit` console script beside this Python (what a user types)."""
    import sys

    script = Path(sys.executable).parent / "trainkit"
    assert script.is_file(), f"{script} is missing: install trainkit (pip install -e '.[test]') in this environment"
    return [str(script)]


def run_trainkit(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """The real `trainkit` command in a subprocess, output captured."""
    import subprocess

    full_env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("TRAINKIT_OUTPUT_DIR", None)
    return subprocess.run([*trainkit_command(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def only_run_dir(root: Path) -> Path:
    runs = sorted((root / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard log folder, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
