"""Every option of every config group composes, passes the config check and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from trainkit.config.check import check_config
from trainkit.data.sources import DataSpec
from trainkit.metrics import resolve_mode
from trainkit.components.optimizers import build_optimizer
from trainkit.components.regularization import Regularizers
from trainkit.components.schedules import build_schedule
from trainkit.components.assembly import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("dataset", "augmentation", "model", "norm", "activation", "init", "optimizer", "schedule", "regularization",
          "trainer", "logger", "paths", "experiment", "debug", "hparams_search")
EXTRA = {("dataset", "imagefolder"): ["dataset.root=/somewhere"]}


def options():
    for group in GROUPS:
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            yield group, path.stem


@pytest.mark.parametrize("group,option", list(options()), ids=lambda v: str(v))
def test_option_composes_checks_and_builds(group, option):
    value = f"[{option}]" if group == "regularization" else option
    cfg = compose_config(*[f"{group}={value}", *EXTRA.get((group, option), [])])
    OmegaConf.resolve(cfg)
    check_config(cfg)
    spec = DataSpec(in_channels=3, image_size=16, num_classes=4, class_names=list("abcd"),
                    mean=[0.5] * 3, std=[0.25] * 3)
    regularizers = Regularizers(cfg.regularization, num_classes=spec.num_classes)
    model = build_model(cfg, spec, regularizers.dropout)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    schedule = build_schedule(cfg.schedule, optimizer, steps_per_epoch=5, epochs=int(cfg.trainer.epochs),
                              mode=resolve_mode(cfg.trainer.monitor, cfg.trainer.mode))
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        return loss

    assert model(images).shape == (4, 4)
    optimizer.step(closure)  # every torch optimizer takes a closure; L-BFGS needs one
    schedule.step_batch()
    for t in cfg.augmentation.train or []:
        instantiate(t)


@pytest.mark.parametrize("group", GROUPS + ("optimizer/base",))
def test_every_yaml_documents_itself(group):
    """The config tree is the user's manual: each file opens with a comment."""
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        text = path.read_text()
        first = next(line for line in text.splitlines() if line.strip() and not line.startswith("# @package"))
        assert first.startswith("#"), f"{path} does not start with a comment"
        yaml.safe_load(text)


def test_packaged_configs_match_the_source_tree():
    from importlib.resources import files

    packaged = files("trainkit.configs")
    for path in CONFIGS.rglob("*.yaml"):
        assert packaged.joinpath(*path.relative_to(CONFIGS).parts).read_text() == path.read_text()
