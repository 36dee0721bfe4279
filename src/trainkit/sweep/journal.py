"""The journal file (Optuna's JournalStorage) after a kill: the sweeper repairs it before appending."""

from __future__ import annotations

from pathlib import Path


def repair_tail(path: Path) -> bool:
    """A kill in the middle of an append can leave a last line without its newline; Optuna skips it,
    but the next append would glue onto it and make the journal unreadable (the next ask() fails).
    Cut it off (kept in <name>.partial) before anything is appended. Only the sweeper calls this,
    under its SweepLock; finished trials are on complete lines before it, so none is lost."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    path.with_name(path.name + ".partial").write_bytes(data[cut:])
    with open(path, "r+b") as f:
        f.truncate(cut)
    return True
