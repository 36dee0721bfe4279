"""StopRequest: the first Ctrl-C (or SIGTERM) asks the loop to stop after the current step."""

from __future__ import annotations

import signal

from trainkit.console import console


class StopRequest:
    """Installed for the length of a run; a second signal exits at once (after `on_force_exit`,
    which records that the run was interrupted)."""

    def __init__(self, on_force_exit=lambda: None):
        self.requested: str | None = None
        self.on_force_exit = on_force_exit
        self._previous = {}

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
        if self.requested:
            console.print(f"\n{name} again: exiting now, without saving.")
            self.on_force_exit()
            raise SystemExit(128 + signum)
        self.requested = name
        console.print(f"\n{name}: finishing the current step, then saving last.pt (press Ctrl-C again to exit at once).")
