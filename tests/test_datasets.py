"""Datasets: real MNIST / Fashion-MNIST / CIFAR-10 subset from ../shared/data, imagefolder, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import SHARED_DATA, require_shared, compose_config as config
from trainkit.data.datasets import build_splits
from trainkit.data.stats import channel_stats
from trainkit.errors import UserError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def mnist():
    require_shared("MNIST")
    cfg = config("dataset=mnist", f"dataset.data_dir={SHARED_DATA}", "dataset.download=false")
    return cfg, build_splits(cfg.dataset, 0)


@pytest.fixture(scope="module")
def fashion():
    require_shared("FashionMNIST")
    cfg = config("dataset=fashion_mnist", f"dataset.data_dir={SHARED_DATA}", "dataset.download=false")
    return cfg, build_splits(cfg.dataset, 0)


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    root = require_shared("cifar10-subset")
    cache = tmp_path_factory.mktemp("cache")
    cfg = config("dataset=imagefolder", f"dataset.root={root}", f"dataset.cache_dir={cache}")
    return cfg, build_splits(cfg.dataset, 0), cache


@pytest.mark.parametrize("which, names", [
    ("mnist", [str(i) for i in range(10)]),
    ("fashion", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
])
def test_real_mnist_like_sizes_classes_and_stats(which, names, request):
    cfg, splits = request.getfixturevalue(which)
    assert len(splits.train) + len(splits.val) == 60_000
    assert len(splits.test) == 10_000
    assert len(splits.val) == 6_000  # val_fraction 0.1, stratified
    assert splits.spec.class_names == names and splits.spec.num_classes == 10
    assert splits.train.images.shape[1:] == (28, 28, 1) and splits.train.images.dtype == np.uint8
    assert np.bincount(splits.val.labels).min() >= 500  # every class in val
    # The mean/std in the config are those of the real training pixels.
    mean, std = channel_stats(np.concatenate([splits.train.images, splits.val.images]))
    assert mean == pytest.approx(list(cfg.dataset.mean), abs=5e-4)
    assert std == pytest.approx(list(cfg.dataset.std), abs=5e-4)


def test_digits_split_is_seeded_and_stratified():
    cfg = config("dataset=digits")
    a, b, c = build_splits(cfg.dataset, 0), build_splits(cfg.dataset, 0), build_splits(cfg.dataset, 1)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert np.array_equal(a.train.labels, b.train.labels) and np.array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.test.images, c.test.images)
    assert np.bincount(a.test.labels).min() >= 30
    assert a.spec.mean == [0.3053] and a.spec.image_size == 8


def test_missing_files_is_one_clear_line(tmp_path):
    cfg = config("dataset=mnist", f"dataset.data_dir={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError) as e:
        build_splits(cfg.dataset, 0)
    message = str(e.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message  # the expected path
    assert "train-images-idx3-ubyte" in message and "dataset.data_dir" in message  # what to put there, and the knob


def test_missing_files_cli_prints_no_traceback(tmp_path):
    argv = ["trainkit preview", "dataset=fashion_mnist", f"dataset.data_dir={tmp_path}", "dataset.download=false",
            f"out={tmp_path / 'p.png'}"]
    code = f"import sys; sys.argv={argv!r}; from trainkit.cli.preview import main; main()"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out
    assert f"{tmp_path}/FashionMNIST/raw" in out.replace("\n", "")


def _write_idx(path, array: np.ndarray) -> None:
    magic = {3: 0x0803, 1: 0x0801}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_kmnist_reads_idx_files_with_published_stats_or_computed_ones(tmp_path):
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    overrides = ["dataset=kmnist", f"dataset.data_dir={tmp_path}", "dataset.download=false"]
    splits = build_splits(config(*overrides).dataset, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 50)
    assert splits.spec.class_names[:3] == ["o", "ki", "su"]
    assert (splits.spec.mean, splits.spec.std) == ([0.1918], [0.3483])  # KMNIST's published values, not recomputed
    computed = build_splits(config(*overrides, "dataset.mean=null", "dataset.std=null").dataset, 0).spec
    assert computed.mean[0] == pytest.approx(0.5, abs=0.01)  # uniform noise
    assert computed.std[0] == pytest.approx(0.289, abs=0.01)


def test_imagefolder_cifar_subset(cifar_folder):
    cfg, splits, cache = cifar_folder
    spec = splits.spec
    assert spec.class_names == CIFAR_CLASSES and spec.num_classes == 10
    assert (spec.in_channels, spec.image_size) == (3, 32)
    assert splits.train.images.shape[1:] == (32, 32, 3)
    assert len(splits.test) == 1017  # test/ exists: used as is
    assert len(splits.train) + len(splits.val) == 5085  # val held out of train/
    # Computed from the training images, close to CIFAR-10's known statistics, and cached.
    assert spec.mean == pytest.approx([0.4914, 0.4822, 0.4465], abs=0.01)
    assert spec.std == pytest.approx([0.2470, 0.2435, 0.2616], abs=0.01)
    [entry] = list((cache / "imagefolder_stats").glob("*.json"))
    assert json.loads(entry.read_text())["mean"] == spec.mean


def test_imagefolder_trains_a_few_steps(cifar_folder):
    from trainkit.data.build import build_data
    from trainkit.components.models import SmallCNN

    cfg, _, cache = cifar_folder
    cfg = config("dataset=imagefolder", f"dataset.root={cfg.dataset.root}", f"dataset.cache_dir={cache}",
                 "augmentation=flip_crop", "trainer.batch_size=64", "trainer.seed=0")
    torch.manual_seed(0)
    data = build_data(cfg, torch.device("cpu"))
    spec = data.spec
    model = SmallCNN(spec.in_channels, spec.image_size, spec.num_classes, instantiate(cfg.norm), instantiate(cfg.activation),
                     channels=(16, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data.train.set_epoch(0)
    batches = iter(data.train)
    fixed = data.to_device(*next(batches))

    def fixed_loss():
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(fixed[0]), fixed[1]).item()

    before = fixed_loss()
    model.train()
    for _ in range(10):
        images, labels = data.to_device(*next(batches))
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.train()
    assert np.isfinite(loss.item())
    assert fixed_loss() < before


def _png(path, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagefolder_single_tree_grey_resized_and_seeded(tmp_path):
    for name, color in (("cats", (200, 10, 10)), ("dogs", (10, 200, 10))):
        for i in range(20):
            _png(tmp_path / "imgs" / name / f"{i}.png", (40, 30), color)  # not square, not image_size
    overrides = ["dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}", "dataset.in_channels=1",
                 "dataset.image_size=16", "dataset.cache_dir=null", "dataset.val_fraction=0.25", "dataset.test_fraction=0.2"]
    a = build_splits(config(*overrides).dataset, 3)
    b = build_splits(config(*overrides).dataset, 3)
    assert a.spec.class_names == ["cats", "dogs"] and a.spec.in_channels == 1
    assert a.train.images.shape[1:] == (16, 16, 1)
    assert (len(a.train), len(a.val), len(a.test)) == (24, 8, 8)
    assert np.bincount(a.test.labels).tolist() == [4, 4]  # stratified
    assert np.array_equal(a.train.labels, b.train.labels)
    # class_names in the config set the label order
    c = build_splits(config(*overrides, "dataset.class_names=[dogs,cats]").dataset, 3)
    assert c.spec.class_names == ["dogs", "cats"]
    grey_of = {label: c.train.images[c.train.labels == label].mean() for label in (0, 1)}
    assert grey_of[0] > grey_of[1]  # dogs (green) are lighter in luma than cats (red)


def _bands(path, width: int, height: int) -> None:
    """A wide image: red on the left third, green in the middle, blue on the right."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    pixels[:, :third, 0] = pixels[:, third:2 * third, 1] = pixels[:, 2 * third:, 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("resize", ["center_crop", "stretch"])
