"""Single images from files or memory, brought to a run's input size and channels.

The same conversion as dataset=imagefolder's (data/imagefolder.py): 8 bits per channel,
transparency on white, grey or RGB, then center_crop or stretch to the square size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainkit.errors import UserError


def read_image_file(path: Path, size: int, channels: int, resize: str = "center_crop") -> np.ndarray:
    """uint8 (size, size, channels) from an image file, or one UserError naming the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise UserError(f"{path}: no such image file")
    if path.is_dir():
        raise UserError(f"{path}: a folder, not an image file")
    try:
        with Image.open(path) as im:
            return to_run_array(im, size, channels, resize, path)
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image (Pillow cannot read it; png, jpeg, bmp, gif, tiff, webp, ppm/pgm can be)") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied: this user cannot read it") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read this image ({e})") from None


def to_run_array(image, size: int, channels: int, resize: str = "center_crop", path: Path | None = None) -> np.ndarray:
    """A PIL image or a uint8 array (H,W) / (H,W,C) as uint8 (size, size, channels)."""
    from PIL import Image

    from trainkit.data.imagefolder import eight_bit, to_square

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise UserError(f"an image array must be uint8 H x W or H x W x C; got {image.dtype} {image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    converted = to_square(eight_bit(image, path or Path("<image>")).convert("RGB" if channels == 3 else "L"), size, resize)
    return np.asarray(converted, dtype=np.uint8).reshape(size, size, channels)
