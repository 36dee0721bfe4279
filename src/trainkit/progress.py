"""ProgressDisplay: a rich progress bar while training, a line per epoch, a results table."""

from __future__ import annotations

import logging
import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from trainkit.callbacks import Callback


class RunConsole(Console):
    def on_broken_pipe(self) -> None:
        """`trainkit train | head`: the reader has gone, the run goes on (rich would exit here);
        its lines still reach train.log, and the results its folder."""
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (sys.stderr if self.stderr else sys.stdout).fileno())


def on_terminal() -> bool:
    """stdout is a terminal (not a file or pipe, and not closed: `trainkit train >&-` leaves it None)."""
    return sys.stdout is not None and sys.stdout.isatty()


# soft_wrap keeps long log lines whole in files and pipes, where rich would assume 80 columns.
console = RunConsole(highlight=False, soft_wrap=True, width=None if on_terminal() or os.environ.get("COLUMNS") else 120)
error_console = RunConsole(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("trainkit")


def report(message: str, error: bool = False) -> None:
    """A line for the user on the terminal (rich markup allowed) and for the run's train.log.

    Hydra's job logging writes the log file; its console handler is set to warnings only
    (configs/hydra/default.yaml), so the line is not printed twice."""
    (error_console if error else console).print(message)
    log.info(Text.from_markup(message).plain)


class ProgressDisplay(Callback):
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


def report_results(title: str, rows: dict[str, float | str]) -> None:
    """The end-of-run table on the terminal, the same figures as one line in train.log."""
    console.print(results_table(title, rows))
    log.info("%s: %s", title, ", ".join(f"{k} {fmt(v)}" for k, v in rows.items()))


def fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def results_table(title: str, rows: dict[str, float | str]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows.items():
        table.add_row(name, fmt(value))
    return table