def test_imagefolder_non_square_images_are_center_cropped_or_stretched(tmp_path, resize):
    from torchvision.transforms import CenterCrop, Resize

    for name in ("a", "b"):
        for i in range(10):
            _bands(tmp_path / "imgs" / name / f"{i}.png", width=60, height=20)
    cfg = config("dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}", "dataset.image_size=10",
                 f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.val_fraction=0.2", "dataset.test_fraction=0.2",
                 *([] if resize == "center_crop" else ["dataset.resize=stretch"]))
    assert cfg.dataset.resize == resize
    image = build_splits(cfg.dataset, 0).train.images[0]
    assert image.shape == (10, 10, 3)
    red, green, blue = (image[..., c].astype(int) for c in range(3))
    if resize == "center_crop":
        # Shorter side to 10 (30x10), then the central 10 columns: the middle band, undistorted.
        assert (green[:, 1:-1] == 255).all() and red.max() < 128 and blue.max() < 128
        with Image.open(tmp_path / "imgs" / "a" / "0.png") as original:
            torchvision_eval = np.asarray(CenterCrop(10)(Resize(10)(original)))
        assert np.array_equal(image, torchvision_eval)  # the same pixels as torchvision's eval transform
    else:
        # All 60 columns squeezed into 10: the three bands side by side, each a third as wide.
        assert (red[:, :2] == 255).all() and (green[:, 4:6] == 255).all() and (blue[:, -2:] == 255).all()
    # How the images were read is part of the cached statistics' key: each setting has its own entry.
    entries = list((tmp_path / "cache" / "imagefolder_stats").glob("*.json"))
    assert [json.loads(e.read_text())["resize"] for e in entries] == [resize]


