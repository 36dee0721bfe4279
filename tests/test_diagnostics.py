"""Issue 11: start-of-run checks, monitors, the end-of-run diagnosis, each shown on a real run of
the installed CLI on digits (deliberately broken configs), read back from metrics.json, train.log
and TensorBoard's event files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import read_scalars, run_trainkit

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
LN10 = math.log(10)


def train(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, str]:
    """A real `trainkit train` into tmp_path/name: (its metrics.json, its stdout)."""
    result = run_trainkit("train", *overrides, "trainer.progress=false", f"hydra.run.dir={tmp_path / name}",
                          cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode in (0, 3), result.stdout + result.stderr  # 3: diverged, still diagnosed
    return json.loads((tmp_path / name / "metrics.json").read_text()), result.stdout + result.stderr


def monitor_verdicts(record: dict) -> dict[str, dict]:
    return {v["name"]: v for v in record.get("diagnostics", {}).get("monitor", [])}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """The defaults (cnn, adam, digits), 3 epochs; with the (off by default) histograms."""
    tmp = tmp_path_factory.mktemp("healthy")
    record, out = train(tmp, "run", "trainer.epochs=3", "diagnostics.histograms=true")
    return tmp / "run", record, out


def test_defaults_pass_the_start_checks_and_are_healthy(healthy):
    run_dir, record, out = healthy
    d = record["diagnostics"]
    assert d["initial_loss"]["ok"] and abs(d["initial_loss"]["loss"] - LN10) < 1.0
    assert d["initial_loss"]["ln_c"] == pytest.approx(LN10, abs=1e-4)
    assert d["inputs"]["ok"] and d["inputs"]["non_finite"] == 0 and abs(d["inputs"]["mean"][0]) < 0.1
    assert d["labels"]["ok"] and d["labels"]["imbalance"] < 1.1 and sum(d["labels"]["counts"]) == 1293
    assert "sanity: initial loss: ok:" in out and "sanity: labels: ok:" in out
    assert "vanishing" not in monitor_verdicts(record)  # the default CNN's gradients flow
    assert record["diagnosis"]["verdict"] == "healthy"
    # printed under the results table
    assert out.index("diagnosis: healthy") > out.index("test/acc")
    assert "diagnosis: healthy" in (run_dir / "train.log").read_text()


def test_monitors_log_per_layer_figures_and_the_diagnosis_to_tensorboard(healthy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, _ = healthy
    scalars = read_scalars(run_dir / "tensorboard")
    grad = sorted(t for t in scalars if t.startswith("diagnostics/grad_norm/"))
    assert grad[0] == "diagnostics/grad_norm/classifier" and len(grad) == 5  # 4 convs + the classifier
    for tag in ("diagnostics/weight_norm/features.0.0", "diagnostics/update_ratio/features.0.0", "diagnostics/dead/features.0.2"):
        assert tag in scalars, sorted(scalars)
    ratios = [v for _, v in scalars["diagnostics/update_ratio/features.3.0"]]
    assert 1e-5 < ratios[1] < 1e-1  # adam at 1e-3 on a healthy net: within two decades of the 1e-3 rule of thumb
    steps = [s for s, _ in scalars["diagnostics/grad_norm/classifier"]]
    assert steps[:3] == [1, 10, 20]  # every trainer.log_every_n_steps, and the first step
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "histograms": 0})
    acc.Reload()
    text = acc.Tensors("diagnostics/diagnosis/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("diagnosis: healthy")
    assert len(acc.Histograms("diagnostics/weights/classifier")) == 3  # one per epoch
    assert "diagnostics/gradients/features.0.0" in acc.Tags()["histograms"]


def test_large_gaussian_init_trips_the_initial_loss_check(tmp_path):
    record, out = train(tmp_path, "g1", "model=mlp", "init=gaussian", "init.std=1", "trainer.epochs=1",
                        "diagnostics.monitor=false")
    check = record["diagnostics"]["initial_loss"]
    assert not check["ok"] and check["loss"] - LN10 > 1.0, check
    assert "sanity: initial loss: WARNING" in out and "init.std" in out and "dataset.preprocess=standardize" in out


def test_the_start_checks_change_nothing_the_run_uses(tmp_path):
    """Bit-identical weights and curves with every diagnostic on and with all of them off, on the
    workers loader with augmentation (whose pipeline the checks' own image draw reseeds)."""
    common = ("model=mlp", "trainer.epochs=2", "augmentation=flip", "dataset.loader=workers", "dataset.workers=0",
              "regularization=[dropout]")
    on, _ = train(tmp_path, "on", *common)
    off, _ = train(tmp_path, "off", *common, "diagnostics.sanity=false", "diagnostics.monitor=false",
                   "diagnostics.diagnosis=false")
    assert "diagnostics" in on and "diagnostics" not in off and "diagnosis" not in off
    assert on["final"] == off["final"] and on["test"] == off["test"]
    a = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deep_sigmoid_mlp_with_small_gaussian_init_has_vanishing_gradients(tmp_path):
    # norm=none: batch norm (the default, and the remedy) keeps these gradients flowing
    record, out = train(tmp_path, "van", "model=mlp", "activation=sigmoid", "init=gaussian", "init.std=0.01",
                        "model.hidden=[256,256,256,256,256]", "norm=none", "trainer.epochs=1")
    verdict = monitor_verdicts(record)["vanishing"]
    assert verdict["step"] == 1 and "norm=batch" in verdict["remedies"]
    ratio = float(verdict["figures"].split(" is ")[1].split(" x ")[0])
    assert ratio < 1e-4  # measured 1.7e-7: the first layer's gradient norm against the classifier's
    assert "diagnostics: vanishing at step 1" in out
    assert record["diagnosis"]["verdict"] == "underfitting" and "vanishing gradients" in out


def test_sgd_at_lr_10_is_too_high_with_dead_units_and_a_huge_update_ratio(tmp_path):
    record, out = train(tmp_path, "hi", "optimizer=sgd", "optimizer.lr=10", "trainer.epochs=1")
    assert record["diagnosis"]["verdict"] == "lr_too_high", record["diagnosis"]
    remedies = record["diagnosis"]["findings"][0]["remedies"]
    assert "optimizer.lr=1" in remedies and "'regularization=[grad_clip]'" in remedies
    verdicts = monitor_verdicts(record)
    assert {"update_ratio_high", "dead_units"} <= set(verdicts), verdicts
    assert float(verdicts["update_ratio_high"]["figures"].split(" is ")[1].split(" ")[0]) > 0.1
    assert "diagnosis: LR too high" in out


def test_a_4_unit_mlp_underfits(tmp_path):
    record, out = train(tmp_path, "under", "model=mlp", "model.hidden=[4]", "trainer.epochs=5")
    assert record["diagnosis"]["verdict"] == "underfitting", record["diagnosis"]
    assert record["final"]["train/acc"] < 0.8 and abs(record["final"]["train/acc"] - record["final"]["val/acc"]) < 0.05
    assert "diagnosis: underfitting" in out and "bigger model" in out


def test_long_unregularized_training_on_a_small_subset_overfits(tmp_path):
    # val_fraction 0.95: about 65 training images, the rest held out
    record, out = train(tmp_path, "over", "model=mlp", "dataset.val_fraction=0.95", "trainer.epochs=30",
                        "schedule=constant")
    assert record["diagnosis"]["verdict"] == "overfitting", record["diagnosis"]
    assert record["final"]["train/acc"] - record["final"]["val/acc"] > 0.05
    assert "diagnosis: overfitting" in out and "regularization=[l2,dropout]" in out


def test_sgd_at_a_tiny_lr_is_too_low(tmp_path):
    record, out = train(tmp_path, "low", "model=mlp", "optimizer=sgd", "optimizer.lr=1e-4", "schedule=constant",
                        "trainer.epochs=3")
    assert record["diagnosis"]["verdict"] == "lr_too_low", record["diagnosis"]
    assert "optimizer.lr=0.001" in record["diagnosis"]["findings"][0]["remedies"]


def test_shuffled_labels_are_memorised_but_val_is_at_chance(tmp_path):
    memorised, out = train(tmp_path, "memo", "dataset.shuffle_labels=true", "debug=overfit")
    assert memorised["overfit_check"]["passed"], memorised["overfit_check"]
    record, _ = train(tmp_path, "chance", "dataset.shuffle_labels=true", "trainer.epochs=3")
    assert record["final"]["val/acc"] < 0.2 and record["test"]["test/acc"] < 0.2  # chance is 0.1


def test_a_resumed_run_keeps_its_start_checks_and_is_diagnosed_on_all_epochs(tmp_path):
    first, _ = train(tmp_path, "r", "model=mlp", "trainer.epochs=2", "schedule=constant")
    result = run_trainkit("train", f"resume={tmp_path / 'r'}", "trainer.epochs=4", cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["diagnostics"]["initial_loss"] == first["diagnostics"]["initial_loss"]
    assert "sanity:" not in result.stdout  # not checked again
    assert record["diagnosis"]["verdict"] and record["epochs_run"] == 4
