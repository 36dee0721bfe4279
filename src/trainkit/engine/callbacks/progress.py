"""ProgressDisplay: a rich progress bar while training, and a line per epoch."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainkit.engine.callbacks.base import Callback
from trainkit.console import console, on_terminal, report


class ProgressDisplay(Callback):
    order, state_key = 50, "progress"  # prints after the epoch is saved; reads should_stop

    def __init__(self, enabled: str | bool, refresh_every: int = 10):
        if enabled == "auto":
            enabled = on_terminal()
        self.enabled = bool(enabled)
        self.refresh_every = max(1, int(refresh_every))
        self.progress: Progress | None = None
        self.task = None
        self.epoch_started = 0.0
        self.samples = 0

    def on_fit_start(self, trainer) -> None:
        if self.enabled:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  {task.fields[rate]:.0f} img/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
            )
            self.progress.start()
        self._new_epoch(trainer)

    def _new_epoch(self, trainer) -> None:
        self.epoch_started, self.samples = time.perf_counter(), 0
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task("train", total=trainer.steps_per_epoch, epoch=f"{trainer.epoch + 1}/{trainer.epochs}",
                                               loss=float("nan"), acc=float("nan"), rate=0.0,
                                               completed=trainer.batch_in_epoch)

    def on_step_end(self, trainer, loss) -> None:
        self.samples += trainer.last_batch_size
        if self.progress is not None and (trainer.batch_in_epoch % self.refresh_every == 0 or trainer.batch_in_epoch == trainer.steps_per_epoch):
            loss_avg, acc = trainer.running_train_metrics()
            rate = self.samples / max(1e-9, time.perf_counter() - self.epoch_started)
            self.progress.update(self.task, completed=trainer.batch_in_epoch, loss=loss_avg, acc=acc, rate=rate)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        seconds = time.perf_counter() - self.epoch_started
        rate = self.samples / max(1e-9, seconds)
        parts = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        line = f"epoch {trainer.epoch}/{trainer.epochs}  {parts}  lr {trainer.step_lr:.3g}  {seconds:.1f}s  {rate:.0f} img/s"
        report(line)  # rich keeps a live progress bar below printed lines
        if trainer.epoch < trainer.epochs and not trainer.should_stop:
            self._new_epoch(trainer)

    def on_fit_end(self, trainer, status) -> None:
        if self.progress is not None:
            self.progress.stop()
