"""The CIFAR-10, CIFAR-100, SVHN and STL-10 readers on tiny files written in each dataset's own
on-disk format (the real archives are not on these machines): torchvision's readers run for real
through trainkit's dataset builder, and the pixels, channels, labels and class names must survive."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from conftest import compose_config as config
from trainkit.data.datasets import build_splits
from trainkit.data.stats import channel_stats
from trainkit.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


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


# --- Image files in every PIL mode users meet (imagefolder) ---------------------------------------

def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the grey PIL's convert("L") computes from RGB."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def grey(*values: int) -> list:
    return [(v, v, v) for v in values]


def write_mode(path, mode: str):
    """A 2x2 image in `mode`, saved by PIL in a format that keeps the mode; its pixels as RGB after the
    documented reading (16/32-bit by bit depth, float from [0, 1], transparency over white)."""
    from PIL import Image

    def image(mode, pixels):
        im = Image.new(mode, (2, 2))
        im.putdata(pixels)
        return im

    if mode == "L":
        im, rgb = image("L", [0, 64, 128, 255]), grey(0, 64, 128, 255)
    elif mode == "LA":  # opaque, transparent, half transparent, opaque black
        im, rgb = image("LA", [(100, 255), (100, 0), (100, 128), (0, 255)]), grey(100, 255, 177, 0)
    elif mode == "RGB":
        im, rgb = image("RGB", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]), \
            [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
    elif mode == "RGBA":  # a transparent pixel hides red: it must come out white, not red
        im = image("RGBA", [(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 255, 128), (0, 0, 0, 255)])
        rgb = [(255, 0, 0), (255, 255, 255), (127, 127, 255), (0, 0, 0)]
    elif mode == "P":  # a palette, with entry 2 marked transparent (PNG's tRNS)
        im = image("P", [0, 1, 2, 1])
        im.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0])
        im.info["transparency"] = 2
        rgb = [(10, 20, 30), (200, 100, 50), (255, 255, 255), (200, 100, 50)]
    elif mode == "1":
        im, rgb = image("1", [0, 1, 1, 0]), grey(0, 255, 255, 0)
    elif mode == "I;16":  # 16-bit grey PNG: 65535 is white, 32768 mid grey
        im, rgb = image("I;16", [0, 1000, 32768, 65535]), grey(0, 4, 128, 255)
    elif mode == "I":  # 32-bit signed TIFF: scaled by 2**31 - 1, negatives black
        im, rgb = image("I", [0, -5, 2**30, 2**31 - 1]), grey(0, 0, 128, 255)
    elif mode == "I (16-bit PGM)":  # Pillow reads 16-bit PGM as mode I holding 16-bit values
        im, rgb = image("I;16", [0, 1000, 32768, 65535]), grey(0, 4, 128, 255)
    elif mode == "F":  # 32-bit float TIFF, brightness in [0, 1]
        im, rgb = image("F", [0.0, 0.25, 0.5, 1.0]), grey(0, 64, 128, 255)
    elif mode == "CMYK":
        im = image("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 0, 0)])
        rgb = [(255, 255, 255), (0, 255, 255), (0, 0, 0), (255, 0, 255)]
    suffix = {"I": ".tif", "F": ".tif", "CMYK": ".tif", "I (16-bit PGM)": ".pgm"}.get(mode, ".png")
    path = path.with_suffix(suffix)
    im.save(path, **({"transparency": 2} if mode == "P" else {}))
    with Image.open(path) as written:
        assert written.mode == ("I" if mode == "I (16-bit PGM)" else mode)  # the file really holds that mode
    return path, np.array(rgb, dtype=np.float64).reshape(2, 2, 3)


MODES = ["L", "LA", "RGB", "RGBA", "P", "1", "I;16", "I", "I (16-bit PGM)", "F", "CMYK"]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_is_read_with_its_pixel_values(tmp_path, mode, channels):
    from trainkit.data.imagefolder import read_image

    path, rgb = write_mode(tmp_path / "image", mode)
    pixels = read_image(path, size=2, channels=channels, resize="center_crop")
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 2, channels)
    expected = rgb if channels == 3 else luma(rgb)[..., None]
    assert np.abs(pixels.astype(np.float64) - expected).max() <= 1, (pixels[..., 0], expected[..., 0])  # rounding


def test_a_16_bit_grey_image_folder_is_not_white(tmp_path):
    """The reported case: 16-bit grey PNGs read as solid white (PIL's convert clips at 255)."""
    from PIL import Image

    for name, value in (("dark", 8000), ("light", 60000)):
        for i in range(10):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(tmp_path / name / f"{i}.png")
    for channels in (1, 3):
        cfg = config("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.image_size=8", "dataset.cache_dir=null",
                     f"dataset.in_channels={channels}", "dataset.val_fraction=0.2", "dataset.test_fraction=0.2")
        splits = build_splits(cfg.dataset, 0)
        train = splits.train
        assert set(np.unique(train.images[train.labels == 0])) == {round(8000 * 255 / 65535)}  # 31
        assert set(np.unique(train.images[train.labels == 1])) == {round(60000 * 255 / 65535)}  # 233
        assert splits.spec.mean[0] == pytest.approx((31 + 233) / 2 / 255, abs=1e-3)


@pytest.mark.parametrize("pixels, expected", [
    ([0.0, 0.5, 2.0, 255.0], "its float pixels run from 0 to 255, and float images are read as brightness in [0, 1]; "
                             "rescale it, or save it as 8 or 16 bit"),
    ([0.0, float("nan"), 0.5, 1.0], "its float pixels include NaN or infinity"),
])
def test_a_float_image_outside_0_1_is_refused_not_clipped(tmp_path, pixels, expected):
    from PIL import Image

    from trainkit.data.imagefolder import read_image

    im = Image.new("F", (2, 2))
    im.putdata(pixels)
    im.save(tmp_path / "f.tif")
    with pytest.raises(UserError) as e:
        read_image(tmp_path / "f.tif", size=2, channels=1, resize="center_crop")
    assert str(e.value) == f"dataset.root: cannot read image {tmp_path / 'f.tif'}: {expected}"


# --- Broken files: say what happened, not "the download failed" --------------------------------------

def write_idx(path, array: np.ndarray) -> None:
    """MNIST's idx format: 0x0000, 0x08 (bytes), the number of dimensions, each size big-endian, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, n_train: int = 60, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


NO_DOWNLOAD = "no download was tried, as the file is there: replace it, or delete it and run with dataset.download=true " \
              "to fetch it again"


@pytest.mark.parametrize("download", ["true", "false"])
@pytest.mark.parametrize("damage, problem", [
    ("truncated", "its header promises 60x28x28 values, 47,056 bytes in all; it has 1,000"),
    ("empty", "the file is empty"),
    ("not idx", "not an idx file of bytes: its first bytes are 3c68746d"),
])
def test_a_truncated_or_corrupt_mnist_file_is_named_as_such(tmp_path, damage, problem, download):
    """torchvision checks only that MNIST's unpacked files exist (no md5), so with the files there no
    download is tried, whatever dataset.download says: the file itself is broken."""
    write_mnist(tmp_path)
    broken = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = {"truncated": broken.read_bytes()[:1000], "empty": b"", "not idx": b"<html>captive portal</html>"}[damage]
    broken.write_bytes(data)
    cfg = config("dataset=mnist", f"dataset.data_dir={tmp_path}", f"dataset.download={download}")
    with pytest.raises(UserError) as e:
        build_splits(cfg.dataset, 0)
    assert str(e.value) == f"dataset=mnist: {broken} is truncated or corrupt ({problem}); {NO_DOWNLOAD}"


def test_mnist_images_and_labels_of_different_counts(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.arange(15) % 10)  # a valid file of 15 labels
    with pytest.raises(UserError) as e:
        build_splits(config("dataset=mnist", f"dataset.data_dir={tmp_path}").dataset, 0)
    assert str(e.value).startswith(f"dataset=mnist: the test files in {tmp_path}/MNIST/raw hold 20 images but 15 labels "
                                   "(truncated or mismatched files); put the unpacked idx files")


@pytest.mark.parametrize("download", ["true", "false"])
def test_a_data_dir_that_is_a_file(tmp_path, download):
    (tmp_path / "data").write_text("not a folder")
    for data_dir in (tmp_path / "data", tmp_path / "data" / "below"):
        cfg = config("dataset=mnist", f"dataset.data_dir={data_dir}", f"dataset.download={download}")
        with pytest.raises(UserError) as e:
            build_splits(cfg.dataset, 0)
        assert str(e.value) == (f"dataset.data_dir='{data_dir}' is not allowed: {tmp_path / 'data'} is a file, not a folder "
                                "(torchvision reads the folder MNIST/raw in it)")


def write_cifar10(root) -> None:
    folder = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = labelled_images(10, 32, 10, seed=len(name))
        write_pickle(folder / name, {"labels": labels.tolist(), "data": cifar_rows(images)})
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})


def test_cifar10_files_that_fail_the_md5_check_are_not_called_missing(tmp_path):
    """Files there but not the real release's (torchvision's md5 check fails): with downloads off that
    is what is said; with downloads on, torchvision tries to fetch fresh copies, and when that fails
    the message says both."""
    import torchvision.datasets as tvd

    write_cifar10(tmp_path)
    where = tmp_path / "cifar-10-batches-py"
    fix = ("put data_batch_1..data_batch_5, test_batch and batches.meta (unpack cifar-10-python.tar.gz) there, or set "
           "dataset.data_dir (or TRAINKIT_DATA_DIR) to the folder that holds cifar-10-batches-py")
    with pytest.raises(UserError) as e:
        build_splits(config("dataset=cifar10", f"dataset.data_dir={tmp_path}", "dataset.download=false").dataset, 0)
    assert str(e.value) == (f"dataset=cifar10: the files in {where} are there but fail torchvision's md5 check "
                            f"(truncated, corrupt or another release); {fix}")
    with pytest.MonkeyPatch.context() as patch:  # a real download attempt, to a local port where nothing listens
        patch.setattr(tvd.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
        with pytest.raises(UserError) as e:
            build_splits(config("dataset=cifar10", f"dataset.data_dir={tmp_path}", "dataset.download=true").dataset, 0)
    assert str(e.value).startswith(f"dataset=cifar10: the files in {where} are there but fail torchvision's md5 check "
                                   "(truncated, corrupt or another release), so it tried to download them again, and "
                                   "that failed: <urlopen error [Errno 111] Connection refused>")


def test_a_truncated_cifar_batch_is_named_truncated(tmp_path, no_md5):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(UserError) as e:
        build_splits(config("dataset=cifar10", f"dataset.data_dir={tmp_path}", "dataset.download=true").dataset, 0)
    assert str(e.value).startswith(f"dataset=cifar10: the files in {tmp_path}/cifar-10-batches-py are there but cannot "
                                   "be read, truncated or corrupt (")
    assert "download" not in str(e.value)
