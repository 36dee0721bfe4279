"""Pruning: a trial of a trainkit_optuna sweep reports its monitored value after every epoch and
stops when the study's pruner says the trial will not catch up with the others."""

from __future__ import annotations

import math

from trainkit.engine.callbacks.base import Callback
from trainkit.status import Status


class Pruning(Callback):
    order = 12  # with early stopping, before the checkpoints: last.pt then says the run stops here

    def __init__(self, trial, monitor: str, pruner: str):
        self.trial, self.monitor, self.pruner = trial, monitor, pruner  # an optuna.Trial (duck-typed: report, should_prune)
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return  # a divergence ends the run by itself; the study is told by the sweeper
        self.trial.report(float(value), step=trainer.epoch)  # epoch is 1-based here: the epochs done
        if self.pruned_at is None and self.trial.should_prune():
            self.pruned_at, trainer.should_stop = trainer.epoch, True

    @property
    def stop_reason(self) -> str | None:
        if self.pruned_at is None:
            return None
        return f"pruned at epoch {self.pruned_at} by the {self.pruner} pruner (the other trials did better by then)"

    @property
    def stop_status(self) -> Status | None:
        return Status.PRUNED if self.pruned_at is not None else None
