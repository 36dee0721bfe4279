"""The debug overlays from the command line: debug=overfit memorises one fixed subset and says
whether it did; debug=fast stops after one epoch whatever trainer.epochs says."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from conftest import run_trainkit
from trainkit import metrics as M
from trainkit.data.overfit import MEMORISED_LOSS, memorisation_verdict


def test_overfit_trains_on_the_same_images_every_epoch(compose_train):
    from trainkit.data.build import build_data

    cfg = compose_train("debug=overfit")
    data = build_data(cfg, torch.device("cpu"))
    seen = []
    for epoch in range(3):
        data.train.set_epoch(epoch)
        images = torch.cat([x for x, _ in data.train]).flatten(1).numpy()
        seen.append(sorted(map(bytes, images)))
    assert len(seen[0]) == 2 * cfg.trainer.batch_size == 128
    assert seen[0] == seen[1] == seen[2]  # the same 128 images, only their order may change
    val = torch.cat([x for x, _ in data.val]).flatten(1).numpy()
    assert sorted(map(bytes, val)) == seen[0]  # validated on those same images
    assert len(np.unique(np.stack([np.frombuffer(b, np.uint8) for b in seen[0]]), axis=0)) == 128


def test_the_verdict_needs_every_image_right_and_the_loss_near_zero():
    assert memorisation_verdict({M.TRAIN_ACC: 1.0, M.TRAIN_LOSS: MEMORISED_LOSS}, images=128, epochs=50).passed
    assert not memorisation_verdict({M.TRAIN_ACC: 1.0, M.TRAIN_LOSS: 0.25}, images=128, epochs=50).passed
    assert not memorisation_verdict({M.TRAIN_ACC: 127 / 128, M.TRAIN_LOSS: 0.01}, images=128, epochs=50).passed
    assert not memorisation_verdict({M.TRAIN_ACC: float("nan"), M.TRAIN_LOSS: float("nan")}, images=128, epochs=50).passed


def test_overfit_passes_for_the_default_model_and_fails_for_one_that_cannot_memorise(tmp_path):
    runs = {"default": (), "one unit": ("model=mlp", "model.hidden=[1]")}
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(runs, pool.map(lambda name: run_trainkit(
            "train", "debug=overfit", "logger.tensorboard.image_grid=0", *runs[name], f"hydra.run.dir={name}",
            cwd=tmp_path), runs)))
    for name, result in results.items():
        assert result.returncode == 0, result.stdout + result.stderr
        assert "training and validating on the same 128 training images every epoch" in result.stdout
    good = json.loads((tmp_path / "default" / "metrics.json").read_text())
    check = good["overfit_check"]
    assert check["passed"] and check[M.TRAIN_ACC] == 1.0 and check[M.TRAIN_LOSS] <= MEMORISED_LOSS
    assert good["final"][M.VAL_ACC] == 1.0  # eval mode on the same images agrees
    last = results["default"].stdout.strip().splitlines()[-1]
    assert last.startswith("overfit check: passed: the model memorised the 128 images in 50 epochs (train/acc 1.0000")

    bad = json.loads((tmp_path / "one unit" / "metrics.json").read_text())
    assert not bad["overfit_check"]["passed"] and bad["overfit_check"][M.TRAIN_ACC] < 0.5
    last = results["one unit"].stdout.strip().splitlines()[-1]
    assert last.startswith("overfit check: FAILED: after 50 epochs on the same 128 images, train/acc 0.")


def test_fast_dev_run_caps_the_epochs_whatever_the_command_line_says(tmp_path):
    result = run_trainkit("train", "debug=fast", "trainer.epochs=30", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fast dev run (trainer.fast_dev_run=true): 1 epoch, not the 30 of trainer.epochs" in result.stdout
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["epochs_run"] == 1 and record["global_step"] == 5
