"""BestCheckpoint and LastCheckpoint: checkpoints/best.pt by the monitored metric, last.pt every epoch."""

from __future__ import annotations

import math
from pathlib import Path

from trainkit.engine.callbacks.base import Callback
from trainkit.engine.checkpoints import save_checkpoint
from trainkit.status import Status


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class BestCheckpoint(Callback):
    def __init__(self, checkpoint_dir: Path, monitor: str, mode: str):
        self.path = Path(checkpoint_dir) / "best.pt"
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        value = metrics.get(self.monitor)
        if improved(value, self.best, self.mode):
            self.best, self.best_epoch = value, trainer.epoch
            save_checkpoint(self.path, trainer.checkpoint_payload(metrics))

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class LastCheckpoint(Callback):
    """last.pt after every epoch, and mid-epoch when the run is interrupted."""

    def __init__(self, checkpoint_dir: Path):
        self.path = Path(checkpoint_dir) / "last.pt"

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        save_checkpoint(self.path, trainer.checkpoint_payload(metrics))

    def on_fit_end(self, trainer, status: Status) -> None:
        if status == Status.INTERRUPTED:
            save_checkpoint(self.path, trainer.checkpoint_payload(trainer.last_metrics))
