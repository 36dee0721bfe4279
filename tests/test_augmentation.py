"""Augmentation presets on grey and RGB images, seeding, and pipeline errors."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from conftest import compose_config as config
from trainkit.data.augmentation import augment, build_pipeline, check_transform
from trainkit.data.build import build_data, check_pipeline_output
from trainkit.data.sources import DataSpec
from trainkit.data.device_loader import NotBatchable, apply_ops, batched_ops
from trainkit.errors import UserError

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "augmentation").glob("*.yaml"))
BATCHED_PRESETS = {"none", "flip", "flip_crop", "cutout", "flip_translate"}


def test_all_presets_are_there():
    assert set(PRESETS) >= {"none", "flip", "flip_crop", "color_jitter", "affine", "cutout", "random_resized_crop", "strong"}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dataset, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_preset_on_grey_and_rgb(preset, dataset, shape):
    cfg = config(f"dataset={dataset}", f"augmentation={preset}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, *shape), dtype=np.uint8)
    for key in ("train", "eval"):
        pipeline = build_pipeline(cfg.augmentation[key], f"augmentation.{key}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. albumentations' "not applicable to grayscale" warnings
            out = [augment(pipeline, image, seed=i) for i, image in enumerate(images)]
        for o in out:
            assert o.dtype == torch.uint8 and tuple(o.shape) == (shape[2], shape[0], shape[1])
        if key == "train" and preset != "none":
            assert any(not np.array_equal(o.numpy().transpose(1, 2, 0), i) for o, i in zip(out, images))
        # the same seed gives the same image
        assert torch.equal(augment(pipeline, images[0], seed=7), augment(pipeline, images[0], seed=7))
        chw = (shape[2], shape[0], shape[1])
        if preset in BATCHED_PRESETS:
            ops = batched_ops(pipeline, chw, key)
            batch = torch.from_numpy(images).permute(0, 3, 1, 2)
            assert apply_ops(ops, batch, torch.Generator().manual_seed(0)).shape == batch.shape
        elif key == "train":
            with pytest.raises(NotBatchable):
                batched_ops(pipeline, chw, key)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_through_build_data_on_digits(preset):
    cfg = config("dataset=digits", f"augmentation={preset}", "dataset.workers=0")
    data = build_data(cfg, torch.device("cpu"))
    assert data.loader_kind == ("device" if preset in BATCHED_PRESETS else "workers")
    images, labels = next(iter(data.train))
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.uint8
    x, y = data.to_device(images, labels)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_transforms_draw_independently():
    # albumentations' own Compose.set_random_seed seeds every transform alike, which makes two
    # p=0.5 flips fire together; trainkit's seeding must not.
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    outcomes = Counter()
    for seed in range(800):
        corner = int(augment(pipeline, image, seed)[0, 0, 0])
        outcomes[corner] += 1  # 0: none, 3: horizontal, 12: vertical, 15: both
    assert set(outcomes) == {0, 3, 12, 15}
    assert all(150 < count < 250 for count in outcomes.values()), outcomes


def test_bad_transform_argument_names_the_key():
    cfg = config("augmentation=flip_crop", "augmentation.train.2.p=7")
    with pytest.raises(UserError, match=r"augmentation.train\[2\] \(albumentations.HorizontalFlip\)"):
        build_pipeline(cfg.augmentation.train, "augmentation.train")


def test_not_a_transform_is_refused():
    with pytest.raises(UserError, match="not an albumentations transform"):
        build_pipeline([{"_target_": "builtins.dict"}], "augmentation.train")


def test_a_pipeline_that_changes_the_image_size_is_refused():
    cfg = config("dataset=digits", "augmentation=none",
                 "augmentation.train=[{_target_: albumentations.RandomCrop, height: 6, width: 6}]")
    with pytest.raises(UserError, match=r"augmentation.train turns 8x8x1 images into 6x6x1.*dataset.image_size=8"):
        build_data(cfg, torch.device("cpu"))
    cfg = config("dataset=digits", "augmentation=none",
                 "augmentation.eval=[{_target_: albumentations.RandomCrop, height: 16, width: 16}]")
    with pytest.raises(UserError, match=r"augmentation.eval fails on a 8x8x1 training image: CropSizeError"):
        build_data(cfg, torch.device("cpu"))


def test_the_readme_example_pipeline_works():
    cfg = config("dataset=cifar10", "augmentation=none", "augmentation.train=["
                 "{_target_: albumentations.Rotate, limit: 10, border_mode: 0, p: 0.5},"
                 "{_target_: albumentations.RandomBrightnessContrast, brightness_limit: 0.2, contrast_limit: 0.2},"
                 "{_target_: albumentations.HorizontalFlip, p: 0.5}]")
    pipeline = build_pipeline(cfg.augmentation.train, "augmentation.train")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert augment(pipeline, image, seed=1).shape == (3, 32, 32)


OWN_STEP = ("is not allowed: trainkit appends the tensor conversion and the normalization itself "
            "(dataset.preprocess: standardize, center, none or zca); remove it from the pipeline")


@pytest.mark.parametrize("where, transform", [
    ("augmentation.train", "{_target_: albumentations.Normalize}"),
    ("augmentation.train", "{_target_: albumentations.ToFloat}"),
    ("augmentation.eval", "{_target_: albumentations.ToTensorV2}"),
])
def test_trainkits_own_steps_are_refused(where, transform):
    cfg = config(f"{where}=[{{_target_: albumentations.HorizontalFlip}}, {transform}]")
    key = where.split(".")[1]
    name = transform.split(": ")[1].rstrip("}")
    with pytest.raises(UserError) as e:
        build_pipeline(cfg.augmentation[key], where)
    assert str(e.value) == f"{where}[1] ({name}) {OWN_STEP}"


def test_trainkits_own_steps_are_refused_inside_a_compose():
    cfg = config("augmentation.train=[{_target_: albumentations.OneOf, transforms: "
                 "[{_target_: albumentations.NoOp}, {_target_: albumentations.Normalize, mean: 0.5, std: 0.2}]}]")
    with pytest.raises(UserError) as e:
        build_pipeline(cfg.augmentation.train, "augmentation.train")
    assert str(e.value) == f"augmentation.train[0].transforms[1] (albumentations.Normalize) {OWN_STEP}"


def to_float(image, **_):
    return image.astype(np.float32) / 255.0


@pytest.mark.parametrize("float_step", [A.ToFloat(), A.Lambda(image=to_float)], ids=["ToFloat", "Lambda"])
def test_a_pipeline_must_leave_uint8_pixels(float_step):
    spec = DataSpec(in_channels=1, image_size=8, num_classes=10, class_names=list("0123456789"), mean=[0.5], std=[0.2])
    image = np.full((8, 8, 1), 200, dtype=np.uint8)
    uint8_pipeline = A.Compose([A.HorizontalFlip(p=1.0), A.ToTensorV2()])
    check_pipeline_output(uint8_pipeline, image, spec, "augmentation.train")  # uint8 in, uint8 out: fine
    # built by hand: build_pipeline would refuse ToFloat by name before this check is reached
    with pytest.raises(UserError) as e:
        check_pipeline_output(A.Compose([float_step, A.ToTensorV2()]), image, spec, "augmentation.train")
    assert str(e.value) == ("augmentation.train turns uint8 images into float32; it must leave them uint8 (0..255): "
                            "trainkit converts and normalizes them itself (dataset.preprocess)")


NESTED_TYPO = ("augmentation.train[0].transforms[1] (albumentations.AutoContrast): prob: not an argument of this "
               "transform; allowed: cutoff, ignore, method, p")


def test_a_misspelt_argument_inside_a_compose_is_an_error_not_a_warning():
    cfg = config("augmentation=strong", "+augmentation.train.0.transforms.1.prob=1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations' own UserWarning would fail here: it is replaced, not added to
        with pytest.raises(UserError) as e:
            build_pipeline(cfg.augmentation.train, "augmentation.train")
    assert str(e.value) == NESTED_TYPO


def test_a_bad_value_inside_a_compose_names_its_own_position():
    cfg = config("augmentation=strong", "augmentation.train.0.transforms.6.threshold_range=[0.5,2]")
    with pytest.raises(UserError, match=r"^augmentation.train\[0\].transforms\[6\] \(albumentations.Solarize\): threshold_range="):
        build_pipeline(cfg.augmentation.train, "augmentation.train")


def test_unknown_arguments_are_found_at_any_depth():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # albumentations warns when the transforms are made here by hand
        deep = A.OneOf([A.NoOp(), A.SomeOf([A.Blur(), A.Sharpen(alpah=0.3)], n=1)])
    with pytest.raises(UserError, match=r"^augmentation.train\[2\].transforms\[1\].transforms\[1\] "
                                        r"\(albumentations.Sharpen\): alpah: not an argument"):
        check_transform(deep, "augmentation.train[2]")


def trainkit_cli(*args: str, cwd: Path):
    """The real `trainkit` command, its run outputs under cwd/out (TRAINKIT_OUTPUT_DIR)."""
    env = {**os.environ, "COLUMNS": "200", "TRAINKIT_OUTPUT_DIR": str(cwd / "out")}
    return subprocess.run([sys.executable, "-m", "trainkit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env=env)


def test_cli_refuses_a_misspelt_nested_argument_before_training(tmp_path):
    result = trainkit_cli("train", "augmentation=strong", "+augmentation.train.0.transforms.1.prob=1", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"error: {NESTED_TYPO}\n"  # one line: no albumentations warning, no traceback
    assert "epoch" not in result.stdout
    assert not any((tmp_path / "out").rglob("*"))  # no run folder left behind
