"""The normalization layer every model uses, chosen by name."""

from __future__ import annotations

from torch import nn

from trainkit.errors import allowed

NORM_KINDS = ("batch", "layer", "group", "instance", "none")


class Normalization:
    """Makes the normalization layer for a conv feature map or a flat feature vector."""

    def __init__(self, kind: str = "batch", num_groups: int = 8):
        if kind not in NORM_KINDS:
            raise allowed("norm.kind", kind, ", ".join(NORM_KINDS))
        self.kind, self.num_groups = kind, int(num_groups)

    @property
    def layers_need_bias(self) -> bool:
        """A conv/linear bias is redundant before a layer that subtracts a mean."""
        return self.kind == "none"

    def conv(self, channels: int) -> nn.Module:
        if self.kind == "batch":
            return nn.BatchNorm2d(channels)
        if self.kind == "layer":
            return nn.GroupNorm(1, channels)
        if self.kind == "group":
            if channels % self.num_groups:
                raise allowed("norm.num_groups", self.num_groups, f"must divide every layer width; {channels} is not a multiple")
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
            if features % self.num_groups:
                raise allowed("norm.num_groups", self.num_groups, f"must divide every layer width; {features} is not a multiple")
            return nn.GroupNorm(self.num_groups, features)
        return nn.Identity()