def test_imagefolder_resize_setting_changes_the_cached_statistics(tmp_path):
    for i in range(10):
        _bands(tmp_path / "imgs" / "a" / f"{i}.png", width=60, height=20)
        _bands(tmp_path / "imgs" / "b" / f"{i}.png", width=60, height=20)
    overrides = ["dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}", "dataset.image_size=10",
                 f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.val_fraction=0.2", "dataset.test_fraction=0.2"]
    cropped = build_splits(config(*overrides).dataset, 0).spec
    stretched = build_splits(config(*overrides, "dataset.resize=stretch").dataset, 0).spec
    assert cropped.mean[1] > 0.9 and cropped.mean[0] < 0.1  # the green middle only
    assert stretched.mean[0] == pytest.approx(stretched.mean[1], abs=0.05)  # every band in view
    assert len(list((tmp_path / "cache" / "imagefolder_stats").glob("*.json"))) == 2
    with pytest.raises(UserError, match=r"^dataset.resize='squash' is not allowed: center_crop, stretch$"):
        build_splits(config(*overrides, "dataset.resize=squash").dataset, 0)


@pytest.mark.parametrize("layout, expected", [
    ("missing", "is not a folder"),
    ("empty", "has no class sub-folders"),
    ("empty_class", "hold no images"),
])
def test_imagefolder_errors(tmp_path, layout, expected):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "empty_class":
        _png(root / "a" / "0.png", (8, 8), (0, 0, 0))
        (root / "b").mkdir()
    cfg = config("dataset=imagefolder", f"dataset.root={root}", "dataset.cache_dir=null")
    with pytest.raises(UserError, match=expected):
        build_splits(cfg.dataset, 0)


def test_imagefolder_root_is_required():
    with pytest.raises(UserError, match="needs dataset.root"):
        build_splits(config("dataset=imagefolder").dataset, 0)


def test_every_dataset_config_composes():
    for name in ("digits", "mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10", "imagefolder"):
        cfg = config(f"dataset={name}")
        assert cfg.dataset.name == name
        assert cfg.dataset.preprocess == "standardize" and cfg.dataset.loader == "auto"
        if cfg.dataset.mean is not None:
            assert len(cfg.dataset.mean) == len(cfg.dataset.std) == cfg.dataset.in_channels
            assert len(cfg.dataset.class_names) == cfg.dataset.num_classes


# --- Bad image folders and sizes, through the real CLI: one line, exit code 2, nothing written -------

def tree(root, classes: dict[str, int]) -> None:
    for name, n in classes.items():
        for i in range(n):
            _png(root / name / f"{i}.png", (8, 8), (20 * i, 100, 0))


def refused(args: list[str], cwd, as_user: list[str] = ()) -> str:
    """Run `trainkit train` (prefixed by `as_user`, a command that switches user): it must fail with one
    line and exit code 2, writing nothing under cwd. Returns the message."""
    from conftest import trainkit_command

    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*")}
    env = {**os.environ, "COLUMNS": "200", "HOME": str(cwd)}
    env.pop("TRAINKIT_OUTPUT_DIR", None)
    result = subprocess.run([*as_user, *trainkit_command(), "train", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert {p: p.stat().st_mtime_ns for p in cwd.rglob("*")} == before  # no run folder left behind
    return result.stderr.removeprefix("error: ").rstrip("\n")


def test_an_image_folder_of_one_class_is_refused(tmp_path):
    """Before: it 'trained' to accuracy 1.0."""
    tree(tmp_path / "imgs", {"cats": 10})
    cfg = config("dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}", "dataset.cache_dir=null")
    with pytest.raises(UserError) as e:
        build_splits(cfg.dataset, 0)
    assert str(e.value) == (f"dataset.root: {tmp_path}/imgs has 1 class folder (cats); a classifier needs at least 2 "
                            f"classes: put the images of each class in its own {tmp_path}/imgs/<class name>/")


def test_an_image_size_beyond_memory_is_refused_before_allocating(tmp_path):
    """Before: a MemoryError after trying to allocate terabytes (the pre-run model check was skipped
    for imagefolder, whose num_classes is null until the folders are counted)."""
    from trainkit.cli.preflight import compose_checked

    tree(tmp_path / "imgs", {"a": 10, "b": 10})
    message = refused(["dataset=imagefolder", "dataset.root=imgs", "dataset.image_size=100000"], tmp_path)
    expected = (r"dataset.image_size=100000 is not allowed: two 100000x100000x{} images as float32 \(the smallest batch\) "
                r"need [\d.]+ GiB of memory, and [\d.]+ [GMT]iB is available; choose a smaller dataset.image_size")
    assert re.fullmatch(expected.format(3), message), message
    with pytest.raises(UserError, match=f"^{expected.format(1)}$"):  # digits: the same check (a RuntimeError before)
        compose_checked(["dataset.image_size=100000"])


def test_an_image_folder_beyond_memory_is_refused_before_reading(tmp_path):
    from trainkit.memory import available_memory

    tree(tmp_path / "imgs", {"a": 10, "b": 10})
    size = int((available_memory() / 20 / 3) ** 0.5) + 100  # 20 images that do not fit, one batch that does
    cfg = config("dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}", f"dataset.image_size={size}",
                 "dataset.cache_dir=null")
    with pytest.raises(UserError, match=rf"^dataset.image_size={size} is not allowed: the 20 images at {size}x{size}x3 "
                                        r"\(uint8\) need [\d.]+ GiB of memory, and [\d.]+ GiB is available"):
        build_splits(cfg.dataset, 0)


@pytest.fixture
def unprivileged(tmp_path):
    """(a command prefix that runs trainkit as a user whom file permissions bind, a folder it can use):
    root ignores them, so as root trainkit runs as 'nobody' (util-linux's setpriv); else as is."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        yield [], tmp_path
        return
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, where file permissions do not bind, and setpriv (util-linux) is missing")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import trainkit"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root, and user 65534 cannot run this Python: {probe.stderr.strip()[-200:]}")
    folder = Path(tempfile.mkdtemp(prefix="trainkit-permissions-"))  # pytest's tmp_path is private to root
    folder.chmod(0o777)
    yield as_nobody, folder
    shutil.rmtree(folder)


@pytest.mark.parametrize("locked", ["root", "class"])
def test_an_unreadable_image_folder_is_a_permission_error(unprivileged, locked):
    """Before: a PermissionError traceback (root), or 'hold no images' (a class folder)."""
    as_user, cwd = unprivileged
    tree(cwd / "imgs", {"a": 10, "b": 10})
    for path in [cwd / "imgs", *(cwd / "imgs").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    denied = cwd / "imgs" if locked == "root" else cwd / "imgs" / "b"
    denied.chmod(0o000)
    try:
        message = refused(["dataset=imagefolder", "dataset.root=imgs"], cwd, as_user)
    finally:
        denied.chmod(0o755)
    assert message == f"dataset.root: permission denied: this user cannot read {denied}; make it readable " \
                      f"(e.g. chmod -R a+rX {denied})"


def test_num_classes_must_cover_the_labels():
    """Before: an IndexError in the TensorBoard image grid (labels 5..9 have no class name)."""
    with pytest.raises(UserError, match=r"^dataset.num_classes=5 is not allowed: the digits labels run from 0 to 9, so it "
                                        r"needs at least 10 classes$"):
        build_splits(config("dataset.num_classes=5", "dataset.class_names=[a,b,c,d,e]").dataset, 0)
    with pytest.raises(UserError, match=r"^dataset.class_names has 10 names but dataset.num_classes=12: give one name "
                                        r"per class$"):
        build_splits(config("dataset.num_classes=12").dataset, 0)


@pytest.mark.parametrize("key, value", [
    ("std", "[0]"), ("std", "[-0.2]"), ("std", "[nan]"), ("std", "[inf]"), ("std", "[58.4]"), ("std", "0.3"),
    ("mean", "[1.5]"), ("mean", "[abc]"), ("mean", "[]"),
])
def test_mean_and_std_are_checked_before_the_run(key, value):
    """A zero std used to end as 'diverged ... lower optimizer.lr'; one in 0..255 units would train silently badly."""
    from trainkit.config.check import check_config

    what = {"std": "one number in (0, 1] per channel", "mean": "one number in [0, 1] per channel"}[key]
    with pytest.raises(UserError, match=rf"^dataset.{key}=.* is not allowed: null or {re.escape(what)}, for pixels scaled "
                                        r"to \[0, 1\]$"):
        check_config(config(f"dataset.{key}={value}"))


def test_held_out_splits_keep_the_images_they_held_out_before_hold_out():
    """data/split.hold_out replaced three hand-written hold-outs: the digits splits (test, then val)
    hold the same images as before (sha1 of images + labels, recorded with the old code)."""
    import hashlib

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "digits", "test_fraction": 0.2, "val_fraction": 0.1, "image_size": 8, "in_channels": 1,
                            "num_classes": 10, "class_names": [str(i) for i in range(10)], "mean": [0.3], "std": [0.3],
                            "data_dir": "unused"})
    splits = build_splits(cfg, 3)
    digests = [hashlib.sha1(s.images.tobytes() + s.labels.tobytes()).hexdigest()[:12] for s in (splits.train, splits.val, splits.test)]
    assert digests == ["a0c05ea29549", "866520b28634", "cb9a8a8ee0c1"]
