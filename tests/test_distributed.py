"""DDP through torchrun on CPU (gloo, 2 processes): the same training as one process, one writer, a clean stop.

One 2-process run is stopped by SIGTERM and resumed; one 1-process run of the same length is the reference.
The model has no norm layer: BatchNorm's statistics are per process by design (trainer.sync_bn needs CUDA),
and the tiny MLP keeps the runs cheap (their cost is the processes' start, not the training); a short cnn
run checks that validation measures rank 0's BatchNorm statistics, the ones its checkpoints hold.
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

from conftest import read_scalars, trainkit_command

# Global batches of 128 on digits, 2 per epoch, on the workers path with a loader process per rank (torchrun's
# SIGTERM reaches those too); momentum, an EMA of the weights and SWA from epoch 2 on, so that a resume must restore
# the optimizer's state and both averages to continue exactly (swa.start is an epoch, not a fraction: the resume
# changes trainer.epochs).
RUN = ["trainer.batch_size=128", "trainer.limit_train_batches=2", "model=mlp", "norm=none", "schedule=constant",
       "optimizer=momentum", "trainer.log_every_n_steps=1", "trainer.progress=false", "dataset.loader=workers",
       "dataset.workers=1", "regularization=[ema,swa]", "regularization.ema.decay=0.9", "regularization.swa.start=2"]
STEPS_PER_EPOCH = 2
PLANNED = 300  # epochs: far more than run before the SIGTERM arrives
# 2 processes sum their gradients in another order than 1 process: the losses differ by ~4e-7 here. A resume
# that lost any state (the momentum, the data order, the epoch's running sums) differs by far more.
TOLERANCE = 1e-5
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
def runs(tmp_path_factory) -> dict:
    """A 2-process run (trainer.devices=2) stopped by SIGTERM to its launcher, what it left, its resume to one
    epoch past the stop, and a 1-process run of that length."""
    root = tmp_path_factory.mktemp("runs")
    two = root / "two"
    launcher = subprocess.Popen([*trainkit_command(), "train", *RUN, f"trainer.epochs={PLANNED}", "trainer.devices=2",
                                 f"hydra.run.dir={two}"], cwd=root, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env={**os.environ, **ENV, "COLUMNS": "200"})
    wait_for_epochs(two / "metrics.json", 1, launcher)
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=120)
    stopped = {"code": launcher.returncode, "out": out, "record": json.loads((two / "metrics.json").read_text()),
               "last_step": torch.load(two / "checkpoints" / "last.pt", weights_only=True)["global_step"]}
    epochs = stopped["record"]["global_step"] // STEPS_PER_EPOCH + 1  # the stopped epoch's rest, and one more
    # The resume and the 1-process run side by side: most of their time is each process's start.
    resuming, one = (subprocess.Popen([*trainkit_command(), "train", *args, f"trainer.epochs={epochs}"], cwd=root, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **ENV, "COLUMNS": "200"})
                     for args in ([f"resume={two}"], [*RUN, f"hydra.run.dir={root / 'one'}"]))
    outputs = []
    for proc in (resuming, one):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in out + err, out + err
        outputs.append(out)
    return {"one": root / "one", "two": two, "stopped": stopped, "resumed": outputs[0], "steps": epochs * STEPS_PER_EPOCH}


def test_sigterm_stops_both_processes_at_one_step_and_rank_0_saves_a_resumable_last_pt(runs):
    stopped = runs["stopped"]
    assert stopped["code"] == 130, stopped["out"]
    assert stopped["record"]["status"] == "interrupted", stopped["out"]
    at = stopped["record"]["global_step"]
    assert STEPS_PER_EPOCH <= at < PLANNED * STEPS_PER_EPOCH
    assert stopped["last_step"] == at  # both ranks stopped there: rank 0's checkpoint holds the step they agreed on
    assert stopped["out"].count("interrupted: saved") == 1  # rank 0 alone reports
    assert "Traceback" not in stopped["out"]
    assert f"step {at}" in runs["resumed"] and "DDP: 2 processes" in runs["resumed"]


def test_two_processes_train_as_one_and_the_resume_continues_exactly(runs):
    """Every step of the interrupted and resumed 2-process run is the 1-process run's (the mean loss of each
    global batch); validation and test, reduced over the ranks on the whole split, are the same too."""
    one, two = read_scalars(runs["one"] / "tensorboard"), read_scalars(runs["two"] / "tensorboard")
    for tag in ("train/loss_step", "train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "lr",
                "val/loss_ema", "val/acc_ema", "val/loss_swa", "val/acc_swa"):
        assert [s for s, _ in two[tag]] == [s for s, _ in one[tag]], tag
        assert max(abs(a - b) for (_, a), (_, b) in zip(two[tag], one[tag])) < TOLERANCE, tag
    assert [s for s, _ in two["train/loss_step"]] == list(range(1, runs["steps"] + 1))
    a, b = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("two", "one"))
    assert (a["status"], a["global_step"]) == (b["status"], b["global_step"]) == ("completed", runs["steps"])
    assert {"test/acc_ema", "test/acc_swa"} <= set(b["test"]) and all(abs(a["test"][k] - b["test"][k]) < TOLERANCE for k in b["test"])


def test_only_rank_0_writes_the_run_folder(runs):
    """What a single run writes, once: the same files, and one train.log line per start (the run and its resume)."""
    assert files_of(runs["two"]) == files_of(runs["one"])
    log = (runs["two"] / "train.log").read_text()
    assert log.count("run dir:") == 2 and log.count("DDP: 2 processes, 64 images each") == 2, log


def test_validation_with_batch_norm_measures_the_weights_rank_0_saves(tmp_path):
    """Each rank updates BatchNorm's running statistics from its own share of the batch; validation takes rank 0's
    on every rank, so the recorded val/loss is exactly what one process measures on the saved last.pt (before the
    fix the two differed in the fourth digit: the ranks validated with their own statistics). SWA's update_bn runs
    on each rank's share, and the statistics averaged over the ranks are those swa.pt holds."""
    from conftest import run_trainkit

    run = run_trainkit("train", "trainer.devices=2", "trainer.epochs=1", "trainer.limit_train_batches=3",
                       "trainer.batch_size=64", "regularization=[ema,swa]", "regularization.swa.start=1",
                       "hydra.run.dir=bn", cwd=tmp_path, env=ENV)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads((tmp_path / "bn" / "metrics.json").read_text())
    for checkpoint, suffix in (("last", ""), ("swa", "_swa")):
        evaluated = run_trainkit("eval", f"bn/checkpoints/{checkpoint}.pt", "split=val", f"name={checkpoint}",
                                 cwd=tmp_path, env=ENV)
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
        plain = json.loads((tmp_path / "bn" / "eval" / f"{checkpoint}.json").read_text())["plain"]
        assert plain["images"] == 144
        assert abs(plain["nll"] - record["final"][f"val/loss{suffix}"]) < 1e-6, checkpoint
        assert plain["acc"] == record["final"][f"val/acc{suffix}"], checkpoint
    assert 0 < record["final"]["val/acc_ema"] <= 1 and {"test/acc_ema", "test/acc_swa"} <= set(record["test"])


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
