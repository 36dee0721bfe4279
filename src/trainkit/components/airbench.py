"""airbench94's network (Jordan 2024, github.com/KellerJordan/cifar10-airbench, MIT licence):
a frozen patch-whitening conv, three conv groups, a global max-pool and a scaled linear head.

Re-implemented in trainkit's style (not copied): layer sizes, the whitening initialisation and
the identity (dirac) start of each conv follow `legacy/airbench94.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from trainkit.errors import allowed
from trainkit.components.normalization import Normalization


class ConvGroup(nn.Module):
    """conv 3x3 -> 2x2 max-pool -> norm -> activation -> conv 3x3 -> norm -> activation."""

    def __init__(self, cin: int, cout: int, norm: Normalization, activation):
        super().__init__()
        bias = norm.layers_need_bias
        self.conv1 = norm.wrap(nn.Conv2d(cin, cout, 3, padding=1, bias=bias))
        self.pool = nn.MaxPool2d(2)
        self.norm1 = norm.conv(cout)
        self.act1 = activation()
        self.conv2 = norm.wrap(nn.Conv2d(cout, cout, 3, padding=1, bias=bias))
        self.norm2 = norm.conv(cout)
        self.act2 = activation()
        with torch.no_grad():  # start each conv as an identity on its first inputs, as airbench does
            for conv, c_in in ((self.conv1, cin), (self.conv2, cout)):
                if not hasattr(conv, "parametrizations"):
                    nn.init.dirac_(conv.weight[:c_in])

    @property
    def whiten(self) -> nn.Conv2d | None:
        return self.stem[0] if self.stem_kind == "whiten" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """stem -> ConvGroup per width -> global max-pool -> linear (no bias) x logit_scale.

    stem=whiten (airbench): a k x k conv without padding whose 2 * C * k^2 filters are set from the
    training images (init_from_data) and frozen, then the activation; widths [64, 256, 256] and
    kernel 2 give airbench94's 1.97 M parameters. stem=conv: a trained 3x3 conv (stem_width filters)
    -> norm -> activation at full resolution, for small grey images where there is little to whiten."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: Normalization, activation,
                 dropout: float = 0.0, widths=(64, 256, 256), stem: str = "whiten", whiten_kernel: int = 2,
                 stem_width: int = 16, logit_scale: float = 1 / 9, whiten_samples: int = 5000,
                 whiten_epsilon: float = 5e-4):
        super().__init__()
        widths = list(widths)
        if stem == "whiten":
            if whiten_kernel > image_size:
                raise allowed("model.whiten_kernel", whiten_kernel, f"a patch size up to the {image_size}x{image_size} images' side")
            whiten = nn.Conv2d(in_channels, 2 * in_channels * whiten_kernel**2, whiten_kernel, bias=True)
            whiten.weight.requires_grad_(False)  # set from the data (init_from_data) and kept
            self.stem = nn.Sequential(whiten, activation())
            size, cin = image_size - whiten_kernel + 1, whiten.out_channels
        elif stem == "conv":
            self.stem = nn.Sequential(norm.wrap(nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=norm.layers_need_bias)),
                                      norm.conv(stem_width), activation())
            size, cin = image_size, stem_width
        else:
            raise allowed("model.stem", stem, "whiten (airbench's frozen patch-whitening conv) or conv (a trained 3x3 conv)")
        if size < 2 ** len(widths):
            raise allowed("model.widths", widths, f"at most {size.bit_length() - 1} groups for {image_size}x{image_size} "
                          "images (one 2x2 pool per group)")
        self.stem_kind = stem
        groups = []
        for width in widths:
            groups.append(ConvGroup(cin, width, norm, activation))
            cin = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(cin, num_classes, bias=False)
        self.logit_scale = float(logit_scale)
        self.whiten_samples, self.whiten_epsilon = int(whiten_samples), float(whiten_epsilon)

    @property
    def whiten(self) -> nn.Conv2d | None:
        return self.stem[0] if self.stem_kind == "whiten" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem(x))
        return self.classifier(self.dropout(self.pool(x))) * self.logit_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """The whitening filters from the training images (model input, N x C x H x W): the
        eigenvectors of the covariance of all k x k patches, each scaled by 1 / sqrt(eigenvalue +
        eps), and their negatives (so the activation after it keeps both signs). stem=conv: nothing."""
        if self.whiten is None:
            return
        images = images[: self.whiten_samples].float()
        c, (kh, kw) = images.shape[1], self.whiten.kernel_size
        patches = images.unfold(2, kh, 1).unfold(3, kw, 1)  # n, c, h', w', kh, kw
        patches = patches.transpose(1, 3).reshape(-1, c * kh * kw)  # rows in the conv's (c, kh, kw) order
        covariance = (patches.T @ patches / len(patches)).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + self.whiten_epsilon)[:, None]).reshape(-1, c, kh, kw)
        weight = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(weight)
