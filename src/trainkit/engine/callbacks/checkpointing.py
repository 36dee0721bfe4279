"""BestCheckpoint and LastCheckpoint: checkpoints/best.pt by the monitored metric, last.pt every epoch."""

from __future__ import annotations

from pathlib import Path

from trainkit.engine.callbacks.base import Callback
from trainkit.engine.checkpoints import save_checkpoint
from trainkit.engine.tracking import Best
from trainkit.status import Status


class BestCheckpoint(Callback):
    """Keeps `best` (the trainer's) current and saves best.pt whenever it improves."""

    order, state_key = 30, "best_checkpoint"

    def __init__(self, checkpoint_dir: Path, best: Best):
        self.path = Path(checkpoint_dir) / "best.pt"
        self.best = best

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        if self.best.update(metrics.get(self.best.monitor), trainer.epoch):
            save_checkpoint(self.path, trainer.checkpoint_payload(metrics))

    def state_dict(self) -> dict:
        return {"best": self.best.value, "best_epoch": self.best.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best.value, self.best.epoch = state["best"], state["best_epoch"]


class LastCheckpoint(Callback):
    """last.pt after every epoch, and mid-epoch when the run is interrupted."""

    order, state_key = 31, "last_checkpoint"

    def __init__(self, checkpoint_dir: Path):
        self.path = Path(checkpoint_dir) / "last.pt"

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        save_checkpoint(self.path, trainer.checkpoint_payload(metrics))

    def on_fit_end(self, trainer, status: Status) -> None:
        if status == Status.INTERRUPTED:
            save_checkpoint(self.path, trainer.checkpoint_payload(trainer.last_metrics))
