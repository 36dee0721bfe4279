"""Pixel preprocessing applied to whole batches on the training device."""

from __future__ import annotations

import numpy as np
import torch

from trainkit.config.rules import require, rule_of
from trainkit.config.schema import DatasetConfig
from trainkit.errors import UserError

ZCA_MAX_FEATURES = 8192  # a D x D whitening matrix: 8192 features is 256 MiB and a slow eigendecomposition


class Preprocess(torch.nn.Module):
    """uint8 NCHW batch -> float model input: x/255, then per-channel centering/scaling or ZCA.

    zca needs `train_images` (uint8 N,H,W,C): the whitening is fitted on them once and kept
    as buffers, so it moves with `.to(device)` and runs as one matmul per batch.
    """

    def __init__(self, kind: str, mean, std, train_images: np.ndarray | None = None, zca_epsilon: float = 1e-2):
        super().__init__()
        require(rule_of(DatasetConfig, "preprocess"), "dataset.preprocess", kind)
        self.kind = kind
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if kind in ("none", "zca"):
            mean_t, std_t = torch.zeros_like(mean_t), torch.ones_like(std_t)
        elif kind == "center":
            std_t = torch.ones_like(std_t)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)
        if kind == "zca":
            if train_images is None:
                raise ValueError("preprocess=zca needs the training images to fit the whitening")
            pixel_mean, whitening = fit_zca(train_images, zca_epsilon)
            self.register_buffer("pixel_mean", pixel_mean)
            self.register_buffer("whitening", whitening)

    @classmethod
    def from_state(cls, kind: str, mean, std, state: dict) -> Preprocess:
        """The preprocessing a checkpoint saved (its state_dict), without the training images a ZCA fit needs."""
        if kind != "zca":
            module = cls(kind, mean, std)
        else:
            module = cls("none", mean, std)
            module.kind = kind
            module.register_buffer("pixel_mean", torch.empty_like(state["pixel_mean"]))
            module.register_buffer("whitening", torch.empty_like(state["whitening"]))
        module.load_state_dict(state)
        return module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if self.kind == "zca":
            n = x.shape[0]
            flat = x.reshape(n, -1)
            if flat.shape[1] != self.whitening.shape[0]:
                raise UserError(f"preprocess=zca was fitted on {self.whitening.shape[0]} values per image, "
                                f"but this batch has {flat.shape[1]} (an augmentation changed the image size?)")
            return ((flat - self.pixel_mean) @ self.whitening).reshape(x.shape)
        return x.sub_(self.mean).div_(self.std)


def fit_zca(images: np.ndarray, epsilon: float, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and the ZCA matrix W = U diag(1/sqrt(S + eps)) U^T of the flattened images.

    Images are uint8 (N, H, W, C), flattened in the model's (C, H, W) order and scaled to [0, 1].
    epsilon bounds the gain on low-variance directions (at most 1/sqrt(eps)): with eps -> 0 the
    training covariance becomes exactly the identity, but pixels that never vary in training
    (MNIST's border) would be amplified without limit once augmentation moves ink there.
    """
    n = len(images)
    d = int(np.prod(images.shape[1:]))
    if d > ZCA_MAX_FEATURES:
        raise UserError(f"dataset.preprocess=zca needs a {d}x{d} matrix for {images.shape[1]}x{images.shape[2]}x{images.shape[3]} "
                        f"images (at most {ZCA_MAX_FEATURES} values per image); use standardize or a smaller dataset.image_size")
    require(rule_of(DatasetConfig, "zca_epsilon"), "dataset.zca_epsilon", epsilon)

    def block(start):
        x = torch.from_numpy(images[start:start + chunk]).permute(0, 3, 1, 2).reshape(-1, d)
        return x.to(torch.float64).div_(255.0)

    total = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, chunk):
        total += block(start).sum(0)
    mean = total / n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        xc = (block(start) - mean).float()  # centered, so float32 products lose nothing that matters; 2x faster
        cov += xc.T @ xc
    cov /= n
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    scale = 1.0 / torch.sqrt(eigenvalues.clamp_min(0.0) + float(epsilon))
    whitening = (eigenvectors * scale) @ eigenvectors.T
    return mean.float(), whitening.float()
