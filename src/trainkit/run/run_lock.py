"""One trainkit process per run folder: two writing the same last.pt and metrics.json would corrupt the run.

The lock is fcntl.flock on `<run dir>/.lock`: the kernel drops it when its holder dies, even by
SIGKILL, so a `.lock` file left behind by a killed run never blocks anyone. The file's text (pid
and host) is only for the message and for humans.

The `trainkit` command claims a run folder it knows in advance (hydra.run.dir, resume=) before
Hydra writes its .hydra/ files and train.log there, so a second process is refused before it has
written anything; the run's own RunLock in the same process then takes that claim over.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import socket
from pathlib import Path

from trainkit.errors import UserError

LOCK_NAME = ".lock"

_held_fds: set[int] = set()
_claims: dict[str, RunLock] = {}  # folders this process claimed before its run started, by real path


def _close_in_forked_child() -> None:
    """A forked child (a DataLoader worker) shares the lock; closing its copy lets the lock die with
    the training process alone instead of lingering until every worker has exited."""
    for fd in _held_fds:
        os.close(fd)
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_in_forked_child)


class RunLock:
    """An exclusive, non-blocking lock on a run folder, held for the whole life of a training run."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = run_dir
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock now or raise UserError naming the process that holds it; never waits."""
        if self._fd is not None:
            return self
        claimed = _claims.pop(os.path.realpath(self.run_dir), None)
        if claimed is not None and claimed._fd is not None:  # this process claimed it: take the claim over
            self._fd, claimed._fd = claimed._fd, None
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(f"{self.run_dir} is in use by another trainkit process ({holder}); "
                                "wait for it to end or choose another run") from None
            if _is_current_file(fd, self.path):
                break
            os.close(fd)  # a releaser unlinked the file we opened: lock the one now at the path
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        _held_fds.add(fd)
        return self

    def release(self) -> None:
        """Remove the file while still holding the lock, then unlock: an acquire that had opened the
        old file finds it gone from the path and locks a new one, so two can never both hold the run."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            _held_fds.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim(run_dir: str | os.PathLike, check=lambda: None) -> RunLock:
    """Lock a run folder for this process before Hydra writes into it, then run `check` under the
    lock (the folder may have been used since the pre-run check). On a refusal, the folders the
    claim made are removed again. Held until the run's own RunLock takes it over, or until exit."""
    made = [p for p in (Path(run_dir).absolute(), *Path(run_dir).absolute().parents) if not p.exists()]
    lock = RunLock(run_dir)
    try:
        lock.acquire()
        check()
    except BaseException:
        lock.release()
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    _claims[os.path.realpath(run_dir)] = lock
    atexit.register(lock.release)
    return lock


def is_locked(run_dir: str | os.PathLike) -> bool:
    """Whether a live process holds the run's lock (for resume=auto to skip runs still training).

    A shared try-lock, released at once: it conflicts only with a holder, not with other checks.
    """
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the shared lock


def _is_current_file(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path`: a lock on a file its releaser has unlinked guards nothing."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(fd: int) -> str:
    """'pid N', with the host when it is another machine (a run folder on a shared file system)."""
    text = os.pread(fd, 256, 0).decode(errors="replace").split()
    if not text or not text[0].isdigit():
        return "pid unknown"  # the holder has locked but not yet written its pid
    host = text[1] if len(text) > 1 else ""
    return f"pid {text[0]}" + (f" on {host}" if host and host != socket.gethostname() else "")
