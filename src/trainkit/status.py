"""How a run stands or ended: the one spelling of each status in metrics.json, the loop and the logs."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A str, so `status == "completed"` holds and json writes the plain word (files stay as they were)."""

    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"  # a search's pruner stopped the trial early: a result (best.pt kept), not a failure
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"
    CRASHED = "crashed"  # the loop raised: the fit ended without a result (metrics.json then says failed)
    FAILED = "failed"

    def __str__(self) -> str:  # Python 3.11 formats a mixed-in Enum as 'Status.COMPLETED' otherwise
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)
