"""DDP through torchrun on CPU (gloo, 2 processes): the same training as one process, one writer, a clean stop.

The model uses norm=group: BatchNorm's statistics are per process by design (trainer.sync_bn needs CUDA),
so only a batch-independent norm lets 2 processes compute exactly what 1 process computes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import read_scalars, run_trainkit, trainkit_command

# 2 epochs of 81 global batches of 16 on digits: long enough to stop mid-run, seconds per run. SGD with
# momentum: Adam divides by the root of tiny second moments, which turns the 1e-7 differences of another
# summation order into visible ones within a hundred steps (a 2-process run is then no less right).
RUN = ["trainer.epochs=2", "trainer.batch_size=16", "norm=group", "optimizer=momentum", "trainer.log_every_n_steps=1",
       "trainer.progress=false"]
STEPS = 2 * 81
ENV = {"OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="2 processes need 2 CPU cores (gloo)")


def files_of(run_dir: Path) -> set[str]:
    """The run folder's files, event files by their folder (their names hold the pid)."""
    return {str(p.relative_to(run_dir).parent / "events") if p.name.startswith("events.") else str(p.relative_to(run_dir))
            for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one")
    result = run_trainkit("train", *RUN, "hydra.run.dir=run", cwd=root, env=ENV)
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_two_processes_stop_together_on_sigterm_and_resume_to_the_one_process_result(one_process, tmp_path):
    """SIGTERM to the launcher mid-run: both ranks stop at one step, rank 0 saves last.pt, exit 130; the resume
    (2 processes again, from the run's own settings) ends where one uninterrupted process ends, step by step."""
    # The workers path with a loader process per rank: torchrun's SIGTERM reaches those too.
    args = [*RUN, "trainer.devices=2", "dataset.loader=workers", "dataset.workers=1", "hydra.run.dir=run"]
    launcher = subprocess.Popen([*trainkit_command(), "train", *args], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env={**os.environ, **ENV, "COLUMNS": "200"})
    run_dir = tmp_path / "run"
    deadline = time.time() + 240
    while not (run_dir / "tensorboard").is_dir() and time.time() < deadline:  # rank 0 opens it as training starts
        time.sleep(0.2)
    time.sleep(1.0)
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, out
    record = __import__("json").loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted", out
    stopped_at = record["global_step"]
    assert 0 < stopped_at < STEPS, out
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert payload["global_step"] == stopped_at
    assert out.count("interrupted: saved") == 1  # rank 0 alone reports

    resumed = run_trainkit("train", f"resume={run_dir}", cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "DDP: 2 processes, 8 images each" in resumed.stdout
    # Rank 0 alone wrote the folder, and what a single process writes: the same files.
    assert files_of(run_dir) == files_of(one_process)
    assert "Traceback" not in resumed.stdout + resumed.stderr

    two, one = read_scalars(run_dir / "tensorboard"), read_scalars(one_process / "tensorboard")
    steps = [s for s, _ in one["train/loss_step"]]
    assert [s for s, _ in two["train/loss_step"]] == steps == list(range(1, STEPS + 1))
    # The global batch's mean loss at every step, before the stop and after the resume.
    for tag in ("train/loss_step", "train/loss", "val/loss", "test/loss"):
        diff = max(abs(a - b) for (_, a), (_, b) in zip(two[tag], one[tag]))
        assert diff < 2e-5, (tag, diff)
    metrics_two = __import__("json").loads((run_dir / "metrics.json").read_text())
    metrics_one = __import__("json").loads((one_process / "metrics.json").read_text())
    assert metrics_two["status"] == metrics_one["status"] == "completed"
    assert metrics_two["test"]["test/acc"] == metrics_one["test"]["test/acc"]
    assert metrics_two["global_step"] == metrics_one["global_step"]


def test_each_rank_takes_its_share_of_every_global_batch(compose_train, one_thread):
    """Both loaders: the 2 ranks' shares of each global batch, interleaved, are the one-process batch (images
    as augmented, labels); evaluation splits cover every image once; a last training batch of one image is
    dropped (a rank would have none)."""
    from trainkit.data.build import build_data

    for loader in ("device", "workers"):
        cfg = compose_train("augmentation=flip_crop", f"dataset.loader={loader}", "dataset.workers=0",
                            "trainer.batch_size=64", "trainer.eval_batch_size=100")
        whole = build_data(cfg, torch.device("cpu"))
        ranks = [build_data(cfg, torch.device("cpu"), rank=r, world=2) for r in (0, 1)]
        for part in ("train", "val", "test"):
            one = list(getattr(whole, part))
            shares = [list(getattr(d, part)) for d in ranks]
            assert len(shares[0]) == len(shares[1]) == len(one) == len(getattr(whole, part)), (loader, part)
            for b, (images, labels) in enumerate(one):
                (x0, y0), (x1, y1) = shares[0][b], shares[1][b]
                assert torch.equal(images[0::2], x0) and torch.equal(images[1::2], x1), (loader, part, b)
                assert torch.equal(labels[0::2], y0) and torch.equal(labels[1::2], y1)
        # 1293 training images: 20 batches of 64 and one of 13, split 7 + 6
        assert [len(y) for _, y in ranks[0].train][-1] == 7 and [len(y) for _, y in ranks[1].train][-1] == 6
        assert ranks[0].train.batch_total(20) == 13
    cfg = compose_train("trainer.batch_size=1292")  # 1293 = 1292 + 1: the last global batch has 1 image
    assert len(build_data(cfg, torch.device("cpu"), rank=1, world=2).train) == 1
    assert len(build_data(cfg, torch.device("cpu")).train) == 2


def test_a_torchrun_environment_set_by_hand_is_refused(tmp_path):
    result = run_trainkit("train", cwd=tmp_path, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert result.returncode == 2
    assert result.stderr == ("error: RANK, WORLD_SIZE set but not LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT: "
                             "this looks like one process of a torchrun launch started without torchrun; start several "
                             "processes with `trainkit train trainer.devices=N` or `torchrun --nproc-per-node=N -m trainkit "
                             "train ...`\n")
    assert not (tmp_path / "outputs").exists()
