"""Write files so that a crash mid-write leaves the previous version intact."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
from pathlib import Path

# mkstemp's alphabet and length, so temporaries left by earlier versions are recognised too.
_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TOKEN_LENGTH = 8


class StorageError(OSError):
    """A file could not be written (disk full, quota, file size limit, read-only): the previous
    version is left intact. One line for the user, not a traceback."""

    def __str__(self) -> str:
        return self.strerror


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Temporary file in the same folder, flush, fsync, rename over the target, fsync the folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except OSError as e:
        raise _storage_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # inside the with: the lock lasts until the name is gone, so no clean-up takes it for stale
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _storage_error(path, e) from e
        raise
    _remove_stale_temporaries(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename (and the clean-up) durable
    finally:
        os.close(dir_fd)


def _storage_error(path: Path, error: OSError) -> StorageError:
    code = errno.errorcode.get(error.errno, "") if error.errno else ""
    reason = f"{error.strerror or error} ({code})" if code else str(error.strerror or error)
    previous = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    return StorageError(error.errno, f"could not write {path}: {reason}; {previous}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new `.<name>.<token>.tmp` beside `path`, created with mode 0666 so the umask applies as for open().

    mkstemp would make it 0600, and the rename would hand that mode to the checkpoint. The token
    comes from `secrets`, not `random`: the global RNG belongs to the run and must not move.
    The file is flock'ed while it is written, which tells a live write from a killed one.
    """
    for _ in range(100):
        token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_LENGTH))
        tmp = path.parent / f".{path.name}.{token}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, tmp
    raise FileExistsError(f"no unused temporary name for {path}")


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path` whose writer died (nobody holds their lock); a live write, e.g. another
    run filling the same cache entry, keeps its own.

    The token has no dot, so `.last.pt.<token>.tmp` never matches a temporary of `last.pt.bak`.
    """
    own = re.compile(rf"\.{re.escape(path.name)}\.[{_TOKEN_ALPHABET}]{{{_TOKEN_LENGTH}}}\.tmp")
    for entry in os.scandir(path.parent):
        if own.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            _remove_if_unlocked(entry.path)


def _remove_if_unlocked(tmp: str) -> None:
    try:
        fd = os.open(tmp, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(tmp)
    except (BlockingIOError, FileNotFoundError):
        pass  # still being written, or already gone
    finally:
        os.close(fd)
