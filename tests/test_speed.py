"""Single-device speed knobs (issue 14): channels_last, torch.compile, fused/foreach optimizers,
cudnn.benchmark, pinned memory, CPU threads, bf16 on the CPU, gradient accumulation.

What a CPU can show is shown here: each knob reaches the objects it sets, and gradient accumulation
gives the big-batch result. Their speed is measured by scripts/bench_loop.py and scripts/bench_gpu.sh.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_trainkit


def last_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def test_accumulated_batches_give_the_big_batch_result(tmp_path):
    # 1293 training digits: 10 steps of 128 and a last one of 13, against 4 x 32 per step (the last
    # step one batch of 13). norm=group is per sample, so only the summation order differs.
    common = ("norm=group", "optimizer=momentum", "optimizer.lr=0.1", "trainer.epochs=2", "trainer.progress=false")
    big = run_trainkit("train", *common, "trainer.batch_size=128", "hydra.run.dir=big", cwd=tmp_path)
    small = run_trainkit("train", *common, "trainer.batch_size=32", "trainer.accumulate_grad_batches=4",
                         "hydra.run.dir=small", cwd=tmp_path)
    assert big.returncode == 0 and small.returncode == 0, big.stderr + small.stderr
    assert "speed: 4 batches per optimizer step" in small.stdout
    a, b = last_checkpoint(tmp_path / "big"), last_checkpoint(tmp_path / "small")
    assert a["global_step"] == b["global_step"] == 22  # optimizer steps, and the schedule counted the same
    assert a["schedule"]["main"]["last_epoch"] == b["schedule"]["main"]["last_epoch"] == 22
    diff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    assert diff < 1e-4, diff
    ra = json.loads((tmp_path / "big" / "metrics.json").read_text())
    rb = json.loads((tmp_path / "small" / "metrics.json").read_text())
    assert ra["final"]["val/acc"] > 0.3  # it learned (chance is 0.1): the equality is not that of two idle runs
    assert abs(ra["final"]["val/loss"] - rb["final"]["val/loss"]) < 1e-4
    assert abs(ra["final"]["train/loss"] - rb["final"]["train/loss"]) < 1e-4


def test_speed_knobs_reach_the_run_and_the_weights_stay_plain(tmp_path):
    result = run_trainkit("train", "trainer.epochs=1", "trainer.channels_last=true", "trainer.precision=bf16",
                          "trainer.threads=1", "trainer.cudnn_benchmark=true", "optimizer.fused=true",
                          "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "speed: channels_last, cudnn.benchmark, 1 CPU thread(s)" in result.stdout
    assert "device=cpu, autocast bfloat16" in result.stdout
    checkpoint = last_checkpoint(tmp_path / "run")
    assert checkpoint["optimizer"]["param_groups"][0]["fused"] is True
    # The channels_last weights were saved in that layout; they load into a plain NCHW model.
    from trainkit.components.models import SmallCNN
    from trainkit.components.normalization import Normalization

    conv = checkpoint["model"]["features.1.0.weight"]  # 32 x 32 x 3 x 3
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = SmallCNN(1, 8, 10, Normalization("batch"), torch.nn.ReLU)
    plain.load_state_dict(checkpoint["model"])
    assert plain.features[1][0].weight.is_contiguous()


def test_compiled_model_saves_the_plain_models_keys(compose_train, tmp_path):
    # trainkit compiles in place (nn.Module.compile): the model keeps its class and its state_dict keys
    # carry no `_orig_mod.` prefix (torch.compile(model) would return a wrapper whose keys do).
    from trainkit.components.models import SmallCNN
    from trainkit.components.normalization import Normalization
    from trainkit.run.training import build_trainer

    trainer, _ = build_trainer(compose_train("trainer.compile=true", "logger.tensorboard.enabled=false"), tmp_path / "run", None)
    try:
        assert type(trainer.model) is SmallCNN and trainer.model._compiled_call_impl is not None
        plain = SmallCNN(1, 8, 10, Normalization("batch"), torch.nn.ReLU)
        plain.load_state_dict(trainer.model.state_dict())
    finally:
        trainer.data.close()


@pytest.mark.slow
def test_compiled_run_checkpoint_loads_into_an_uncompiled_model(tmp_path):
    # torch.compile on the CPU: inductor builds C++ kernels (about a minute here, cache cold).
    result = run_trainkit("train", "trainer.epochs=1", "trainer.compile=true", "hydra.run.dir=run", cwd=tmp_path,
                          timeout=900)
    assert result.returncode == 0, result.stderr
    assert "speed: torch.compile (mode default)" in result.stdout
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["test"]["test/acc"] > 0.3
    from trainkit.components.models import SmallCNN
    from trainkit.components.normalization import Normalization

    plain = SmallCNN(1, 8, 10, Normalization("batch"), torch.nn.ReLU)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    plain.load_state_dict(best["model"])  # no `_orig_mod.` keys


def test_pinned_memory_only_where_a_copy_to_a_gpu_uses_it():
    from trainkit.data.build import pinned_memory

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [pinned_memory(s, cuda) for s in ("auto", True, False)] == [True, True, False]
    assert [pinned_memory(s, cpu) for s in ("auto", True, False)] == [False, False, False]


@pytest.mark.parametrize("loader", ["workers", "device"])
def test_batches_arrive_in_the_models_layout(compose_train, loader):
    from conftest import require_shared
    from trainkit.data.build import build_data

    root = require_shared("cifar10-subset")  # 3 channels: NCHW and NHWC differ (for 1 channel they coincide)
    cfg = compose_train("dataset=imagefolder", f"dataset.root={root}", "dataset.cache_dir=null", f"dataset.loader={loader}",
                        "dataset.workers=0", "trainer.channels_last=true", "trainer.pin_memory=true")
    data = build_data(cfg, torch.device("cpu"))
    images, _ = data.to_device(*next(iter(data.train)))
    assert images.shape[1] == 3 and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    if loader == "workers":
        assert data.train.loader.pin_memory is False  # nothing to pin for on a CPU run
