"""Held-out splits: stratified by class and seeded, so the same images are held out every time."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from trainkit.errors import UserError, allowed


def stratified_split(labels: np.ndarray, fraction: float, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), the held-out part `fraction` of each class, seeded."""
    if not 0.0 < float(fraction) < 1.0:
        raise allowed(key, fraction, "a fraction strictly between 0 and 1")
    idx = np.arange(len(labels))
    try:
        kept, held = train_test_split(idx, test_size=float(fraction), random_state=seed, stratify=labels)
    except ValueError as e:  # too few images of some class to put one on each side
        counts = np.bincount(labels)
        raise UserError(f"{key}={fraction} cannot split {len(labels)} images stratified by class (the smallest class "
                        f"has {counts[counts > 0].min()}): {e}") from None
    return np.sort(kept), np.sort(held)


def subset_of_train(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` training images (dataset.train_subset), drawn stratified by class and seeded, so
    every run with the same split_seed trains on the same images."""
    if n > len(labels):
        raise allowed("dataset.train_subset", n, f"at most the {len(labels)} training images this split has (or null for all)")
    if n == len(labels):
        return np.arange(n)
    try:
        kept, _ = train_test_split(np.arange(len(labels)), train_size=n, random_state=seed, stratify=labels)
    except ValueError:
        raise allowed("dataset.train_subset", n, f"at least one image per class ({len(np.unique(labels))} classes)") from None
    return np.sort(kept)
