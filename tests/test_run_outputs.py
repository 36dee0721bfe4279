"""What a run keeps: metrics.csv, the k best checkpoints, and the model summary in the log and metrics.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import read_scalars, run_trainkit


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("outputs")
    result = run_trainkit("train", "trainer.epochs=4", "trainer.batch_size=32", "checkpoint.save_top_k=2",
                          "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd / "run"


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_has_a_row_per_epoch_with_every_logged_metric_and_the_lr(run):
    table = rows(run)
    assert list(table[0]) == ["epoch", "step", "lr", "train/loss", "train/acc", "val/loss", "val/acc"]
    assert [int(r["epoch"]) for r in table] == [1, 2, 3, 4]
    record = json.loads((run / "metrics.json").read_text())
    assert {k: float(v) for k, v in table[-1].items() if "/" in k} == record["final"]
    # The same figures TensorBoard holds, at the same steps; the LR is the one the epoch's last step used.
    scalars = read_scalars(run / "tensorboard")
    assert [(int(r["step"]), float(r["val/acc"])) for r in table] == [(s, pytest.approx(v)) for s, v in scalars["val/acc"]]
    lr_at = dict(scalars["lr"])
    assert all(float(r["lr"]) == pytest.approx(lr_at[int(r["step"])]) for r in table if int(r["step"]) in lr_at)
    assert float(table[0]["lr"]) > float(table[-1]["lr"])  # cosine


def test_save_top_k_keeps_the_k_best_epochs_and_best_pt_stays_the_best(run):
    table = rows(run)
    ranked = sorted(table, key=lambda r: (-float(r["val/acc"]), int(r["epoch"])))
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))
    assert kept == sorted(f"epoch_{int(r['epoch']):03d}.pt" for r in ranked[:2])
    for name in kept:
        payload = torch.load(run / "checkpoints" / name, weights_only=True)
        assert name == f"epoch_{payload['epoch']:03d}.pt"
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == int(ranked[0]["epoch"])
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == best["epoch"]


def test_every_run_starts_with_a_model_summary_in_its_log_and_metrics_json(run):
    summary = json.loads((run / "metrics.json").read_text())["model"]
    weights = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    total = sum(v.numel() for k, v in weights.items() if "running" not in k and "num_batches" not in k)
    assert summary["parameters"] == summary["trainable"] == total == sum(layer["parameters"] for layer in summary["layers"])
    assert summary["input"] == [1, 8, 8] and summary["output"] == [10]
    assert [(layer["name"], layer["output"]) for layer in summary["layers"]] == [
        ("features.0.0", [32, 8, 8]), ("features.1.0", [32, 8, 8]), ("features.3.0", [64, 4, 4]),
        ("features.4.0", [64, 4, 4]), ("classifier", [10])]
    log = (run / "train.log").read_text()
    assert "model: cnn, input 1x8x8 -> output 10" in log
    assert f"{total:,} parameters, {total:,} trainable" in log
    assert log.index("model: cnn") < log.index("epoch 1/4")
