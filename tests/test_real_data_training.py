"""Slow: real training runs on the offline datasets in ../shared/data (minutes each)."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, read_scalars, require_shared, run_trainkit

pytestmark = pytest.mark.slow


def test_fashion_mnist_cnn_three_epochs(tmp_path):
    require_shared("FashionMNIST", "raw")
    result = run_trainkit("train", "experiment=fashion_mnist_cnn", f"dataset.data_dir={SHARED_DATA}",
                          "dataset.download=false", "hydra.run.dir=run", cwd=tmp_path, timeout=3000)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["epochs_run"] == 3
    # Measured 0.8885 on the 2-core CI machine (seed 42, split_seed 0); the authors' benchmark lists 0.87-0.93
    # for small CNNs. A run that falls below 0.87 has lost something real.
    assert record["test"]["test/acc"] >= 0.87
    assert len(read_scalars(tmp_path / "run" / "tensorboard")["val/acc"]) == 3
