"""The best value of the monitored metric so far: the one 'better than' rule for all that track one."""

from __future__ import annotations

import math
from dataclasses import dataclass


def improved(value: float | None, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


@dataclass
class Best:
    """The run's best `monitor` value and its epoch (None before the first). BestCheckpoint keeps it
    current; the run record, the summary and a branched resume read it from `trainer.best`."""

    monitor: str
    mode: str
    value: float | None = None
    epoch: int | None = None
    weights: str = "raw"  # which weights scored it: raw, or an averaged model's (ema, swa)

    def update(self, value: float | None, epoch: int) -> bool:
        """Take `value` if it improves on the best so far; True if it did."""
        if not improved(value, self.value, self.mode):
            return False
        self.value, self.epoch = value, epoch
        return True

    def forget(self) -> None:
        self.value, self.epoch, self.weights = None, None, "raw"
