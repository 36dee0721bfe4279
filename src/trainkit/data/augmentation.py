"""Albumentations pipelines from YAML lists; trainkit appends the tensor conversion."""

from __future__ import annotations

import inspect
import random
import re
import warnings

import albumentations as A
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from trainkit.errors import UserError

# trainkit's own last steps (ToTensorV2 here, normalization in preprocess.py): a user's copy would
# normalize twice, or hand the transforms after it a tensor they cannot read.
APPENDED_BY_TRAINKIT = (A.Normalize, A.ToFloat, A.ToTensorV2)


def build_pipeline(transforms, key: str) -> A.Compose:
    """An albumentations Compose of the configured transforms, ending in a uint8 CHW tensor.

    Normalization is not appended here: it runs on whole batches on the training device
    (see preprocess.py), so both data paths normalize identically and workers ship uint8.
    """
    built = [build_transform(node, f"{key}[{i}]") for i, node in enumerate(transforms or [])]
    return A.Compose(built + [A.ToTensorV2()])


def build_transform(node, path: str):
    """One transform from its config node, checked. A compose's `transforms` are built (and
    checked) one by one first, so a problem deep inside a OneOf or SomeOf is reported at its
    own position, not as the compose's failure."""
    extra = {}
    if isinstance(node, (dict, DictConfig)) and isinstance(node.get("transforms"), (list, ListConfig)):
        extra["transforms"] = [build_transform(child, f"{path}.transforms[{j}]") for j, child in enumerate(node["transforms"])]
        node = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for k, v in node.items() if k != "transforms"}
    target = node.get("_target_", "?") if isinstance(node, (dict, DictConfig)) else node
    try:
        with warnings.catch_warnings():
            # albumentations only warns about an argument it does not know; check_transform refuses it.
            warnings.filterwarnings("ignore", message=r"Argument\(s\) .* are not valid for transform")
            # _convert_=all: albumentations' pydantic schemas want tuples/lists, not ListConfig.
            transform = instantiate(node, **extra, _convert_="all")
    except Exception as e:  # albumentations validates its arguments with pydantic
        raise UserError(f"{path} ({target}): {argument_problem(e)}") from None
    check_transform(transform, path)  # also walks children a compose made itself (OneOrOther's first, second)
    return transform


def check_transform(transform, path: str) -> None:
    """Refuse, at any depth, what albumentations lets pass: unknown arguments and trainkit's own steps."""
    if not isinstance(transform, (A.BasicTransform, A.BaseCompose)):
        raise UserError(f"{path}: {type(transform).__name__} is not an albumentations transform")
    name = f"{path} ({transform_name(transform)})"
    if isinstance(transform, APPENDED_BY_TRAINKIT):
        raise UserError(f"{name} is not allowed: trainkit appends the tensor conversion and the normalization itself "
                        "(dataset.preprocess: standardize, center, none or zca); remove it from the pipeline")
    unknown = getattr(transform, "invalid_args", None)  # albumentations 2 records them (and warns)
    if unknown:
        what = "not an argument" if len(unknown) == 1 else "not arguments"
        raise UserError(f"{name}: {', '.join(unknown)}: {what} of this transform; allowed: "
                        f"{', '.join(sorted(accepted_arguments(type(transform))))}")
    if isinstance(transform, A.BaseCompose):
        for j, child in enumerate(transform.transforms):
            check_transform(child, f"{path}.transforms[{j}]")


def transform_name(transform) -> str:
    """`albumentations.X` for the library's public transforms (as a config names them), else the full path."""
    cls = type(transform)
    if getattr(A, cls.__name__, None) is cls:
        return f"albumentations.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def accepted_arguments(cls) -> set[str]:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "strict"}


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
