"""The normalization every model uses, chosen by name: a layer after each conv/linear
(batch, layer, group, instance) or a reparametrisation of each conv/linear (weight, spectral)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrizations

from trainkit.errors import allowed

NORM_KINDS = ("batch", "layer", "group", "instance", "none", "weight", "spectral")
# Kinds that reparametrise the conv/linear weights instead of inserting a layer after them.
REPARAMETRISATIONS = ("weight", "spectral")


class Normalization:
    """Makes the normalization layer for a conv feature map or a flat feature vector, and
    wraps each conv/linear layer (`wrap`) for the reparametrising kinds."""

    def __init__(self, kind: str = "batch", num_groups: int = 8):
        if kind not in NORM_KINDS:
            raise allowed("norm.kind", kind, ", ".join(NORM_KINDS))
        self.kind, self.num_groups = kind, int(num_groups)
        if self.num_groups < 1:
            raise allowed("norm.num_groups", num_groups, "a whole number >= 1")

    @property
    def layers_need_bias(self) -> bool:
        """A conv/linear bias is redundant before a layer that subtracts a mean; with no
        normalization layer (none, weight, spectral) the layers keep it."""
        return self.kind == "none" or self.kind in REPARAMETRISATIONS

    def wrap(self, layer: nn.Module) -> nn.Module:
        """Every conv and linear layer a model builds passes through here."""
        if self.kind == "weight":
            # w = g * v / ||v||, one g per output unit (dim 0), as in Salimans & Kingma 2016.
            return parametrizations.weight_norm(layer, dim=0)
        if self.kind == "spectral":
            # w / sigma_max(w), sigma_max estimated by one power iteration per training forward.
            return parametrizations.spectral_norm(layer)
        return layer

    def conv(self, channels: int) -> nn.Module:
        if self.kind == "batch":
            return nn.BatchNorm2d(channels)
        if self.kind == "layer":
            return nn.GroupNorm(1, channels)
        if self.kind == "group":
            self._check_groups(channels)
            return nn.GroupNorm(self.num_groups, channels)
        if self.kind == "instance":
            return nn.InstanceNorm2d(channels, affine=True)
        return nn.Identity()

    def flat(self, features: int) -> nn.Module:
        if self.kind == "batch":
            return nn.BatchNorm1d(features)
        if self.kind in ("layer", "instance"):
            return nn.LayerNorm(features)
        if self.kind == "group":
            self._check_groups(features)
            return nn.GroupNorm(self.num_groups, features)
        return nn.Identity()

    def _check_groups(self, width: int) -> None:
        if width % self.num_groups:
            raise allowed("norm.num_groups", self.num_groups, f"must divide every layer width; {width} is not a multiple")
