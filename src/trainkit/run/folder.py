"""A run's folder: never another run's, one that can be made, and none left behind empty."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

from trainkit.errors import UserError, allowed


def refuse_used_run_dir(run_dir: Path) -> None:
    """A run never writes into another run's folder (Hydra would rewrite its .hydra/ files)."""
    if (run_dir / "metrics.json").exists() or (run_dir / "checkpoints").exists():
        raise UserError(f"hydra.run.dir={str(run_dir)!r} already holds a run; choose another folder, "
                        f"or continue that run with {shlex.quote(f'resume={run_dir}')}")


def refuse_used_sweep_dir(sweep_dir: Path, sweeper=None) -> None:
    """A sweep never writes into another sweep's folder: Hydra would rewrite its jobs' records. The
    one exception: a trainkit_optuna search (`sweeper`, the hydra.sweeper node) whose study is in the
    folder continues it, its new trials in new job folders."""
    if not sweep_dir.is_dir():
        return
    if sweeper is not None:
        from trainkit.run.study import holds_study

        if holds_study(sweep_dir, sweeper):
            return
    used = (sweep_dir / "summary.csv").exists() or (sweep_dir / "multirun.yaml").exists() or \
        any((job / ".hydra").is_dir() for job in sweep_dir.iterdir())
    if used:
        raise UserError(f"hydra.sweep.dir={str(sweep_dir)!r} already holds a sweep; choose another folder "
                        "(by default each sweep gets a new one)")


def refuse_unwritable(key: str, folder: Path, value: str | None = None) -> None:
    """The output folder can be made: nothing in its path is a file, and a folder can be made in
    its nearest existing folder. Checked now, not when Hydra makes it (a traceback). `value`: what
    the message shows as the key's value, when that is a file in `folder` (preview's out)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise allowed(key, value or str(folder), f"{existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".trainkit-write-check-", dir=existing))
    except OSError as e:
        raise allowed(key, value or str(folder), f"cannot make a folder in {existing} ({e.strerror})") from None


def remove_if_empty_run(run_dir: Path) -> None:
    """A run that failed before training leaves no folder of half results behind."""
    import shutil

    from trainkit.run.run_lock import is_locked

    if is_locked(run_dir):  # another process is starting a run there: not ours to remove
        return
    leftovers = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if leftovers <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in list(run_dir.parents)[:2]:  # outputs/runs and outputs, when nothing else is in them
            try:
                parent.rmdir()
            except OSError:
                break
