"""EarlyStopping: end the run when the monitored metric stops improving.

Own code (torch has no training loop, so no early stopping); the improvement test is the one
BestCheckpoint's (engine/tracking.py), so 'improved' means the same thing to both."""

from __future__ import annotations

from trainkit import metrics as M
from trainkit.engine.callbacks.base import Callback
from trainkit.engine.tracking import improved
from trainkit.config.rules import validated
from trainkit.config.schema import EarlyStoppingConfig


class EarlyStopping(Callback):
    """Sets `trainer.should_stop` once `monitor` has not improved by more than `min_delta`
    for `patience` epochs in a row. Built as EarlyStopping(**cfg.regularization.early_stopping)."""

    order, state_key = 10, "early_stopping"  # before last.pt, which saves should_stop

    def __init__(self, monitor: str = M.VAL_ACC, mode: str = "auto", patience: int = 5, min_delta: float = 0.0):
        settings = {"monitor": monitor, "mode": mode, "patience": patience, "min_delta": min_delta}
        validated(EarlyStoppingConfig, settings, "regularization.early_stopping")  # the rules of config/schema.py
        mode = M.resolve_mode(monitor, mode)
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0  # epochs since the last improvement
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        value = metrics.get(self.monitor)
        if improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = float(value), trainer.epoch, 0
            return
        self.wait += 1  # a NaN or missing value counts as no improvement
        if self.wait >= self.patience:
            self.stopped_epoch = trainer.epoch
            trainer.should_stop = True

    @property
    def stop_reason(self) -> str | None:
        """One line for the run's summary, once it has stopped the run."""
        if self.stopped_epoch is None:
            return None
        return (f"early stopping after epoch {self.stopped_epoch}: {self.monitor} did not improve by more than "
                f"{self.min_delta:g} for {self.patience} epochs (best {self.best:.4g} at epoch {self.best_epoch})")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
