"""Held-out splits: stratified by class and seeded, so the same images are held out every time."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from trainkit.config.rules import fraction_open, require
from trainkit.errors import UserError, allowed


def stratified_split(labels: np.ndarray, fraction: float, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), the held-out part `fraction` of each class, seeded."""
    require(fraction_open, key, fraction)
    return split_by_class(labels, float(fraction), seed, key, fraction)


def split_by_class(labels: np.ndarray, held_out: float | int, seed: int, key: str, value) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `held_out` a fraction of each class, or a number of images in all."""
    idx = np.arange(len(labels))
    try:
        kept, held = train_test_split(idx, test_size=held_out, random_state=seed, stratify=labels)
    except ValueError as e:  # too few images of some class to put one on each side
        counts = np.bincount(labels)
        raise UserError(f"{key}={value} cannot split {len(labels)} images stratified by class (the smallest class "
                        f"has {counts[counts > 0].min()}): {e}") from None
    return np.sort(kept), np.sort(held)


def subset_of_train(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` training images (dataset.train_subset), drawn stratified by class and seeded, so
    every run with the same split_seed trains on the same images."""
    if n > len(labels):
        raise allowed("dataset.train_subset", n, f"at most the {len(labels)} training images this split has (or null for all)")
    if n < len(np.unique(labels)):
        raise allowed("dataset.train_subset", n, f"at least one image per class ({len(np.unique(labels))} classes)")
    if n == len(labels):
        return np.arange(n)
    return split_by_class(labels, len(labels) - n, seed, "dataset.train_subset", n)[0]


def hold_out(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices into `labels` of 'train' and of each split in `fractions`, held out in that order
    ('test', then 'val') from what is left: the one way every dataset makes its held-out splits."""
    rest, held = np.arange(len(labels)), {}
    for split, fraction in fractions.items():
        kept, out = stratified_split(labels[rest], fraction, seed, f"dataset.{split}_fraction")
        rest, held[split] = rest[kept], rest[out]
    return {"train": rest, **held}
