"""Regularizers chosen in the `regularization` list group, as the loop's small hooks."""

from __future__ import annotations

import torch
from torch import nn


class Regularizers:
    """What the selected regularizers add to the loop: a dropout rate for the model, a loss
    penalty, a batch transform (mixup/cutmix), label smoothing and gradient clipping."""

    def __init__(self, cfg):
        self.cfg = cfg or {}
        dropout = self.cfg.get("dropout")
        self.dropout = float(dropout.p) if dropout else 0.0
        smoothing = self.cfg.get("label_smoothing")
        self.label_smoothing = float(smoothing.epsilon) if smoothing else 0.0
        l2 = self.cfg.get("l2")
        self.l2_in_loss = float(l2.weight_decay) if l2 is not None and l2.coupling == "loss" else 0.0

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        if not self.l2_in_loss:
            return 0.0
        return 0.5 * self.l2_in_loss * sum(p.pow(2).sum() for p in decayed_parameters(model))

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, labels

    def clip_gradients(self, model: nn.Module) -> None:
        return None


def decayed_parameters(model: nn.Module):
    """Weights of conv and linear layers: the parameters a weight penalty applies to."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            yield module.weight
