"""A grid of images with their class names written under each one."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw


def make_grid_with_labels(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], scale: int | None = None) -> torch.Tensor:
    """uint8 NCHW images -> one uint8 CHW RGB image: a square-ish grid, a label under each tile."""
    n, c, h, w = images.shape
    scale = scale or max(1, 64 // max(h, w))  # small images are enlarged (nearest) to be seen
    tile_h, tile_w = h * scale, max(w * scale, 56)
    chars = max(4, tile_w // 6)  # PIL's default font is about 6 pixels per character
    label_h = 12
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = Image.new("RGB", (cols * (tile_w + 2), rows * (tile_h + label_h + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        img = images[i].cpu().numpy().transpose(1, 2, 0)
        if c == 1:
            img = np.repeat(img, 3, axis=2)
        tile = Image.fromarray(img.astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
        x, y = (i % cols) * (tile_w + 2), (i // cols) * (tile_h + label_h + 2)
        canvas.paste(tile, (x + (tile_w - w * scale) // 2, y))
        draw.text((x + 1, y + tile_h), str(class_names[int(labels[i])])[:chars], fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).transpose(2, 0, 1).copy())
