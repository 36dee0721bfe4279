"""Datasets as uint8 images (H, W, C) with integer labels, split into train, val and test."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from trainkit.errors import UserError, allowed
from trainkit.data.sources import ArraySource, DataSpec, Splits
from trainkit.data.split import hold_out
from trainkit.data.stats import cached_channel_stats, channel_stats, stats_key


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


_IDX_FILES = "the unpacked idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"

# Where torchvision looks under data_dir, and what it wants to find there.
EXPECTED_FILES = {
    "mnist": ("MNIST/raw", _IDX_FILES),
    "fashion_mnist": ("FashionMNIST/raw", _IDX_FILES),
    "kmnist": ("KMNIST/raw", _IDX_FILES),
    "cifar10": ("cifar-10-batches-py", "data_batch_1..data_batch_5, test_batch and batches.meta (unpack cifar-10-python.tar.gz)"),
    "cifar100": ("cifar-100-python", "train, test and meta (unpack cifar-100-python.tar.gz)"),
    "svhn": ("", "train_32x32.mat and test_32x32.mat"),
    "stl10": ("stl10_binary", "train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin (unpack stl10_binary.tar.gz)"),
}

# The files torchvision reads for each training set (under data_dir): a mean/std computed from
# them is cached by their names, sizes and modification times.
TRAIN_FILES = {
    "mnist": ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte"),
    "fashion_mnist": ("FashionMNIST/raw/train-images-idx3-ubyte", "FashionMNIST/raw/train-labels-idx1-ubyte"),
    "kmnist": ("KMNIST/raw/train-images-idx3-ubyte", "KMNIST/raw/train-labels-idx1-ubyte"),
    "cifar10": tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    "cifar100": ("cifar-100-python/train",),
    "svhn": ("train_32x32.mat",),
    "stl10": ("stl10_binary/train_X.bin", "stl10_binary/train_y.bin"),
}


IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")  # torchvision checks only that their files exist, not their md5
# Every file torchvision needs under data_dir, the test split's and those its integrity checks want included.
NEEDED_FILES = {
    **{name: tuple(f"{EXPECTED_FILES[name][0]}/{split}-{kind}" for split in ("train", "t10k")
                   for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")) for name in IDX_DATASETS},
    "cifar10": (*TRAIN_FILES["cifar10"], "cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
    "cifar100": (*TRAIN_FILES["cifar100"], "cifar-100-python/test", "cifar-100-python/meta"),
    "svhn": (*TRAIN_FILES["svhn"], "test_32x32.mat"),
    "stl10": (*TRAIN_FILES["stl10"], "stl10_binary/unlabeled_X.bin", "stl10_binary/test_X.bin", "stl10_binary/test_y.bin"),
}
# What torchvision's readers raise on a cut or damaged file (MNIST's parser asserts; CIFAR's unpickles).
READ_ERRORS = (RuntimeError, OSError, ValueError, TypeError, AssertionError, EOFError, pickle.UnpicklingError)


def load_torchvision(name: str, root: str, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder, files = EXPECTED_FILES[name]
    present = False
    try:
        refuse_file_as_folder(root, folder)
        present = all((Path(root) / f).is_file() for f in NEEDED_FILES[name])
        images, labels = _torchvision_arrays(name, root, download, train)
    except READ_ERRORS as e:
        raise UserError(read_failure(name, root, download, present, e)) from None
    if len(images) != len(labels):
        raise UserError(f"dataset={name}: the {'training' if train else 'test'} files in {Path(root).resolve() / folder} "
                        f"hold {len(images)} images but {len(labels)} labels (truncated or mismatched files); put {files} there")
    return images, labels


def refuse_file_as_folder(root: str, folder: str) -> None:
    """data_dir (or a folder torchvision expects below it) is a file: say so, not 'the download failed'."""
    target = Path(root) / folder
    for path in reversed([target, *target.parents]):
        if path.exists() and not path.is_dir():
            raise allowed("dataset.data_dir", root, f"{path.resolve()} is a file, not a folder"
                          f"{f' (torchvision reads the folder {folder} in it)' if folder else ''}")


def read_failure(name: str, root: str, download: bool, present: bool, error: Exception) -> str:
    """What went wrong, in one line: files missing (and the download failed or was off), or there and broken."""
    folder, files = EXPECTED_FILES[name]
    where = Path(root).resolve() / folder
    cause = one_line_cause(error)
    fix = f"put {files} there, or set dataset.data_dir (or TRAINKIT_DATA_DIR) to the folder that holds {folder or 'them'}"
    if isinstance(error, PermissionError):
        return (f"dataset={name}: permission denied on {Path(error.filename).absolute()}: make it readable (and writable, "
                "to download there), or set dataset.data_dir (or TRAINKIT_DATA_DIR) to another folder")
    if not present:
        how = "the download failed" if download else "dataset.download is false"
        return f"dataset={name}: could not read the files in {where} ({how}: {cause}); {fix}"
    if name in IDX_DATASETS:  # there, so torchvision read them without downloading: one of them is broken
        for relative in NEEDED_FILES[name]:
            problem = idx_problem(Path(root) / relative)
            if problem:
                return (f"dataset={name}: {Path(root).resolve() / relative} is truncated or corrupt ({problem}); "
                        "no download was tried, as the file is there: replace it, or delete it and run with "
                        "dataset.download=true to fetch it again")
    elif isinstance(error, (RuntimeError, OSError)):
        # torchvision compares each file with the md5 of the real release; on a mismatch it downloads again
        tried = f", so it tried to download them again, and that failed: {cause}" if download else ""
        return (f"dataset={name}: the files in {where} are there but fail torchvision's md5 check (truncated, corrupt "
                f"or another release){tried}; {fix}")
    return f"dataset={name}: the files in {where} are there but cannot be read, truncated or corrupt ({cause}); {fix}"


def idx_problem(path: Path) -> str | None:
    """What is wrong with one of MNIST's idx files (a byte array behind a header giving its shape), or None."""
    data = path.read_bytes()
    if not data:
        return "the file is empty"
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] not in (1, 3):
        return f"not an idx file of bytes: its first bytes are {data[:4].hex()}"
    header = 4 + 4 * data[3]
    if len(data) < header:
        return f"{len(data)} bytes, shorter than its header"
    shape = [int.from_bytes(data[i:i + 4], "big") for i in range(4, header, 4)]
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        return f"its header promises {'x'.join(map(str, shape))} values, {expected:,} bytes in all; it has {len(data):,}"
    return None


