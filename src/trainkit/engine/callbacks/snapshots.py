"""Snapshot ensembles (Huang et al. 2017): a checkpoint at the end of each learning-rate cycle.

With schedule=cosine_restarts each cycle ends at a low LR in a different minimum; the models saved
there, averaged (`trainkit ensemble <run> --snapshots`), stand in for independently trained ones
at the cost of one run. Without restarts, `every_n_epochs` saves one every N epochs instead.
"""

from __future__ import annotations

import math
from pathlib import Path

from trainkit.engine.callbacks.base import Callback
from trainkit.engine.checkpoints import save_checkpoint

SNAPSHOT_DIR = "snapshots"  # under the run's checkpoints/


def snapshot_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


class Snapshots(Callback):
    """checkpoints/snapshots/epoch_NNNN.pt at each cycle's end (`cycle` given) or every N epochs."""

    order = 32  # after BestCheckpoint and LastCheckpoint: a snapshot never delays last.pt

    def __init__(self, checkpoint_dir: Path, every_n_epochs: int | None = None, cycle: dict | None = None):
        # The config's rules (config/check.py) refuse a bad every_n_epochs, and null without restarts.
        if every_n_epochs is None and cycle is None:
            raise ValueError("Snapshots needs every_n_epochs or a cosine_restarts cycle")
        self.folder = Path(checkpoint_dir) / SNAPSHOT_DIR
        self.every_n_epochs, self.cycle = every_n_epochs, cycle
        self.epochs: set[int] = set()

    def on_fit_start(self, trainer) -> None:
        if self.every_n_epochs is None:
            self.epochs = cycle_end_epochs(trainer.steps_per_epoch, trainer.epochs, **self.cycle)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        due = trainer.epoch % self.every_n_epochs == 0 if self.every_n_epochs else trainer.epoch in self.epochs
        if due:
            save_checkpoint(self.folder / snapshot_name(trainer.epoch), trainer.checkpoint_payload(metrics))


def cycle_end_epochs(steps_per_epoch: int, epochs: int, cycle_epochs: float, cycle_mult: int,
                     warmup_epochs: float = 0, warmup_steps: int = 0) -> set[int]:
    """The epochs in which a cosine_restarts cycle ends (its LR at eta_min), as the schedule counts
    them: the first cycle round(cycle_epochs * steps_per_epoch) steps after warmup, each next one
    cycle_mult times longer."""
    length = max(1, int(round(float(cycle_epochs) * steps_per_epoch)))
    end, ends = max(int(warmup_steps), int(round(float(warmup_epochs) * steps_per_epoch))), set()
    while True:
        end += length
        epoch = math.ceil(end / steps_per_epoch)
        if epoch > epochs:
            return ends
        ends.add(epoch)
        length *= int(cycle_mult)


def restart_cycle(schedule) -> dict | None:
    """The cycle settings of a schedule=cosine_restarts config, or None for any other schedule."""
    if not str(schedule.get("_target_", "")).endswith(".cosine_restarts"):
        return None
    return {"cycle_epochs": schedule.cycle_epochs, "cycle_mult": schedule.cycle_mult,
            "warmup_epochs": schedule.get("warmup_epochs", 0) or 0, "warmup_steps": schedule.get("warmup_steps", 0) or 0}
