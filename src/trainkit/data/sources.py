"""What a dataset is once loaded: uint8 images (N, H, W, C) with labels, its splits, and its spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DataSpec:
    """What the model and the pipeline need to know about a dataset."""

    in_channels: int
    image_size: int
    num_classes: int
    class_names: list[str]
    mean: list[float]
    std: list[float]


class ArraySource:
    """Images held in memory as one uint8 array of shape (N, H, W, C)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.ndim == 3:
            images = images[..., None]
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, indices) -> ArraySource:
        return ArraySource(self.images[indices], self.labels[indices])


@dataclass
class Splits:
    train: ArraySource
    val: ArraySource
    test: ArraySource
    spec: DataSpec
