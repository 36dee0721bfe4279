"""DDP through torchrun on CPU (gloo, 2 processes): the same training as one process, one writer, a clean stop.

The model uses norm=group: BatchNorm's statistics are per process by design (trainer.sync_bn needs CUDA),
so only a batch-independent norm lets 2 processes compute exactly what 1 process computes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import read_scalars, run_trainkit, trainkit_command

# 3 epochs of 11 global batches of 128 on digits (1293 images: the last batch has 13, split 7 + 6), on the
# workers path with a loader process per rank (torchrun's SIGTERM reaches those too).
RUN = ["trainer.epochs=3", "trainer.batch_size=128", "norm=group", "optimizer=momentum", "trainer.log_every_n_steps=1",
       "trainer.progress=false", "dataset.loader=workers", "dataset.workers=1"]
STEPS = 3 * 11
# 2 processes sum their gradients in another order than 1 process: the losses differ by ~1e-7 at first, until a
# near-tie (a max-pool, a ReLU at 0) goes the other way and the runs part visibly (here after ~9 steps). The
# first steps are compared with 1 process; a resumed 2-process run with an uninterrupted one, at every step.
FIRST_STEPS = 8
ENV = {"OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="2 processes need 2 CPU cores (gloo)")


def files_of(run_dir: Path) -> set[str]:
    """The run folder's files, event files by their folder (their names hold the pid)."""
    return {str(p.relative_to(run_dir).parent / "events") if p.name.startswith("events.") else str(p.relative_to(run_dir))
            for p in run_dir.rglob("*") if p.is_file()}


def wait_for_epochs(record: Path, epochs: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(record.read_text())["epochs_run"] >= epochs:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"no epoch {epochs} within {timeout} s")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same run in 1 process and in 2 (trainer.devices=2), each to its end."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in (("one", []), ("two", ["trainer.devices=2"])):
        result = run_trainkit("train", *RUN, *extra, f"hydra.run.dir={name}", cwd=root, env=ENV)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    return {"one": root / "one", "two": root / "two"}


def test_two_processes_train_as_one_and_only_rank_0_writes(runs):
    one, two = read_scalars(runs["one"] / "tensorboard"), read_scalars(runs["two"] / "tensorboard")
    assert [s for s, _ in two["train/loss_step"]] == [s for s, _ in one["train/loss_step"]] == list(range(1, STEPS + 1))
    # The mean loss of each global batch, as 1 process computes it.
    for (_, a), (_, b) in list(zip(two["train/loss_step"], one["train/loss_step"]))[:FIRST_STEPS]:
        assert abs(a - b) < 1e-5, (a, b)
    # Rank 0 alone wrote the folder, and what a single process writes: the same files.
    assert files_of(runs["two"]) == files_of(runs["one"])
    log = (runs["two"] / "train.log").read_text()
    assert log.count("run dir:") == 1 and "DDP: 2 processes, 64 images each" in log
    record = json.loads((runs["two"] / "metrics.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == STEPS


def test_sigterm_stops_both_processes_at_one_step_and_the_resume_continues_exactly(runs, tmp_path):
    """SIGTERM to the launcher: both ranks stop at the same step, rank 0 saves last.pt, exit 130; the resume (2
    processes again, from the run's own settings) then gives what the uninterrupted run gave, step by step."""
    launcher = subprocess.Popen([*trainkit_command(), "train", *RUN, "trainer.devices=2", "hydra.run.dir=run"],
                                cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **ENV, "COLUMNS": "200"})
    run_dir = tmp_path / "run"
    wait_for_epochs(run_dir / "metrics.json", 1, launcher)  # then stopped in epoch 2, or at its end
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, out
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "interrupted", out
    stopped_at = record["global_step"]
    assert 11 <= stopped_at < STEPS, out
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["global_step"] == stopped_at
    assert out.count("interrupted: saved") == 1  # rank 0 alone reports
    assert "Traceback" not in out

    resumed = run_trainkit("train", f"resume={run_dir}", cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"step {stopped_at}" in resumed.stdout and "DDP: 2 processes" in resumed.stdout
    assert files_of(run_dir) == files_of(runs["two"])
    cut, full = read_scalars(run_dir / "tensorboard"), read_scalars(runs["two"] / "tensorboard")
    for tag in ("train/loss_step", "train/loss", "val/loss", "test/loss", "lr"):
        assert [s for s, _ in cut[tag]] == [s for s, _ in full[tag]], tag
        assert max(abs(a - b) for (_, a), (_, b) in zip(cut[tag], full[tag])) < 1e-6, tag
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, runs["two"]))
    assert (a["status"], a["global_step"], a["test"]) == (b["status"], b["global_step"], b["test"])


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
