"""model=airbench, experiment=cifar10_speedrun and experiment=fashion_mnist_fast (issue 14)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import require_shared, run_trainkit
from trainkit.components.airbench import AirbenchNet
from trainkit.components.normalization import Normalization


def airbench(**kw):
    return AirbenchNet(3, 32, 10, Normalization("batch"), torch.nn.GELU, **kw)


def test_airbench_has_airbench94s_size_and_shapes():
    torch.manual_seed(0)
    net = airbench()
    trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
    # whiten 24x3x2x2 + 24; convs 24x64x9 + 64x64x9 + 64x256x9 + 3 x 256x256x9; BN weight and bias
    # 2 x (2x64 + 4x256); head 256x10: airbench94's sizes (airbench also freezes the BN weights at 1).
    assert trained + net.whiten.weight.numel() == 288 + 24 + 1_967_616 + 2_304 + 2_560
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad


def test_whitening_filters_decorrelate_the_patches(one_thread):
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.4], [0.0, 0.0, 0.3]])  # correlated colour channels
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(400, 3, 16, 16, generator=g))
    net = AirbenchNet(3, 16, 10, Normalization("batch"), torch.nn.GELU, widths=[8], whiten_epsilon=1e-6)
    net.init_from_data(images)
    w = net.whiten.weight
    assert torch.allclose(w[12:], -w[:12])  # each filter and its negative
    responses = torch.nn.functional.conv2d(images, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = responses.T @ responses / len(responses)
    assert torch.allclose(covariance, torch.eye(12), atol=2e-3), covariance.diag()


def test_speedrun_preset_runs_on_the_cifar_subset(tmp_path):
    root = require_shared("cifar10-subset")
    result = run_trainkit("train", "experiment=cifar10_speedrun", "dataset=imagefolder", f"dataset.root={root}",
                          "trainer.epochs=1", "schedule.warmup_epochs=0", "trainer.batch_size=128",
                          "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                          "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "autocast bfloat16" in result.stdout and "speed: channels_last, cudnn.benchmark" in result.stdout
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    w = checkpoint["model"]["stem.0.weight"]
    assert w.shape == (24, 3, 2, 2) and torch.equal(w[12:], -w[:12])  # set from the training images, kept frozen
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "batch_size: 128" in config and "epsilon: 0.2" in config


@pytest.mark.slow
def test_fashion_mnist_fast_reaches_093(tmp_path):
    # One seed of scripts/bench_time_to_acc.py's three (about 4 minutes on 2 idle cores).
    data = require_shared("FashionMNIST")
    result = run_trainkit("train", "experiment=fashion_mnist_fast", f"dataset.data_dir={data.parent}",
                          "dataset.download=false", "hydra.run.dir=run", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["test"]["test/acc"] >= 0.93
