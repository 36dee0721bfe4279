"""regularization=[ema] and [swa]: averaged weights validated beside the raw ones, best.pt keeps the
better, SWA's average and BN statistics, and a resume that stays bit-exact with both on."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch

from conftest import run_trainkit
from test_resume import start, wait_for

EMA_SWA = ("train", "trainer.epochs=4", "trainer.batch_size=32", "regularization=[ema,swa]",
           "regularization.ema.decay=0.99", "regularization.swa.start=2", "regularization.swa.anneal_epochs=1")


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("averaged")
    result = run_trainkit(*EMA_SWA, "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd / "run"


@pytest.fixture(scope="module")
def swa_run(tmp_path_factory) -> Path:
    """SWA alone, every epoch kept: epoch_NNN.pt hold the raw weights the average is made of."""
    cwd = tmp_path_factory.mktemp("swa")
    result = run_trainkit("train", "trainer.epochs=4", "trainer.batch_size=32", "regularization=[swa]",
                          "regularization.swa.start=2", "regularization.swa.anneal_epochs=1", "checkpoint.save_top_k=-1",
                          "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd / "run"


def test_the_ema_decay_is_timm_model_ema_v3s():
    from trainkit.engine.callbacks.ema import EMA

    ema = EMA(decay=0.9998, warmup=True, warmup_gamma=1.0, warmup_power=0.75)
    # timm: step = max(0, step - update_after_step - 1); 0 -> 0.0, else 1 - (1 + step / gamma) ** -power, capped.
    assert ema.decay_at(1) == 0.0
    assert ema.decay_at(2) == pytest.approx(1 - 2 ** -0.75)
    assert ema.decay_at(101) == pytest.approx(1 - 101 ** -0.75)
    assert ema.decay_at(10**9) == 0.9998
    assert EMA(decay=0.99, warmup=False).decay_at(5) == 0.99
    assert EMA(decay=0.99, warmup=False, update_after_step=10).decay_at(11) == 0.0


def test_ema_is_validated_every_epoch_and_best_pt_keeps_the_better_weights(averaged_run):
    epochs = rows(averaged_run)
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3, 4]
    assert all(r["val/acc_ema"] and r["val/loss_ema"] for r in epochs)
    # best.pt: the best of raw and EMA over the epochs (the last epoch also has the SWA weights), and it says which.
    scores = [(float(r[f"val/acc{suffix}"]), int(r["epoch"]), name) for r in epochs
              for suffix, name in (("", "raw"), ("_ema", "ema"), ("_swa", "swa")) if r.get(f"val/acc{suffix}")]
    best_value = max(s[0] for s in scores)
    first = min((epoch, ["raw", "ema", "swa"].index(name), name) for value, epoch, name in scores if value == best_value)
    record = json.loads((averaged_run / "metrics.json").read_text())
    best = load(averaged_run / "checkpoints" / "best.pt")
    assert (record["best"], record["best_epoch"], record["best_weights"]) == (best_value, first[0], first[2])
    assert best["weights"] == first[2] and best["epoch"] == first[0]
    # Loadable as the plain model: the same keys and shapes as the raw weights of last.pt.
    raw = load(averaged_run / "checkpoints" / "last.pt")["model"]
    assert {k: v.shape for k, v in best["model"].items()} == {k: v.shape for k, v in raw.items()}
    assert {"test/acc", "test/acc_ema", "test/acc_swa"} <= set(record["test"])


def test_swa_averages_the_epochs_from_start_recomputes_bn_and_drives_the_lr(swa_run):
    ckpt = swa_run / "checkpoints"
    epochs = rows(swa_run)
    assert [bool(r["val/acc_swa"]) for r in epochs] == [False, False, False, True]  # validated once, at the end
    # Equal weights for the raw weights at the end of epochs 2, 3 and 4 (epoch files of raw weights; last.pt is raw).
    snapshots = [load(ckpt / "epoch_002.pt"), load(ckpt / "epoch_003.pt"), load(ckpt / "last.pt")]
    assert [s.get("weights", "raw") for s in snapshots[:2]] == ["raw", "raw"]
    swa = load(ckpt / "swa.pt")
    assert swa["weights"] == "swa"
    for key in ("features.0.0.weight", "classifier.weight", "classifier.bias"):
        expected = sum(s["model"][key] for s in snapshots) / 3
        assert torch.allclose(swa["model"][key], expected, atol=1e-6), key
    # update_bn: BN statistics measured for the averaged weights, not copied from the last raw ones.
    assert not torch.allclose(swa["model"]["features.0.1.running_mean"], snapshots[-1]["model"]["features.0.1.running_mean"])
    # SWALR took the LR over from the cosine schedule: half of Adam's 1e-3 once annealed (cosine would be near 0).
    assert float(epochs[-1]["lr"]) == pytest.approx(5e-4)
    assert float(epochs[1]["lr"]) < 1e-3


def test_killed_and_resumed_with_ema_and_swa_is_bitwise_identical(averaged_run, tmp_path):
    proc = start(tmp_path, *EMA_SWA, "hydra.run.dir=cut")
    record = wait_for(tmp_path / "cut", lambda r: r["epochs_run"] >= 2, proc, timeout=600)  # a loaded machine is slow
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert killed["status"] == "running" and 2 <= killed["epochs_run"] < 4, record
    resumed = run_trainkit("train", "resume=cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    full, cut = load(averaged_run / "checkpoints" / "last.pt"), load(tmp_path / "cut" / "checkpoints" / "last.pt")
    for part in (lambda p: p["model"], lambda p: p["callbacks"]["ema"], lambda p: p["callbacks"]["swa"]["average"]):
        a, b = part(full), part(cut)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "cut" / "metrics.csv").read_text() == (averaged_run / "metrics.csv").read_text()
    a = json.loads((averaged_run / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert (a["test"], a["best"], a["best_epoch"], a["best_weights"]) == (b["test"], b["best"], b["best_epoch"], b["best_weights"])


def test_eval_of_a_run_whose_best_pt_holds_ema_weights_reproduces_its_recorded_test_accuracy(tmp_path):
    """best.pt of an EMA run can hold the averaged weights; `trainkit eval` (load_run) must test those."""
    trained = run_trainkit("train", "trainer.epochs=3", "regularization=[ema]", "regularization.ema.decay=0.9",
                           "regularization.ema.warmup=false", "optimizer.lr=0.03", "hydra.run.dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["best_weights"] == "ema" and load(tmp_path / "run" / "checkpoints" / "best.pt")["weights"] == "ema"

    def evaluated(target: str) -> float:
        result = run_trainkit("eval", target, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads((tmp_path / "run" / "eval" / "test.json").read_text())["plain"]["acc"]

    assert evaluated("run") == record["test"]["test/acc"]
    # The raw weights of the same epoch score otherwise: the EMA weights are what was tested and loaded.
    assert record["best_epoch"] == 3 and evaluated("run/checkpoints/last.pt") != record["test"]["test/acc"]
