"""The host's available memory, and the refusal of a size that cannot fit in it (no torch needed)."""

from __future__ import annotations

import os

from trainkit.errors import allowed


def available_memory() -> int:
    """Bytes the kernel says a new allocation can take without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def format_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def refuse_beyond_memory(key: str, value, need: int, what: str) -> None:
    """A UserError naming `key` when `what` needs more bytes than the machine has available:
    refused now, not as a MemoryError (or the OOM killer) after a long load."""
    available = available_memory()
    if need > available:
        raise allowed(key, value, f"{what} need {format_bytes(need)} of memory, and {format_bytes(available)} is "
                                  f"available; choose a smaller {key}")
