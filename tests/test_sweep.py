"""Sweeps: `trainkit train -m` runs every combination and ranks them in summary.csv."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import run_trainkit


def test_multirun_ranks_jobs_by_monitored_metric(tmp_path):
    result = run_trainkit("train", "-m", "optimizer=sgd,adam", "schedule=constant,cosine", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    best = {}
    for job in jobs:
        record = json.loads((job / "metrics.json").read_text())
        assert record["status"] == "completed"
        assert (job / "checkpoints" / "best.pt").is_file()
        best[" ".join(record["overrides"])] = record["best"]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 4
    values = [float(r["best val/acc"]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert float(row["best val/acc"]) == best[row["overrides"]]
    assert "ranked by val/acc" in result.stdout


def test_failed_job_does_not_stop_the_sweep(tmp_path):
    # Without normalization an enormous learning rate makes the loss NaN: that job diverges, the other completes.
    result = run_trainkit("train", "-m", "optimizer=sgd", "norm=none", "optimizer.lr=0.05,1e12", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 1
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    rows = {r["job"]: r for r in csv.DictReader(open(sweep / "summary.csv"))}
    assert rows["0"]["status"] == "completed" and rows["0"]["rank"] == "1"
    assert rows["1"]["status"] == "diverged" and rows["1"]["rank"] == "2"
    assert "the training loss became nan at step 2 (epoch 1)" in rows["1"]["message"]
    assert not (sweep / "1" / "checkpoints" / "best.pt").exists()
    assert "did not complete" in result.stderr


def test_optuna_search_maximises_the_returned_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper not installed")
    result = run_trainkit("train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    best = max(float(r["best val/acc"]) for r in rows)
    # Optuna was told the value each run returned, and reports the largest one as the best.
    assert f"Best value: {best}" in result.stdout + result.stderr
