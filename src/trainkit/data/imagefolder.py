"""`dataset=imagefolder`: a folder of images, one sub-folder per class, loaded into memory.

Two layouts:
  <root>/train/<class>/...  (+ optional <root>/val/<class>/..., <root>/test/<class>/...)
  <root>/<class>/...        (val and test held out by val_fraction / test_fraction)
Class names come from the folder names; mean and std from the training images, cached.
Images that are not image_size square are center-cropped (resize: center_crop, the default,
as torchvision's Resize + CenterCrop evaluation transform) or stretched (resize: stretch).
Wide pixels (16/32-bit, float) are scaled, not clipped, and transparency is composited on white.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from omegaconf import MissingMandatoryValue

from trainkit.data.sources import ArraySource, DataSpec, Splits
from trainkit.data.split import hold_out
from trainkit.data.stats import cached_channel_stats, stats_key
from trainkit.config.rules import require, rule_of
from trainkit.config.schema import ImageFolderConfig
from trainkit.errors import UserError
from trainkit.memory import refuse_beyond_memory

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "val", "test")


def list_class_folder(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files (searched recursively)} for each sub-folder of `folder`.

    A folder that cannot be read raises PermissionError (os.walk would skip it silently)."""
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = []
        for dirpath, dirnames, filenames in os.walk(sub, followlinks=True, onerror=_raise):
            dirnames.sort()
            files += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
        classes[sub.name] = files
    return classes


def _raise(error: OSError) -> None:
    raise error


def unreadable(error: PermissionError) -> UserError:
    """A permission problem, named as one: the folder or file this user cannot read."""
    path = Path(error.filename).absolute()
    while path.parent != path and not os.access(path.parent, os.R_OK | os.X_OK):
        path = path.parent  # a folder that cannot be entered fails everything below it: name the folder
    return UserError(f"dataset.root: permission denied: this user cannot read {path}; make it readable "
                     f"(e.g. chmod -R a+rX {path})")


def _root(cfg) -> Path:
    try:
        root = cfg.root
    except MissingMandatoryValue:
        root = None
    if not root:
        raise UserError("dataset=imagefolder needs dataset.root: a folder with train/<class>/ sub-folders "
                        "(and optionally val/ and test/), or with one sub-folder of images per class")
    path = Path(str(root)).expanduser()
    try:
        is_folder = path.is_dir()
    except PermissionError as e:  # a parent folder this user cannot enter
        raise unreadable(e) from None
    if not is_folder:
        raise UserError(f"dataset.root={str(root)!r}: {path.resolve()} is not a folder; put one sub-folder of images "
                        "per class there (or train/<class>/, val/<class>/, test/<class>/)")
    return path


