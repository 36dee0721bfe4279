"""Datasets as uint8 images (H, W, C) with integer labels, split into train, val and test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from trainkit.errors import UserError, allowed


@dataclass
class DataSpec:
    """What the model and the pipeline need to know about a dataset."""

    in_channels: int
    image_size: int
    num_classes: int
    class_names: list[str]
    mean: list[float]
    std: list[float]


class ArraySource:
    """Images held in memory as one uint8 array of shape (N, H, W, C)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if images.ndim == 3:
            images = images[..., None]
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, indices) -> ArraySource:
        return ArraySource(self.images[indices], self.labels[indices])


@dataclass
class Splits:
    train: ArraySource
    val: ArraySource
    test: ArraySource
    spec: DataSpec


def stratified_split(labels: np.ndarray, fraction: float, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out), the held-out part `fraction` of each class, seeded."""
    if not 0.0 < float(fraction) < 1.0:
        raise allowed(key, fraction, "a fraction strictly between 0 and 1")
    idx = np.arange(len(labels))
    kept, held = train_test_split(idx, test_size=float(fraction), random_state=seed, stratify=labels)
    return np.sort(kept), np.sort(held)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The bundled pixels are 0..16; scale to the 0..255 range every other dataset uses.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def _torchvision_arrays(name: str, root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    if name in ("mnist", "fashion_mnist", "kmnist"):
        cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "kmnist": tvd.KMNIST}[name]
        ds = cls(root=root, train=train, download=download)
        return ds.data.numpy(), ds.targets.numpy()
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = cls(root=root, train=train, download=download)
        return ds.data, np.asarray(ds.targets)
    if name in ("svhn", "stl10"):
        cls = tvd.SVHN if name == "svhn" else tvd.STL10
        ds = cls(root=root, split="train" if train else "test", download=download)
        return ds.data.transpose(0, 2, 3, 1), np.asarray(ds.labels)
    raise AssertionError(name)


EXPECTED_FILES = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte(.gz) and the other three MNIST idx files",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte(.gz) and the other three Fashion-MNIST idx files",
    "kmnist": "KMNIST/raw/train-images-idx3-ubyte(.gz) and the other three KMNIST idx files",
    "cifar10": "cifar-10-batches-py/ (unpacked cifar-10-python.tar.gz)",
    "cifar100": "cifar-100-python/ (unpacked cifar-100-python.tar.gz)",
    "svhn": "train_32x32.mat and test_32x32.mat",
    "stl10": "stl10_binary/ (unpacked stl10_binary.tar.gz)",
}


def load_torchvision(name: str, root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _torchvision_arrays(name, root, download, train)
    except (RuntimeError, OSError) as e:
        where = Path(root).resolve()
        how = "the download failed" if download else "download is false"
        raise UserError(
            f"dataset={name}: files not found under {where} and {how} ({str(e).splitlines()[0][:120]}); "
            f"put {EXPECTED_FILES[name]} there, or point dataset.data_dir (or TRAINKIT_DATA_DIR) at the folder that holds them"
        ) from None


TORCHVISION_DATASETS = tuple(EXPECTED_FILES)


def build_splits(cfg, seed: int) -> Splits:
    """Train/val/test sources for the dataset config; val is held out of train, seeded."""
    name = cfg.name
    if name == "digits":
        images, labels = load_digits_arrays()
        rest, test_idx = stratified_split(labels, cfg.test_fraction, seed, "dataset.test_fraction")
        full, test = ArraySource(images[rest], labels[rest]), ArraySource(images[test_idx], labels[test_idx])
    elif name in TORCHVISION_DATASETS:
        full = ArraySource(*load_torchvision(name, cfg.data_dir, cfg.download, train=True))
        test = ArraySource(*load_torchvision(name, cfg.data_dir, cfg.download, train=False))
    elif name == "imagefolder":
        from trainkit.imagefolder import load_imagefolder

        return load_imagefolder(cfg, seed)
    else:
        raise allowed("dataset.name", name, f"one of digits, imagefolder, {', '.join(TORCHVISION_DATASETS)}")
    train_idx, val_idx = stratified_split(full.labels, cfg.val_fraction, seed, "dataset.val_fraction")
    spec = spec_from_config(cfg, full)
    return Splits(full.subset(train_idx), full.subset(val_idx), test, spec)


def spec_from_config(cfg, train: ArraySource) -> DataSpec:
    spec = DataSpec(
        in_channels=int(cfg.in_channels),
        image_size=int(cfg.image_size),
        num_classes=int(cfg.num_classes),
        class_names=[str(c) for c in cfg.class_names],
        mean=[float(m) for m in cfg.mean],
        std=[float(s) for s in cfg.std],
    )
    n, h, w, c = train.images.shape
    if (h, w, c) != (spec.image_size, spec.image_size, spec.in_channels):
        raise UserError(
            f"dataset={cfg.name}: the images are {h}x{w}x{c} but the config says "
            f"image_size={spec.image_size}, in_channels={spec.in_channels}"
        )
    return spec
