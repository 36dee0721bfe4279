"""Sweeps: `trainkit train -m` runs every combination and ranks them in summary.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_trainkit


def test_multirun_ranks_jobs_by_monitored_metric(tmp_path):
    result = run_trainkit("train", "-m", "optimizer=sgd,adam", "schedule=constant,cosine", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    jobs = sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))
    # each job folder says what it ran: its number, then the overrides the sweep varies
    assert [p.name for p in jobs] == ["0_optimizer=sgd,schedule=constant", "1_optimizer=sgd,schedule=cosine",
                                      "2_optimizer=adam,schedule=constant", "3_optimizer=adam,schedule=cosine"]
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
    assert rows["0_optimizer.lr=0.05"]["status"] == "completed" and rows["0_optimizer.lr=0.05"]["rank"] == "1"
    assert rows["1_optimizer.lr=1e+12"]["status"] == "diverged" and rows["1_optimizer.lr=1e+12"]["rank"] == "2"
    assert "the training loss became nan at step 2 (epoch 1)" in rows["1_optimizer.lr=1e+12"]["message"]
    assert not (sweep / "1_optimizer.lr=1e+12" / "checkpoints" / "best.pt").exists()
    assert "did not complete" in result.stderr


def documented_command(path, marker: str) -> list[str]:
    """The arguments of the `trainkit train ...` line in a YAML file's comments that contains `marker`."""
    import shlex

    lines = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#") and marker in line]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0])
    assert words[:2] == ["trainkit", "train"], words
    return words[1:]


def test_hparams_tab_compares_the_runs_of_a_sweep(tmp_path):
    """TensorBoard's own HParams backend, pointed at the sweep, builds its table from all the runs."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins.hparams import backend_context

    result = run_trainkit("train", "-m", "model=mlp", "trainer.epochs=1", "logger.tensorboard.image_grid=0",
                          "regularization=[dropout],[dropout,l2]", "regularization.dropout.p=0.1,0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "regularization=[dropout,l2]" in result.stdout  # the table shows list overrides as typed
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(sweep))
    tb = type("TBContext", (), {"data_provider": provider, "multiplexer": multiplexer, "plugin_name_to_instance": {}})()
    hparams = backend_context.Context(tb)
    request = context.RequestContext()
    experiment = hparams.experiment_from_metadata(request, "", include_metrics=True,
                                                  hparams_run_to_tag_to_content=hparams.hparams_metadata(request, ""),
                                                  data_provider_hparams=None)
    infos = {h.name: h for h in experiment.hparam_infos}
    # Every swept knob is a column, with the values of all four runs, including one only two runs have.
    assert infos["regularization.dropout.p"].domain_interval.min_value == pytest.approx(0.1)
    assert infos["regularization.dropout.p"].domain_interval.max_value == pytest.approx(0.5)
    assert sorted(v.string_value for v in infos["regularization"].domain_discrete.values) == ["dropout", "dropout,l2"]
    assert "regularization.l2.weight_decay" in infos and "optimizer.lr" in infos
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"test/acc", "test/loss", "val/acc", "train/loss", "best/val/acc"} <= metrics


def test_a_seed_sweep_is_summarised_per_configuration(tmp_path):
    result = run_trainkit("train", "-m", "model=mlp", "trainer.epochs=1", "logger.tensorboard.image_grid=0",
                          "optimizer=sgd,adam", "trainer.seed=0,1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = next((tmp_path / "outputs" / "sweeps").iterdir())
    runs = list(csv.DictReader(open(sweep / "summary.csv")))
    pooled = {r["config"]: r for r in csv.DictReader(open(sweep / "summary_over_seeds.csv"))}
    assert set(pooled) == {"optimizer=sgd", "optimizer=adam"}
    for config, row in pooled.items():
        best = [float(r["best val/acc"]) for r in runs if config in r["overrides"].split()]
        assert len(best) == 2 and row["runs"] == "2" and row["completed"] == "2"
        assert float(row["mean best val/acc"]) == pytest.approx(sum(best) / 2)
        assert float(row["std best val/acc"]) == pytest.approx(abs(best[0] - best[1]) / 2 ** 0.5)
    means = [float(r["mean best val/acc"]) for r in csv.DictReader(open(sweep / "summary_over_seeds.csv"))]
    assert means == sorted(means, reverse=True)
    assert "over seeds: mean ± std" in result.stdout
