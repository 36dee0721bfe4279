"""The classifiers: sizes come from the dataset, layers from the norm/activation choices.

Every conv and linear layer goes through `norm.wrap` (weight/spectral norm reparametrise it)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trainkit.errors import allowed
from trainkit.components.normalization import Normalization

Activation = Callable[[], nn.Module]


class MLP(nn.Module):
    """Flatten -> [Linear -> norm -> activation -> dropout] per hidden layer -> Linear."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: Normalization,
                 activation: Activation, dropout: float = 0.0, hidden=(256, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            # Dropout(0) is an identity; always present, so the state_dict keys do not depend on p.
            layers += [norm.wrap(nn.Linear(width, h, bias=norm.layers_need_bias)), norm.flat(h), activation(),
                       nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = norm.wrap(nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv_block(cin: int, cout: int, norm: Normalization, activation: Activation, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        norm.wrap(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm.layers_need_bias)),
        norm.conv(cout),
        activation(),
    )


class SmallCNN(nn.Module):
    """Per stage two 3x3 conv blocks and a 2x2 max-pool; global average pool; classifier."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: Normalization,
                 activation: Activation, dropout: float = 0.0, channels=(32, 64)):
        super().__init__()
        if image_size < 2 ** len(channels):
            raise allowed("model.channels", list(channels), f"at most {image_size.bit_length() - 1} stages for {image_size}x{image_size} images (one 2x2 pool per stage)")
        stages, cin = [], in_channels
        for c in channels:
            stages += [conv_block(cin, c, norm, activation), conv_block(c, c, norm, activation), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = norm.wrap(nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Normalization, activation: Activation):
        super().__init__()
        bias = norm.layers_need_bias
        self.conv1 = norm.wrap(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias))
        self.norm1 = norm.conv(cout)
        self.act1 = activation()
        self.conv2 = norm.wrap(nn.Conv2d(cout, cout, 3, padding=1, bias=bias))
        self.norm2 = norm.conv(cout)
        self.act2 = activation()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(norm.wrap(nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)), norm.conv(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): depth 6n+2, stages of width w, 2w, 4w."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: Normalization,
                 activation: Activation, dropout: float = 0.0, depth: int = 20, width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise allowed("model.depth", depth, "6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        self.stem = conv_block(in_channels, width, norm, activation)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 and image_size >= 2 ** stage * 2 else 1
                blocks.append(BasicBlock(cin, cout, stride, norm, activation))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = norm.wrap(nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.blocks(self.stem(x)))))
