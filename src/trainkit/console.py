"""What the user reads: the run's consoles, one-line reports (also in train.log) and the results table."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text


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
