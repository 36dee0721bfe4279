"""Test-time augmentation: a fixed set of views of each test image, their softmax averaged.

The views are made from raw pixels (0..255, before the run's preprocessing), so padding is
black like the training crops' padding and a ZCA run still sees whitened views. The crops
come from the image padded on each side, as CIFAR-style nets are trained (pad 4, random crop);
torchvision's FiveCrop/TenCrop crop inside the image instead, which for a 32x32 net cuts off
what it was trained to see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainkit.errors import UserError, allowed

TTA_CHOICES = ("none", "flip", "five_crop", "ten_crop", "multiscale", "flip_translate")
PADDING_CHOICES = ("constant", "reflect")


class TestTimeAugmentation:
    """`views(images)` -> [(weight, view)] for a float batch N,C,H,W of raw pixels; weights sum to 1."""

    __test__ = False  # not a pytest class

    def __init__(self, kind: str = "none", pad: int | str = "auto", padding: str = "constant",
                 scales: list[float] | tuple[float, ...] = (1.0, 1.25), translate: int = 1):
        if kind not in TTA_CHOICES:
            raise allowed("tta", kind, ", ".join(TTA_CHOICES))
        if not (pad == "auto" or (isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0)):
            raise allowed("tta.pad", pad, "auto (an eighth of the image side, at least 1) or a whole number >= 0")
        if padding not in PADDING_CHOICES:
            raise allowed("tta.padding", padding, ", ".join(PADDING_CHOICES))
        scales = list(scales)
        if not scales or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 1 for s in scales):
            raise allowed("tta.scales", scales, "a non-empty list of numbers >= 1 (1 = the image as it is)")
        if not (isinstance(translate, int) and not isinstance(translate, bool) and translate >= 1):
            raise allowed("tta.translate", translate, "a whole number of pixels >= 1")
        self.kind, self.pad, self.padding, self.scales, self.translate = kind, pad, padding, scales, translate

    def pad_for(self, image_size: int) -> int:
        return max(1, round(image_size / 8)) if self.pad == "auto" else int(self.pad)

    def check_fits(self, image_size: int) -> None:
        """A crop must keep most of the image: refuse a padding or shift too big for `image_size`."""
        limit = image_size // 4
        if self.kind in ("five_crop", "ten_crop", "multiscale"):
            pad = self.pad_for(image_size)
            if pad > limit or (self.padding == "reflect" and pad >= image_size):
                raise UserError(f"tta.pad={self.pad} is too big for {image_size}x{image_size} images: a corner crop "
                                f"would be more than a quarter padding on each side; allowed: 0 to {limit}")
        if self.kind == "flip_translate" and self.translate > limit:
            raise UserError(f"tta.translate={self.translate} is too big for {image_size}x{image_size} images: "
                            f"allowed: 1 to {limit} pixels")

    def views(self, images: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        size = images.shape[-1]
        if self.kind == "none":
            return [(1.0, images)]
        if self.kind == "flip":
            return [(0.5, images), (0.5, images.flip(-1))]
        if self.kind == "flip_translate":
            # airbench's TTA: the image and its mirror (half the weight), and both shifted by
            # `translate` pixels up-left and down-right (a quarter each).
            t = self.translate
            padded = self._pad(images, t, "reflect")
            shifted = [padded[..., :size, :size], padded[..., 2 * t:, 2 * t:]]
            return [(0.25, images), (0.25, images.flip(-1))] + [(0.125, v) for s in shifted for v in (s, s.flip(-1))]
        scales = self.scales if self.kind == "multiscale" else [1.0]
        crops = [c for s in scales for c in self._five_crops(self._resized(images, s), size)]
        if self.kind != "five_crop":
            crops += [c.flip(-1) for c in crops]
        return [(1.0 / len(crops), c) for c in crops]

    def _five_crops(self, images: torch.Tensor, size: int) -> list[torch.Tensor]:
        pad = self.pad_for(size)
        padded = self._pad(images, pad, self.padding)
        far = padded.shape[-1] - size
        middle = far // 2
        corners = [(0, 0), (0, far), (far, 0), (far, far), (middle, middle)]
        return [padded[..., y:y + size, x:x + size] for y, x in corners]

    @staticmethod
    def _resized(images: torch.Tensor, scale: float) -> torch.Tensor:
        if scale == 1:
            return images
        side = round(images.shape[-1] * scale)
        return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)

    @staticmethod
    def _pad(images: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
        return F.pad(images, (pad,) * 4, mode=mode) if pad else images

    def view_count(self, image_size: int) -> int:
        return len(self.views(torch.zeros(1, 1, image_size, image_size)))