def one_line_cause(error: Exception) -> str:
    """torchvision's error on one line, keeping the network cause: MNIST's download error puts it
    (`<urlopen error ...>`) on the lines after `Error downloading ...:`, once per mirror."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    causes = [line for line in dict.fromkeys(lines[1:]) if not line.startswith("Tried ")]
    text = lines[0] if not causes else f"{lines[0].rstrip(':')}: {'; '.join(causes)}"
    return text if len(text) <= 300 else text[:297] + "..."


TORCHVISION_DATASETS = tuple(EXPECTED_FILES)


def build_splits(cfg, seed: int) -> Splits:
    """Train/val/test sources for the dataset config; val is held out of train, seeded."""
    name = cfg.name
    if name == "digits":
        digits = ArraySource(*load_digits_arrays())
        split = hold_out(digits.labels, {"test": cfg.test_fraction}, seed)
        full, test = digits.subset(split["train"]), digits.subset(split["test"])
    elif name in TORCHVISION_DATASETS:
        full = ArraySource(*load_torchvision(name, cfg.data_dir, cfg.download, train=True))
        test = ArraySource(*load_torchvision(name, cfg.data_dir, cfg.download, train=False))
    elif name == "imagefolder":
        from trainkit.data.imagefolder import load_imagefolder

        return load_imagefolder(cfg, seed)
    else:
        raise allowed("dataset.name", name, f"one of digits, imagefolder, {', '.join(TORCHVISION_DATASETS)}")
    split = hold_out(full.labels, {"val": cfg.val_fraction}, seed)
    train = full.subset(split["train"])
    return Splits(train, full.subset(split["val"]), test, spec_from_config(cfg, full, train, test))


def shuffle_train_labels(splits: Splits, seed: int) -> Splits:
    """dataset.shuffle_labels: the training labels permuted at random (Zhang et al. 2017, "Understanding
    deep learning requires rethinking generalization"): a network can still memorise them, so the
    overfit check passes, while validation and test, left with their true labels, fall to chance.
    A permutation keeps each class's count, so only the pairing of image and label is lost."""
    labels = np.random.default_rng(seed).permutation(splits.train.labels)
    return Splits(ArraySource(splits.train.images, labels), splits.val, splits.test, splits.spec)


def spec_from_config(cfg, full: ArraySource, train: ArraySource, test: ArraySource) -> DataSpec:
    """The config's description of the data, checked against the images.

    mean/std null: computed over the whole training set (`full`, before the validation split), as
    the published values are, and cached when the config has a cache_dir."""
    n, h, w, c = train.images.shape
    if (h, w, c) != (int(cfg.image_size), int(cfg.image_size), int(cfg.in_channels)):
        raise UserError(
            f"dataset={cfg.name}: the images are {h}x{w}x{c} but the config says "
            f"image_size={cfg.image_size}, in_channels={cfg.in_channels}"
        )
    if cfg.mean is None or cfg.std is None:
        mean, std = computed_stats(cfg, full.images)
    else:
        mean, std = [float(m) for m in cfg.mean], [float(s) for s in cfg.std]
    if len(mean) != c or len(std) != c:
        raise UserError(f"dataset.mean and dataset.std need {c} value(s), one per channel; got {len(mean)} and {len(std)}")
    highest = int(max(full.labels.max(), test.labels.max()))
    if highest >= int(cfg.num_classes):  # labels index the classifier's outputs and class_names
        raise allowed("dataset.num_classes", cfg.num_classes, f"the {cfg.name} labels run from 0 to {highest}, "
                      f"so it needs at least {highest + 1} classes")
    class_names = [str(name) for name in cfg.class_names]
    if len(class_names) != int(cfg.num_classes):
        raise UserError(f"dataset.class_names has {len(class_names)} names but dataset.num_classes={cfg.num_classes}: "
                        "give one name per class")
    return DataSpec(in_channels=c, image_size=h, num_classes=int(cfg.num_classes), class_names=class_names, mean=mean, std=std)


def computed_stats(cfg, images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of a training set, cached by its files when it has them (not digits)."""
    data_dir = Path(str(cfg.data_dir))
    files = [data_dir / f for f in TRAIN_FILES.get(cfg.name, ())]
    if not files or not all(f.is_file() for f in files):
        return channel_stats(images)
    identity = f"{cfg.name}|{data_dir.resolve()}|{'x'.join(map(str, images.shape))}"
    record = {"dataset": cfg.name, "data_dir": str(data_dir.resolve()), "images": len(images)}
    return cached_channel_stats(images, cfg.get("cache_dir"), f"{cfg.name}_stats", stats_key(identity, files, data_dir), record)
