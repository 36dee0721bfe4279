"""BestCheckpoint and LastCheckpoint: checkpoints/best.pt by the monitored metric, last.pt every epoch.

With weight averaging (regularization=[ema] or [swa]) the averaged weights are validated too
(val/acc_ema ...), and best.pt holds whichever weights score better; the checkpoint's "weights"
says which ("raw", "ema", "swa"). With checkpoint.save_top_k=k > 1 the k best epochs are kept
as checkpoints/epoch_NNN.pt beside best.pt.
"""

from __future__ import annotations

from pathlib import Path

from trainkit.engine.callbacks.base import Callback
from trainkit.engine.checkpoints import save_checkpoint
from trainkit.engine.tracking import Best, improved
from trainkit.status import Status

RAW = "raw"


def candidates(trainer, metrics: dict, monitor: str) -> dict[str, float | None]:
    """The monitored value of the raw weights and of each averaged model validated this epoch."""
    found = {RAW: metrics.get(monitor)}
    for name in trainer.averaged:
        if f"{monitor}_{name}" in metrics:
            found[name] = metrics[f"{monitor}_{name}"]
    return found


class BestCheckpoint(Callback):
    """Keeps `best` (the trainer's) current and saves best.pt whenever it improves; with top_k > 1
    (or -1: every epoch) also the top_k best epochs, each in its own file."""

    order, state_key = 30, "best_checkpoint"

    def __init__(self, checkpoint_dir: Path, best: Best, top_k: int = 1):
        self.dir = Path(checkpoint_dir)
        self.path = self.dir / "best.pt"
        self.best, self.top_k = best, top_k
        self.kept: list[dict] = []  # {"epoch", "value", "weights", "file"}, best first

    def on_fit_start(self, trainer) -> None:
        # A run branched into a new folder finds none of its origin's files: only its own are kept.
        self.kept = [k for k in self.kept if (self.dir / k["file"]).is_file()]

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        choices = candidates(trainer, metrics, self.best.monitor)
        weights = RAW
        for name, value in choices.items():
            if improved(value, choices[weights], self.best.mode):
                weights = name
        value = choices[weights]
        payload = None
        if self.best.update(value, trainer.epoch):
            self.best.weights = weights
            payload = self.payload(trainer, metrics, weights)
            save_checkpoint(self.path, payload)
        if self.top_k != 1 and self.enters_top_k(value):
            self.keep(payload or self.payload(trainer, metrics, weights), trainer.epoch, value, weights)

    def payload(self, trainer, metrics: dict, weights: str) -> dict:
        payload = trainer.checkpoint_payload(metrics)
        payload["weights"] = weights
        if weights != RAW:  # loadable as the plain model: an averaged model's module has the model's keys
            payload["model"] = trainer.averaged[weights].state_dict()
        return payload

    def enters_top_k(self, value) -> bool:
        if improved(value, None, self.best.mode) is False:
            return False
        return self.top_k < 0 or len(self.kept) < self.top_k or improved(value, self.kept[-1]["value"], self.best.mode)

    def keep(self, payload: dict, epoch: int, value: float, weights: str) -> None:
        entry = {"epoch": epoch, "value": value, "weights": weights, "file": f"epoch_{epoch:03d}.pt"}
        save_checkpoint(self.dir / entry["file"], payload)
        self.kept = [k for k in self.kept if k["epoch"] != epoch]
        position = next((i for i, k in enumerate(self.kept) if improved(value, k["value"], self.best.mode)), len(self.kept))
        self.kept.insert(position, entry)
        while 0 < self.top_k < len(self.kept):
            dropped = self.kept.pop()
            (self.dir / dropped["file"]).unlink(missing_ok=True)

    def state_dict(self) -> dict:
        return {"best": self.best.value, "best_epoch": self.best.epoch, "best_weights": self.best.weights,
                "top_k": [dict(k) for k in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        self.best.value, self.best.epoch = state["best"], state["best_epoch"]
        self.best.weights = state.get("best_weights", RAW)
        self.kept = [dict(k) for k in state.get("top_k", [])]


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
