"""metrics.json: the run's status and results, rewritten atomically as the run goes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from trainkit.atomic import atomic_write_text
from trainkit.engine.callbacks.base import Callback
from trainkit.status import Status


class RunRecord(Callback):
    """Also a callback: after every epoch the file shows how far the run got."""

    order, state_key = 60, "run_record"  # last: metrics.json says epoch N once last.pt holds it

    def __init__(self, run_dir: Path, monitor: str, mode: str, config_hash: str, overrides: list[str],
                 started: float | None = None, write: bool = True):
        self.path = Path(run_dir) / "metrics.json"
        self.write = write  # False in the processes of a DDP run other than rank 0: one process writes the folder
        self.started = time.time() if started is None else started  # wall time counts data loading and set-up too
        self.data = {
            "status": Status.RUNNING, "monitor": monitor, "mode": mode, "best": None, "best_epoch": None,
            "final": {}, "test": {}, "epochs_run": 0, "global_step": 0, "wall_time_s": 0.0,
            "config_hash": config_hash, "overrides": overrides, "message": None, "epoch_seconds": [],
            "epoch_phase_seconds": [],
        }
        self._epoch_started = time.time()

    @classmethod
    def read(cls, run_dir: Path) -> dict | None:
        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def resume_from(self, previous: dict) -> None:
        self.started -= previous.get("wall_time_s", 0.0)
        self.data["epoch_seconds"] = list(previous.get("epoch_seconds", []))
        self.data["epoch_phase_seconds"] = list(previous.get("epoch_phase_seconds", []))
        if "diagnostics" in previous:  # the start checks ran when the run began, not again on a resume
            self.data["diagnostics"] = previous["diagnostics"]

    def mark_interrupted(self) -> None:
        """A second Ctrl-C exits at once; the record still says the run did not complete."""
        self.update(status=Status.INTERRUPTED, message="stopped by a second signal before last.pt was saved")

    def on_fit_start(self, trainer) -> None:
        self._epoch_started = time.time()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.data["wall_time_s"] = round(time.time() - self.started, 3)
        if self.write:
            atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=False))

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        best = trainer.best
        now = time.time()
        seconds = now - self._epoch_started
        self.data["epoch_seconds"].append(round(seconds, 3))  # train + validation
        # Where the epoch's time went: the steps, validation, and the rest (the callbacks' epoch ends:
        # checkpoints, logs, monitors). The loop's own timers, so a slow epoch can be read without a profiler.
        train, val = (trainer.epoch_phases.get(k, 0.0) for k in ("train", "val"))
        self.data["epoch_phase_seconds"].append({"train": round(train, 3), "val": round(val, 3),
                                                 "rest": round(max(0.0, seconds - train - val), 3)})
        self._epoch_started = now
        self.update(epochs_run=trainer.epoch, global_step=trainer.global_step, final=dict(metrics),
                    best=getattr(best, "value", None), best_epoch=getattr(best, "epoch", None))
