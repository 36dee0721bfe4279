"""StopRequest: the first Ctrl-C (or SIGTERM) asks the loop to stop after the current step."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from trainkit.console import console


class StopRequest:
    """Installed for the length of a run; a second signal exits at once (after `on_force_exit`,
    which records that the run was interrupted)."""

    def __init__(self, on_force_exit=lambda: None, stop_file: Path | None = None):
        self._requested: str | None = None
        self._signalled = False  # a signal came (the stop file alone is not one: Ctrl-C after it still saves)
        self.on_force_exit = on_force_exit
        self._previous = {}
        # A sweep whose jobs run in other processes (joblib, submitit) is stopped by this file: its jobs may
        # have missed the signal (still starting up, or `kill <sweep pid>`), so they look for it too.
        self.stop_file, self._looked = stop_file, 0.0

    @property
    def requested(self) -> str | None:
        """The signal's name once one came, or why the sweep stopped; None while the run goes on."""
        if self._requested is None and self.stop_file is not None and time.monotonic() - self._looked > 1.0:
            self._looked = time.monotonic()  # a stat a second, not one per step
            if self.stop_file.exists():
                self._requested = "the sweep was stopped"
        return self._requested

    @requested.setter
    def requested(self, value: str | None) -> None:
        self._requested = value

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): keep default handling
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._signalled:
            console.print(f"\n{name} again: exiting now, without saving.")
            self.on_force_exit()
            raise SystemExit(128 + signum)
        self._signalled = True
        self._requested = self._requested or name
        console.print(f"\n{name}: finishing the current step, then saving last.pt (press Ctrl-C again to exit at once).")
