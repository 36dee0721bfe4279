"""Pixel preprocessing applied to whole batches on the training device."""

from __future__ import annotations

import torch

from trainkit.errors import allowed

PREPROCESS_CHOICES = ("standardize", "center", "none")


class Preprocess(torch.nn.Module):
    """uint8 NCHW batch -> float model input: x/255, then per-channel centering/scaling."""

    def __init__(self, kind: str, mean, std):
        super().__init__()
        if kind not in PREPROCESS_CHOICES:
            raise allowed("dataset.preprocess", kind, ", ".join(PREPROCESS_CHOICES))
        self.kind = kind
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if kind == "none":
            mean_t, std_t = torch.zeros_like(mean_t), torch.ones_like(std_t)
        elif kind == "center":
            std_t = torch.ones_like(std_t)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        return x.sub_(self.mean).div_(self.std)
