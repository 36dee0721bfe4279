"""Held-out splits: stratified by class and seeded, so the same images are held out every time."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from trainkit.config.rules import fraction_open, require
from trainkit.errors import UserError


def stratified_split(labels: np.ndarray, fraction: float, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), the held-out part `fraction` of each class, seeded."""
    require(fraction_open, key, fraction)
    idx = np.arange(len(labels))
    try:
        kept, held = train_test_split(idx, test_size=float(fraction), random_state=seed, stratify=labels)
    except ValueError as e:  # too few images of some class to put one on each side
        counts = np.bincount(labels)
        raise UserError(f"{key}={fraction} cannot split {len(labels)} images stratified by class (the smallest class "
                        f"has {counts[counts > 0].min()}): {e}") from None
    return np.sort(kept), np.sort(held)


def hold_out(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices into `labels` of 'train' and of each split in `fractions`, held out in that order
    ('test', then 'val') from what is left: the one way every dataset makes its held-out splits."""
    rest, held = np.arange(len(labels)), {}
    for split, fraction in fractions.items():
        kept, out = stratified_split(labels[rest], fraction, seed, f"dataset.{split}_fraction")
        rest, held[split] = rest[kept], rest[out]
    return {"train": rest, **held}
