"""Albumentations pipelines from YAML lists; trainkit appends the tensor conversion."""

from __future__ import annotations

import re

import random

import albumentations as A
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from trainkit.errors import UserError


def build_pipeline(transforms, key: str) -> A.Compose:
    """An albumentations Compose of the configured transforms, ending in a uint8 CHW tensor.

    Normalization is not appended here: it runs on whole batches on the training device
    (see preprocess.py), so both data paths normalize identically and workers ship uint8.
    """
    built = []
    for i, t in enumerate(transforms or []):
        try:
            # _convert_=all: albumentations' pydantic schemas want tuples/lists, not ListConfig.
            built.append(instantiate(t, _convert_="all"))
        except Exception as e:  # albumentations validates its arguments with pydantic
            target = t.get("_target_", "?") if isinstance(t, (dict, DictConfig)) else t
            raise UserError(f"{key}[{i}] ({target}): {argument_problem(e)}") from None
        if not isinstance(built[-1], (A.BasicTransform, A.BaseCompose)):
            raise UserError(f"{key}[{i}]: {type(built[-1]).__name__} is not an albumentations transform")
    return A.Compose(built + [A.ToTensorV2()])


def user_transforms(pipeline: A.Compose) -> list:
    """The configured transforms, without the ToTensorV2 that build_pipeline appends."""
    return [t for t in pipeline.transforms if not isinstance(t, A.ToTensorV2)]


def seed_pipeline(pipeline: A.Compose, seed: int) -> None:
    """Seed every random draw of the next call of `pipeline`.

    Not `Compose.set_random_seed`: in albumentations 2.0 it gives each transform its own
    generator seeded with the *same* number, so e.g. HorizontalFlip(p=0.5) and
    VerticalFlip(p=0.5) always fire together. One shared generator draws in sequence.
    """
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


def augment(pipeline: A.Compose, image: np.ndarray, seed: int):
    seed_pipeline(pipeline, seed)
    return pipeline(image=image)["image"]


def argument_problem(error: Exception) -> str:
    """The first argument pydantic rejected, as `name=value is not allowed: why`, else the first line."""
    text = str(error).replace("\\n", "\n")
    found = re.search(r"validation errors? for \w+\n(\w+)\n\s+(.+?) \[type=[^,]*, input_value=(.+?), input_type", text)
    if found:
        name, why, value = found.groups()
        return f"{name}={value} is not allowed: {why[0].lower()}{why[1:]}"
    missing = re.search(r"Error locating target '([^']+)'", text)
    if missing:
        return f"there is no class {missing.group(1)} to build"
    unexpected = re.search(r"got an unexpected keyword argument '(\w+)'", text)
    if unexpected:
        return f"{unexpected.group(1)}: not an argument of this transform"
    return text.strip().splitlines()[0][:200]
