"""`trainkit preview`: a grid of augmented training images to a PNG, without training."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from trainkit.config.rules import require, rule_of
from trainkit.config.schema import PreviewConfig, RootConfig
from trainkit.errors import USER_ERROR_EXIT_CODE, UserError

# The top-level keys preview.yaml adds to train.yaml's.
TRAIN_KEYS = {f.name for f in dataclasses.fields(RootConfig)}  # callbacks included: train's optional key
OWN_ROOT_KEYS = tuple(f.name for f in dataclasses.fields(PreviewConfig) if f.name not in TRAIN_KEYS)


def check_preview(cfg: DictConfig) -> None:
    """preview's own keys: a number of images, and a PNG path whose folder can be made."""
    from trainkit.run.folder import refuse_unwritable

    require(rule_of(PreviewConfig, "n"), "n", cfg.n)
    out = Path(str(cfg.out))
    refuse_unwritable("out", out.parent, value=str(cfg.out))


def write_preview(cfg: DictConfig) -> Path:
    """Build the data as `trainkit train` would (on the CPU) and save n augmented images."""
    import numpy as np
    import torch
    from PIL import Image

    from trainkit.config.check import check_config
    from trainkit.data.build import build_data
    from trainkit.data.image_grid import make_grid_with_labels
    from trainkit.console import console

    check_config(cfg, own_root_keys=OWN_ROOT_KEYS)  # the same checks as `trainkit train`: a misspelt key fails here too
    check_preview(cfg)
    with open_dict(cfg):
        cfg.dataset.preprocess = "none"  # the grid shows pixels before preprocessing; no ZCA fit needed
    data = build_data(cfg, torch.device("cpu"))
    images, labels = data.sample_train_batch(int(cfg.n))
    grid = make_grid_with_labels(images, labels, data.spec.class_names)
    out = Path(str(cfg.out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(grid.numpy().transpose(1, 2, 0))).save(out)
    except (OSError, ValueError) as e:
        raise UserError(f"out={str(cfg.out)!r}: cannot write the PNG there ({e})") from None
    console.print(f"wrote {out}: {len(labels)} augmented training images of dataset={cfg.dataset.name} "
                  f"({data.spec.image_size}x{data.spec.image_size}x{data.spec.in_channels}), loader={data.loader_kind}")
    return out


@hydra.main(version_base=None, config_path="pkg://trainkit.configs", config_name="preview")
def main(cfg: DictConfig) -> None:
    try:
        write_preview(cfg)
    except UserError as e:  # as `trainkit train` reports one: a line on stderr, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


if __name__ == "__main__":
    main()
