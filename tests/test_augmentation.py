"""Augmentation presets on grey and RGB images, seeding, and pipeline errors."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from trainkit.augmentation import augment, build_pipeline
from trainkit.data import build_data
from trainkit.device_loader import NotBatchable, apply_ops, batched_ops
from trainkit.errors import UserError

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "augmentation").glob("*.yaml"))
BATCHED_PRESETS = {"none", "flip", "flip_crop", "cutout"}


def config(*overrides: str):
    with initialize_config_module("trainkit.configs", version_base=None):
        return compose("train", overrides=list(overrides))


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
