"""`trainkit preview` and the labelled image grid it shares with TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_trainkit
from trainkit.data.image_grid import make_grid_with_labels

OPTIMIZERS = ", ".join(sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "optimizer").glob("*.yaml")))


def preview(*args: str, cwd):
    """The real `trainkit preview` command."""
    return run_trainkit("preview", *args, cwd=cwd, timeout=180)


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
    assert result.stderr == (f"error: dataset.root='{tmp_path / 'nowhere'}': {tmp_path / 'nowhere'} is not a folder; put one "
                             "sub-folder of images per class there (or train/<class>/, val/<class>/, test/<class>/)\n")
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "preview.png").exists()


# issue 9: preview's errors are train's: one line on stderr, exit code 2, nothing written.
PREVIEW_CASES = [
    (["out=/proc/forbidden/x.png"], "out='/proc/forbidden/x.png' is not allowed: cannot make a folder in /proc (No such file or directory)"),
    (["out=taken/x.png"], "out='taken/x.png' is not allowed: WORKDIR/taken is a file, not a folder"),
    (["optimizer=adamm"], f"optimizer=adamm is not allowed: the optimizer options are {OPTIMIZERS}"),
    (["--cfg", "job", "optimizer=adamm"], f"optimizer=adamm is not allowed: the optimizer options are {OPTIMIZERS}"),
    (["n=0"], "n=0 is not allowed: a whole number >= 1"),
    (["+outt=a.png"], "outt='a.png': unknown top-level key (did you mean out?); the config's top level holds task_name, resume, "
                      "dataset, augmentation, model, norm, activation, init, trainer, schedule, optimizer, regularization, "
                      "logger, paths, diagnostics, out, n"),
]


@pytest.mark.parametrize("args,message", PREVIEW_CASES, ids=[" ".join(a) for a, _ in PREVIEW_CASES])
def test_preview_error_is_one_line_on_stderr_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "taken").write_text("a file where out's folder would go")
    result = preview(*args, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, f"error: {message.replace('WORKDIR', str(tmp_path))}\n")
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_grid_has_one_tile_per_image_and_grey_becomes_rgb():
    images = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 2:6, 2:6] = 255
    grid = make_grid_with_labels(images, torch.arange(5), [f"class{i}" for i in range(5)])
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3
    array = grid.numpy().transpose(1, 2, 0)
    assert (array == 255).all(axis=2).sum() > 5 * 32 * 32  # the enlarged white squares (and the background)
    rgb = make_grid_with_labels(torch.full((4, 3, 32, 32), 128, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), ["a"])
    assert rgb.shape[1] >= 2 * 64 and np.isin(128, rgb.numpy())
