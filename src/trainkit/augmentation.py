"""Albumentations pipelines from YAML lists; trainkit appends the tensor conversion."""

from __future__ import annotations

import albumentations as A
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from trainkit.errors import UserError


def build_pipeline(transforms: ListConfig | list, key: str) -> A.Compose:
    """An albumentations Compose of the configured transforms, ending in a uint8 CHW tensor.

    Normalization is not appended here: it runs on whole batches on the training device
    (see preprocess.py), so both data paths normalize identically and workers ship uint8.
    """
    built = []
    for i, t in enumerate(transforms or []):
        try:
            built.append(instantiate(t))
        except Exception as e:  # albumentations validates its arguments with pydantic
            target = t.get("_target_", "?") if isinstance(t, (dict, DictConfig)) else t
            reason = str(e).splitlines()
            raise UserError(f"{key}[{i}] ({target}): {' '.join(line.strip() for line in reason[:3])}") from None
    return A.Compose(built + [A.ToTensorV2()])
