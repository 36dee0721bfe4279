"""`trainkit preview` and the labelled image grid it shares with TensorBoard."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from trainkit.image_grid import make_grid_with_labels


def preview(*args: str, cwd):
    argv = ["trainkit preview", *args]
    code = f"import sys; sys.argv={argv!r}; from trainkit.preview import main; main()"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=180)


def test_preview_writes_a_png_and_nothing_else(tmp_path):
    result = preview("dataset=digits", "augmentation=flip_crop", "n=16", "out=grids/p.png", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote grids/p.png: 16 augmented training images of dataset=digits" in result.stdout
    assert "loader=device" in result.stdout
    image = Image.open(tmp_path / "grids" / "p.png")
    assert image.mode == "RGB" and image.size[0] > 4 * 64 and image.size[1] > 4 * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grids"]  # no outputs/, .hydra/ or log file


def test_preview_reports_a_user_error_without_traceback(tmp_path):
    result = preview("dataset=imagefolder", f"dataset.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "error:" in result.stdout and "is not a folder" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "preview.png").exists()


def test_grid_has_one_tile_per_image_and_grey_becomes_rgb():
    images = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 2:6, 2:6] = 255
    grid = make_grid_with_labels(images, torch.arange(5), [f"class{i}" for i in range(5)])
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3
    array = grid.numpy().transpose(1, 2, 0)
    assert (array == 255).all(axis=2).sum() > 5 * 32 * 32  # the enlarged white squares (and the background)
    rgb = make_grid_with_labels(torch.full((4, 3, 32, 32), 128, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), ["a"])
    assert rgb.shape[1] >= 2 * 64 and np.isin(128, rgb.numpy())