def _class_order(cfg, found: dict[str, list[Path]], where: Path) -> list[str]:
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise UserError(f"dataset.root: class folder(s) {', '.join(empty[:5])} in {where} hold no images "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    if not found:
        raise UserError(f"dataset.root: {where} has no class sub-folders; put the images of each class in "
                        f"{where}/<class name>/")
    if len(found) < 2:
        raise UserError(f"dataset.root: {where} has {len(found)} class folder ({', '.join(found)}); a classifier needs "
                        f"at least 2 classes: put the images of each class in its own {where}/<class name>/")
    names = sorted(found)
    if cfg.get("class_names"):
        given = [str(c) for c in cfg.class_names]
        if sorted(given) != names:
            raise UserError(f"dataset.class_names={given} do not match the class folders in {where}: {names}")
        names = given  # the user's order sets the label numbers
    if cfg.get("num_classes") is not None and int(cfg.num_classes) != len(names):
        raise UserError(f"dataset.num_classes={cfg.num_classes} but {where} has {len(names)} class folders; "
                        "leave num_classes null to take it from the folders")
    return names


def _files_and_labels(found: dict[str, list[Path]], names: list[str], where: Path) -> tuple[list[Path], np.ndarray]:
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise UserError(f"{where} has class folder(s) {unknown} that the training folder does not have")
    files, labels = [], []
    for label, name in enumerate(names):
        files += found.get(name, [])
        labels += [label] * len(found.get(name, []))
    return files, np.asarray(labels, dtype=np.int64)


def read_image(path: Path, size: int, channels: int, resize: str) -> np.ndarray:
    """One image as uint8 (size, size, channels): RGB or grey, brought to size x size by `resize`."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = to_square(eight_bit(im, path).convert("RGB" if channels == 3 else "L"), size, resize)
            array = np.asarray(im, dtype=np.uint8)
    except PermissionError as e:
        raise unreadable(e) from None
    except (OSError, ValueError) as e:
        raise UserError(f"dataset.root: cannot read image {path}: {e}") from None
    return array.reshape(size, size, channels)


TRANSPARENT_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
BACKGROUND = (255, 255, 255, 255)  # transparent pixels show white, as on a page or in an image viewer


def eight_bit(im, path: Path):
    """`im` with 8 bits per channel and no transparency, ready for PIL's convert to RGB or L.

    PIL's own convert clips wider pixels at 255 (a 16-bit grey PNG turns solid white), so:
    integer pixels (16- or 32-bit) are scaled by their bit depth (65535 -> 255 for 16 bits),
    float pixels are read as brightness in [0, 1], and transparency is composited on white."""
    from PIL import Image

    if im.mode == "F" or im.mode.startswith("I"):
        return Image.fromarray(wide_grey_to_8bit(im, path))
    if im.mode in TRANSPARENT_MODES or "transparency" in im.info:
        return Image.alpha_composite(Image.new("RGBA", im.size, BACKGROUND), im.convert("RGBA"))
    return im


def wide_grey_to_8bit(im, path: Path) -> np.ndarray:
    """The pixels of a grey integer (I, I;16...) or float (F) image as uint8 0..255."""
    pixels = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        if not np.isfinite(pixels).all():
            raise UserError(f"dataset.root: cannot read image {path}: its float pixels include NaN or infinity")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 1:
            raise UserError(f"dataset.root: cannot read image {path}: its float pixels run from {low:g} to {high:g}, "
                            "and float images are read as brightness in [0, 1]; rescale it, or save it as 8 or 16 bit")
        top = 1.0
    else:
        bits, signed = integer_depth(im)
        top = 2.0 ** (bits - signed) - 1  # negative values of a signed image show black
    return np.round(np.clip(pixels / top, 0.0, 1.0) * 255.0).astype(np.uint8)


def integer_depth(im) -> tuple[int, bool]:
    """(bits per pixel, signed) as stored in the file: Pillow's mode I holds 16- or 32-bit data."""
    if im.mode.startswith("I;16"):
        return 16, im.mode.endswith("S")
    tags = getattr(im, "tag_v2", None)  # TIFF: BitsPerSample (258) and SampleFormat (339, 2 = signed)
    if tags is not None and 258 in tags:
        bits, sample_format = (v[0] if isinstance(v, tuple) else v for v in (tags[258], tags.get(339, 1)))  # per channel
        return int(bits), sample_format == 2
    return 16, False  # PGM (its maxval scaled to 16 bits by Pillow) and older Pillows' 16-bit PNG


def to_square(im, size: int, resize: str):
    """center_crop: the shorter side to `size` (antialiased bilinear), then the central size x size,
    as torchvision's Resize(size) + CenterCrop(size) does for evaluation, so shapes are not
    distorted. stretch: straight to size x size, the aspect ratio lost but nothing cut off."""
    from torchvision.transforms import functional as TF

    if im.size == (size, size):
        return im
    if resize == "stretch":
        return TF.resize(im, [size, size])
    return TF.center_crop(TF.resize(im, size), [size, size])


def read_images(files: list[Path], size: int, channels: int, resize: str) -> np.ndarray:
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    # PIL releases the GIL while decoding, so threads overlap the file reads and decodes.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(lambda f: read_image(f, size, channels, resize), files, chunksize=64)):
            out[i] = image
    return out


def training_stats(cfg, root: Path, files: list[Path], images: np.ndarray, resize: str) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training images, cached under cache_dir by a hash of the files
    and of how they were read (size, channels, resize)."""
    size, channels = images.shape[1], images.shape[3]
    key = stats_key(f"{root.resolve()}|{size}|{channels}|{resize}", files, root)
    record = {"root": str(root.resolve()), "images": len(files), "image_size": size, "channels": channels, "resize": resize}
    return cached_channel_stats(images, cfg.get("cache_dir"), "imagefolder_stats", key, record)


def split_files(cfg, root: Path, seed: int) -> tuple[dict[str, tuple[list[Path], np.ndarray]], list[str]]:
    """({split: (files, labels)} for train, val and test, class names in label order)."""
    split_root = root / "train"
    if split_root.is_dir():
        found = {split: list_class_folder(root / split) for split in SPLIT_FOLDERS if (root / split).is_dir()}
        names = _class_order(cfg, found["train"], split_root)
        parts = {split: _files_and_labels(found[split], names, root / split) for split in found}
        files, labels = parts["train"]  # test (when absent), then val (when absent), from train/
        missing = {split: cfg[f"{split}_fraction"] for split in ("test", "val") if split not in parts}
    else:
        found = list_class_folder(root)
        names = _class_order(cfg, found, root)
        files, labels = _files_and_labels(found, names, root)
        parts, missing = {}, {"test": cfg.test_fraction, "val": cfg.val_fraction}
    held = hold_out(labels, missing, seed)
    return {**parts, **{split: ([files[i] for i in idx], labels[idx]) for split, idx in held.items()}}, names


def load_imagefolder(cfg, seed: int) -> Splits:
    root = _root(cfg)
    size = int(cfg.image_size)
    channels = require(rule_of(ImageFolderConfig, "in_channels"), "dataset.in_channels", cfg.in_channels)
    resize = require(rule_of(ImageFolderConfig, "resize"), "dataset.resize", cfg.get("resize", "center_crop"))
    try:
        parts, names = split_files(cfg, root, seed)
    except PermissionError as e:
        raise unreadable(e) from None
    count = sum(len(files) for files, _ in parts.values())
    refuse_beyond_memory("dataset.image_size", size, count * size * size * channels,
                         f"the {count} images at {size}x{size}x{channels} (uint8)")
    sources = {split: ArraySource(read_images(f, size, channels, resize), lab) for split, (f, lab) in parts.items()}
    if cfg.get("mean") is not None and cfg.get("std") is not None:
        mean, std = [float(m) for m in cfg.mean], [float(s) for s in cfg.std]
    else:
        mean, std = training_stats(cfg, root, parts["train"][0], sources["train"].images, resize)
    spec = DataSpec(in_channels=channels, image_size=size, num_classes=len(names), class_names=names, mean=mean, std=std)
    return Splits(sources["train"], sources["val"], sources["test"], spec)
