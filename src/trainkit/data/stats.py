"""Per-channel mean and std of a training set, cached by the files it was read from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from trainkit.atomic import atomic_write_text


def stats_key(identity: str, files: list[Path], base: Path) -> str:
    """A hash of `identity` and each file's path (relative to `base`), size and modification time."""
    h = hashlib.sha256(identity.encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.relative_to(base)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cached_channel_stats(images: np.ndarray, cache_dir, folder: str, key: str, record: dict) -> tuple[list[float], list[float]]:
    """channel_stats(images), kept in <cache_dir>/<folder>/<key>.json; cache_dir null: computed every time."""
    path = Path(str(cache_dir)) / folder / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
            return cached["mean"], cached["std"]
        except (ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    mean, std = channel_stats(images)
    if path is not None:
        try:
            atomic_write_text(path, json.dumps({**record, "mean": mean, "std": std}, indent=1))
        except OSError:
            pass  # a read-only cache folder costs only the recomputation
    return mean, std


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) pixels scaled to [0, 1], over all pixels."""
    c = images.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, c).astype(np.float64)
        total += block.sum(0)
        total_sq += np.square(block).sum(0)
    count = max(1, images.size // c)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return [round(float(m) / 255.0, 6) for m in mean], [round(max(float(s) / 255.0, 1e-3), 6) for s in std]  # a constant image set must not divide by 0
