"""Weight initialization schemes, applied to every conv and linear layer of a model."""

from __future__ import annotations

from torch import nn


class DefaultInit:
    """Keep PyTorch's own per-layer initialization."""

    def __call__(self, model: nn.Module) -> nn.Module:
        return model
