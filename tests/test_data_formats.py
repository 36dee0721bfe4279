"""The CIFAR-10, CIFAR-100, SVHN and STL-10 readers on tiny files written in each dataset's own
on-disk format (the real archives are not on these machines): torchvision's readers run for real
through trainkit's dataset builder, and the pixels, channels, labels and class names must survive."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from trainkit.datasets import build_splits, channel_stats
from trainkit.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def config(*overrides: str):
    with initialize_config_module("trainkit.configs", version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks every file against the md5 of the real archive's copy, which a hand-made
    file cannot match. Only that comparison goes: check_integrity still requires the file to exist,
    and everything else (the format readers, trainkit's builder) runs unchanged."""
    import torchvision.datasets.cifar
    import torchvision.datasets.stl10
    import torchvision.datasets.svhn
    from torchvision.datasets.utils import check_integrity

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: check_integrity(fpath, None))


def labelled_images(n: int, size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 (size, size, 3) images whose channels and orientation all differ, labels cycling classes."""
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[:, 0, :, 0] = 255  # top row red, left column blue: a swapped axis or channel shows
    images[:, :, 0, 2] = 0
    return images, np.arange(n) % classes


def write_pickle(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """CIFAR's row layout: 1024 red, then 1024 green, then 1024 blue values, each plane row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def test_cifar10_python_batches(tmp_path, no_md5):
    folder = tmp_path / "cifar-10-batches-py"
    train_images, train_labels = [], []
    for i in range(1, 6):
        images, labels = labelled_images(10, 32, 10, seed=i)
        write_pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": labels.tolist(),
                                                   "data": cifar_rows(images), "filenames": [f"{k}.png" for k in range(10)]})
        train_images.append(images), train_labels.append(labels)
    test_images, test_labels = labelled_images(10, 32, 10, seed=9)
    write_pickle(folder / "test_batch", {"labels": test_labels[::-1].tolist(), "data": cifar_rows(test_images)})
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": 10, "num_vis": 3072})

    cfg = config("dataset=cifar10", f"dataset.data_dir={tmp_path}", "dataset.download=false", "dataset.val_fraction=0.2")
    splits = build_splits(cfg.dataset, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 10)
    assert splits.train.images.shape[1:] == (32, 32, 3) and splits.train.images.dtype == np.uint8
    assert np.array_equal(splits.test.images, test_images)  # pixel for pixel: rows, columns and channels in place
    assert splits.test.labels.tolist() == test_labels[::-1].tolist()
    every_train = np.concatenate([splits.train.images, splits.val.images])
    assert sorted(map(bytes, every_train)) == sorted(map(bytes, np.concatenate(train_images)))
    assert splits.spec.class_names == CIFAR10_CLASSES and splits.spec.num_classes == 10
    assert splits.spec.mean == [0.4914, 0.4822, 0.4465]  # the config's published values, not recomputed


