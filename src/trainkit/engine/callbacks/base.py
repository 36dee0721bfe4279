"""Callbacks: everything that hangs off the training loop, called at named points of it.

The loop calls, in this sequence: on_fit_start, then on_step_end after each step and
on_epoch_end after each validated epoch, on_fit_end (with how the fit ended, also when it
raised); after a completed fit the run tests the best checkpoint and calls on_test_end; close
comes last, in the run's `finally`. Nothing outside a callback calls it by name: the loop and
the run call the CallbackList, which calls every callback in `order`.
"""

from __future__ import annotations

import contextlib

from trainkit.status import Status


class Callback:
    # Lower runs first at every hook. Today's: EarlyStopping 10 (decides should_stop before last.pt
    # saves it), TensorBoardLogger 20 (an epoch's scalars are on disk before last.pt says the epoch
    # is done), BestCheckpoint 30, LastCheckpoint 31, ProgressDisplay 50 (prints after saving),
    # RunRecord 60 (metrics.json says epoch N only once last.pt holds it).
    order: int = 100
    # The key of its state in a checkpoint's "callbacks" (None: it keeps none). Never renamed:
    # old checkpoints are restored by it.
    state_key: str | None = None

    def on_fit_start(self, trainer) -> None: ...

    def on_step_end(self, trainer, loss) -> None: ...

    def on_epoch_end(self, trainer, metrics: dict) -> None: ...

    def on_fit_end(self, trainer, status: Status) -> None: ...

    def on_test_end(self, trainer, results: dict) -> None: ...

    def close(self) -> None: ...

    @property
    def stop_reason(self) -> str | None:
        """One line for the run's summary when this callback stopped the run early, else None."""
        return None

    @property
    def summary(self) -> list[str]:
        """Lines for under the run's results table (the end-of-run diagnosis), else none."""
        return []

    @property
    def stop_status(self) -> Status | None:
        """How the run ends when this callback stopped it and that is not 'completed' (a pruned trial)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class CallbackList:
    """The run's callbacks in `order` (ties keep the order given), each hook called on all of them."""

    def __init__(self, callbacks=()):
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        keys = [cb.state_key for cb in self.callbacks if cb.state_key is not None]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"two callbacks keep their state under the same key: {', '.join(duplicated)}")

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def on_fit_start(self, trainer) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(trainer)

    def on_step_end(self, trainer, loss) -> None:
        for cb in self.callbacks:
            cb.on_step_end(trainer, loss)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(trainer, metrics)

    def on_fit_end(self, trainer, status: Status) -> None:
        for cb in self.callbacks:
            cb.on_fit_end(trainer, status)

    def on_test_end(self, trainer, results: dict) -> None:
        for cb in self.callbacks:
            cb.on_test_end(trainer, results)

    def close(self) -> None:
        """Every callback's close, even when one of them raises (the first error is raised after)."""
        with contextlib.ExitStack() as stack:
            for cb in reversed(self.callbacks):  # the stack unwinds last-in first: so in order
                stack.callback(cb.close)

    @property
    def stop_reason(self) -> str | None:
        return next((cb.stop_reason for cb in self.callbacks if cb.stop_reason is not None), None)

    @property
    def summary(self) -> list[str]:
        return [line for cb in self.callbacks for line in cb.summary]

    @property
    def stop_status(self) -> Status | None:
        return next((cb.stop_status for cb in self.callbacks if cb.stop_status is not None), None)

    def state_dict(self) -> dict:
        return {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key is not None}

    def load_state_dict(self, state: dict) -> None:
        """Keys that no callback here owns (one not configured in this run) are left alone."""
        for cb in self.callbacks:
            if cb.state_key in state:
                cb.load_state_dict(state[cb.state_key])
