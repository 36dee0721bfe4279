"""Techniques driven through the real loop (`trainkit train` in a subprocess), checked against
their definitions on the curves the run logged: the unit tests elsewhere check the parts, these
check that the loop wires them up as defined."""

from __future__ import annotations

import json

import pytest

from conftest import read_scalars, run_trainkit
from trainkit import metrics as M


def train(tmp_path, *overrides: str) -> tuple[dict, dict]:
    record, scalars, _ = train_and_print(tmp_path, *overrides)
    return record, scalars


def train_and_print(tmp_path, *overrides: str) -> tuple[dict, dict, list[str]]:
    """The run's metrics.json, its TensorBoard scalars and the lines it printed."""
    result = run_trainkit("train", "model=mlp", "logger.tensorboard.image_grid=0", "trainer.log_every_n_steps=1",
                          *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    return record, read_scalars(tmp_path / "run" / "tensorboard"), result.stdout.splitlines()


def per_epoch(scalars: dict, tag: str) -> list[float]:
    return [v for _, v in scalars[tag]]


def test_lbfgs_takes_one_full_batch_step_per_epoch_at_a_constant_lr(tmp_path):
    record, scalars = train(tmp_path, "optimizer=lbfgs", "trainer.epochs=3")
    assert record["global_step"] == 3  # one optimizer step (up to max_iter L-BFGS iterations) per epoch
    assert [v for _, v in scalars[M.LR]] == [1.0, 1.0, 1.0]  # the preset's schedule=constant
    assert record["test"][M.TEST_ACC] > 0.9


def test_lookahead_trains_through_the_loop(tmp_path):
    record, _ = train(tmp_path, "optimizer=lookahead", "optimizer/base=sgd", "optimizer.base.lr=0.1", "optimizer.k=5",
                      "trainer.epochs=3")
    assert record["status"] == "completed" and record["test"][M.TEST_ACC] > 0.85


def expected_stop(values: list[float], patience: int, mode: str) -> int:
    """The epoch (1-based) after which early stopping ends the run, by its definition."""
    best, wait = None, 0
    for epoch, value in enumerate(values, 1):
        if best is None or (value > best if mode == "max" else value < best):
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return len(values)


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(tmp_path):
    record, scalars, printed = train_and_print(tmp_path, "regularization=[early_stopping]", "regularization.early_stopping.patience=2",
                            "schedule=constant", "trainer.epochs=40")
    val_acc = per_epoch(scalars, M.VAL_ACC)
    stop = expected_stop(val_acc, patience=2, mode="max")
    assert stop < 40, val_acc  # it did stop early
    assert record["epochs_run"] == stop == len(val_acc)
    assert record["message"].startswith(f"early stopping after epoch {stop}")
    assert [line for line in printed if "early stopping" in line] == [record["message"]]  # said once, one prefix


def test_l2_in_the_loss_and_clipping_by_the_max_norm_train_and_say_so(tmp_path):
    record, scalars, printed = train_and_print(
        tmp_path, "regularization=[l2,grad_clip]", "regularization.l2.coupling=loss", "regularization.grad_clip.norm_type=inf",
        "trainer.epochs=1", "trainer.limit_train_batches=3")
    assert record["status"] == "completed"
    assert ("weight decay: in the loss (regularization.l2.coupling=loss, 0.0005 * ||w||^2 / 2 on 3 weight tensors); "
            "the optimizer's own decay is off") in printed  # the mlp's 3 linear layers
    norms = per_epoch(scalars, M.GRAD_NORM)  # ||g||_inf before clipping, one per step
    assert len(norms) == 3 and all(0 < n < float("inf") for n in norms)


def test_plateau_cuts_the_lr_when_the_monitored_loss_stalls(tmp_path):
    # Monitoring val/loss with trainer.mode=auto: a loss improves downwards.
    record, scalars = train(tmp_path, "schedule=plateau", "schedule.patience=1", "schedule.factor=0.5",
                            "schedule.threshold=0", "trainer.monitor=val/loss", "optimizer.lr=0.01",
                            "trainer.epochs=12")
    losses = per_epoch(scalars, M.VAL_LOSS)
    steps_per_epoch = record["global_step"] // record["epochs_run"]
    lr_in_epoch = [dict(scalars[M.LR])[e * steps_per_epoch + 1] for e in range(len(losses))]
    expected, lr, best = [], 0.01, None
    for loss in losses:  # the LR each epoch trains at, by the definition with patience 1
        expected.append(lr)
        if best is None or loss < best:
            best = loss
        else:
            lr *= 0.5
    assert lr_in_epoch == pytest.approx(expected, rel=1e-6), (losses, lr_in_epoch)
    assert record["mode"] == "min"
    assert record["best"] == pytest.approx(min(losses))  # best.pt holds the lowest loss, not the highest