def test_cifar100_reads_the_fine_labels(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    names = list(config("dataset=cifar100").dataset.class_names)
    train, fine = labelled_images(200, 32, 100, seed=1)
    test, test_fine = labelled_images(100, 32, 100, seed=2)
    write_pickle(folder / "train", {"data": cifar_rows(train), "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()})
    write_pickle(folder / "test", {"data": cifar_rows(test), "fine_labels": test_fine.tolist(), "coarse_labels": (test_fine // 5).tolist()})
    write_pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"super{i}" for i in range(20)]})

    cfg = config("dataset=cifar100", f"dataset.data_dir={tmp_path}", "dataset.download=false", "dataset.val_fraction=0.5")
    splits = build_splits(cfg.dataset, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 100, 100)
    assert np.array_equal(splits.test.images, test) and splits.test.labels.tolist() == test_fine.tolist()  # fine, not coarse
    assert splits.spec.num_classes == 100 and splits.spec.class_names[:3] == ["apple", "aquarium_fish", "baby"]
    assert names == sorted(names)  # CIFAR-100's meta lists the fine classes alphabetically: label i is names[i]


def test_svhn_mat_files_and_label_10_is_digit_0(tmp_path, no_md5):
    from scipy.io import savemat

    sets = {}
    for split, n, seed in (("train", 40, 1), ("test", 20, 2)):
        images, digits = labelled_images(n, 32, 10, seed=seed)
        # SVHN's .mat: X is (32, 32, 3, N), y is (N, 1) with the digit 0 stored as label 10.
        savemat(tmp_path / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": np.where(digits == 0, 10, digits)[:, None]})
        sets[split] = images, digits
    cfg = config("dataset=svhn", f"dataset.data_dir={tmp_path}", "dataset.download=false", "dataset.val_fraction=0.25")
    splits = build_splits(cfg.dataset, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 20)
    images, digits = sets["test"]
    assert np.array_equal(splits.test.images, images)
    assert splits.test.labels.tolist() == digits.tolist()  # 10 in the file is digit 0
    assert set(splits.train.labels.tolist()) == set(range(10))
    assert splits.spec.class_names == [str(d) for d in range(10)]


def write_stl10(root, train: tuple, test: tuple) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, (images, labels) in (("train", train), ("test", test)):
        # STL-10's .bin: each image as 3 planes stored column-major; labels 1..10 as bytes.
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 3, 2, 1).tobytes())
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(b"")  # torchvision wants it present; trainkit never reads it
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")


def test_stl10_binary_files_and_cached_statistics(tmp_path, no_md5):
    import torchvision.datasets as tvd

    train, test = labelled_images(20, 96, 10, seed=1), labelled_images(10, 96, 10, seed=2)
    write_stl10(tmp_path, train, test)
    cache = tmp_path / "cache"
    overrides = ["dataset=stl10", f"dataset.data_dir={tmp_path}", "dataset.download=false", "dataset.val_fraction=0.5",
                 f"dataset.cache_dir={cache}"]
    splits = build_splits(config(*overrides).dataset, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 10, 10)
    assert np.array_equal(splits.test.images, test[0]) and splits.test.labels.tolist() == test[1].tolist()  # 1..10 -> 0..9
    assert splits.spec.image_size == 96 and splits.spec.in_channels == 3
    assert splits.spec.class_names == STL10_CLASSES == tvd.STL10(str(tmp_path), split="test").classes
    # mean/std are null in the config: computed from the whole training file and cached by its files.
    assert (splits.spec.mean, splits.spec.std) == channel_stats(train[0])
    [entry] = (cache / "stl10_stats").glob("*.json")
    assert json.loads(entry.read_text())["mean"] == splits.spec.mean
    entry.write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}))
    assert build_splits(config(*overrides).dataset, 0).spec.mean == [0.1, 0.2, 0.3]  # read back, not recomputed
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes((train[1][::-1] + 1).astype(np.uint8).tobytes())
    assert build_splits(config(*overrides).dataset, 0).spec.mean == splits.spec.mean  # a changed file: a new entry
    assert len(list((cache / "stl10_stats").glob("*.json"))) == 2


def test_cifar10_missing_files_names_the_meta_file(tmp_path):
    cfg = config("dataset=cifar10", f"dataset.data_dir={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError) as e:
        build_splits(cfg.dataset, 0)
    assert f"could not read the files in {tmp_path}/cifar-10-batches-py" in str(e.value)
    assert "put data_batch_1..data_batch_5, test_batch and batches.meta (unpack cifar-10-python.tar.gz) there" in str(e.value)


@pytest.mark.parametrize("dataset, attribute, value", [
    ("mnist", "mirrors", ["http://127.0.0.1:9/"]),  # several mirrors: the cause is on later lines
    ("cifar10", "url", "http://127.0.0.1:9/cifar-10-python.tar.gz"),
])
def test_a_failed_download_keeps_the_network_cause(tmp_path, monkeypatch, dataset, attribute, value):
    """A real download attempt, to a local port where nothing listens (nothing leaves the machine)."""
    import torchvision.datasets as tvd

    monkeypatch.setattr({"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[dataset], attribute, value)
    cfg = config(f"dataset={dataset}", f"dataset.data_dir={tmp_path}", "dataset.download=true")
    with pytest.raises(UserError) as e:
        build_splits(cfg.dataset, 0)
    message = str(e.value)
    assert "\n" not in message
    assert "(the download failed: " in message
    assert "<urlopen error [Errno 111] Connection refused>" in message  # the network's own words
