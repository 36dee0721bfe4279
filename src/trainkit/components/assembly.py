"""The model a config describes: its layers from model, norm and activation, then its init scheme."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig

if TYPE_CHECKING:
    from torch import nn


def build_model(cfg: DictConfig, spec, dropout: float) -> nn.Module:
    return instantiate(cfg.init)(build_network(cfg, spec, dropout))


def build_network(cfg: DictConfig, spec, dropout: float) -> nn.Module:
    """The model's layers, before the init scheme sets their weights."""
    from omegaconf import OmegaConf

    from trainkit.components.pretrained import SOURCE_KEYS

    # Where pretrained weights come from is read by the run (components/pretrained.py), not the model.
    settings = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in SOURCE_KEYS}
    factory = instantiate(settings)
    return factory(in_channels=spec.in_channels, image_size=spec.image_size, num_classes=spec.num_classes,
                   norm=instantiate(cfg.norm), activation=instantiate(cfg.activation), dropout=dropout)
