"""Runs that survive: killed or interrupted runs resume exactly where they stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import only_run_dir, read_scalars, run_trainkit, trainkit_command

ARGS = ("train", "trainer.epochs=4", "trainer.batch_size=32")


def start(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*trainkit_command(), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(run_dir: Path, predicate, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = run_dir / "metrics.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError:
                record = None
            if record and predicate(record):
                return record
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.005)
    raise AssertionError("timed out")


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    result = run_trainkit(*ARGS, "hydra.run.dir=full", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "full"


def test_sigkill_in_epoch_3_then_resume_is_bitwise_identical(reference, tmp_path):
    proc = start(tmp_path, *ARGS, "hydra.run.dir=cut")
    wait_for(tmp_path / "cut", lambda r: r["epochs_run"] >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert killed["status"] == "running" and killed["epochs_run"] == 2  # killed during epoch 3
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2

    resumed = run_trainkit("train", "resume=cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch 2" in resumed.stdout
    full, cut = weights(reference), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    a = json.loads((reference / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert b["status"] == "completed" and b["epochs_run"] == 4
    assert (a["final"], a["test"], a["best"], a["best_epoch"]) == (b["final"], b["test"], b["best"], b["best_epoch"])

    # The curves continue: each epoch's val/acc logged once, at the same steps as the uninterrupted run.
    ref_scalars, cut_scalars = read_scalars(reference / "tensorboard"), read_scalars(tmp_path / "cut" / "tensorboard")
    assert [s for s, _ in cut_scalars["val/acc"]] == [s for s, _ in ref_scalars["val/acc"]]
    assert cut_scalars["val/acc"] == ref_scalars["val/acc"]
    lr_steps = [s for s, _ in cut_scalars["lr"]]
    assert lr_steps == sorted(set(lr_steps)) == [s for s, _ in ref_scalars["lr"]]


def interrupted_in_epoch_2(cwd: Path, run: str) -> str:
    """The output of a run of ARGS into cwd/run, stopped by Ctrl-C just after its first epoch."""
    proc = start(cwd, *ARGS, f"hydra.run.dir={run}")
    wait_for(cwd / run, lambda r: r["epochs_run"] >= 1, proc)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    return out


def test_sigint_mid_epoch_saves_and_resumes_exactly(reference, tmp_path):
    out = interrupted_in_epoch_2(tmp_path, "cut")
    assert "continue with: trainkit train resume=" in out
    record = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    last = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert last["global_step"] == record["global_step"] > 0
    resumed = run_trainkit("train", f"resume={tmp_path / 'cut' / 'checkpoints' / 'last.pt'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    full, cut = weights(reference), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_resume_auto_finds_the_unfinished_run_of_the_same_config(reference, tmp_path):
    proc = start(tmp_path, *ARGS)
    runs = tmp_path / "outputs" / "runs"
    deadline = time.time() + 60
    while not (runs.is_dir() and any(runs.iterdir())) and time.time() < deadline:
        time.sleep(0.01)
    run_dir = next(runs.iterdir())
    wait_for(run_dir, lambda r: r["epochs_run"] >= 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    other = run_trainkit("train", "resume=auto", "trainer.epochs=1", cwd=tmp_path)  # another config: a new run
    assert other.returncode == 0 and "no unfinished run of this config" in other.stdout
    resumed = run_trainkit(*ARGS, "resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from outputs/runs/{run_dir.name}" in resumed.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    full, cut = weights(reference), weights(run_dir)
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    proc = start(tmp_path, *ARGS, "hydra.run.dir=cut")
    wait_for(tmp_path / "cut", lambda r: r["epochs_run"] >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "SIGTERM: finishing the current step, then saving last.pt" in out
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "cut" / "checkpoints" / "last.pt").is_file()


def test_second_ctrl_c_exits_at_once(tmp_path):
    # A wide ResNet on full-size batches makes one step take seconds, so the second signal lands
    # inside the step the first one asked to finish. It is sent only once the first has been
    # handled: two signals before Python's handler runs would count as one.
    proc = start(tmp_path, "train", "model=resnet", "model.width=64", "trainer.batch_size=1024",
                 "hydra.run.dir=cut")
    wait_for(tmp_path / "cut", lambda r: r["status"] == "running", proc)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 60
    while not any("finishing the current step" in line for line in lines):
        assert time.time() < deadline and proc.poll() is None, "".join(lines)
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 130, out
    assert "SIGINT again: exiting now, without saving." in out
    record = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert record["status"] == "interrupted" and "second signal" in record["message"]


def test_a_run_still_training_cannot_be_resumed_by_a_second_process(tmp_path):
    proc = start(tmp_path, "train", "trainer.epochs=200", "schedule=constant", "hydra.run.dir=live")
    try:
        wait_for(tmp_path / "live", lambda r: r["epochs_run"] >= 1, proc)
        second = run_trainkit("train", "resume=live", "trainer.epochs=300", cwd=tmp_path)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr == ("error: resume=live is not allowed: that run is still training in another process; "
                                 "wait for it to end (or stop it with Ctrl-C) and resume it then\n")
        assert proc.poll() is None  # the first run goes on, its folder untouched
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    resumed = run_trainkit("train", "resume=live", "trainer.epochs=2", cwd=tmp_path)  # now free: the lock died with it
    assert resumed.returncode == 0 or "trainer.epochs=2 is not allowed on resume" in resumed.stderr, resumed.stderr


def test_resume_auto_skips_a_run_another_process_holds(tmp_path):
    from trainkit.run.resume import find_resumable
    from trainkit.run.run_lock import RunLock

    run_dir = tmp_path / "runs" / "a"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted", "config_hash": "h"}))
    with RunLock(run_dir):
        assert find_resumable(tmp_path, "h") is None
    assert find_resumable(tmp_path, "h") == run_dir


def test_ctrl_c_stops_the_whole_sweep(tmp_path):
    proc = start(tmp_path, "train", "-m", "trainer.seed=1,2,3", "trainer.epochs=100", "schedule=constant",
                 "hydra.sweep.dir=sweep")
    wait_for(tmp_path / "sweep" / "0_trainer.seed=1", lambda r: r["epochs_run"] >= 1, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "the sweep stops here" in out
    assert not list((tmp_path / "sweep").glob("1_*"))  # the jobs after it never started
    rows = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert len(rows) == 2 and ",interrupted," in rows[1]


# -- issue 9: a resume never moves a run backwards; run folders are data; any path resumes --------

def test_resume_from_best_pt_branches_into_a_new_folder_and_leaves_the_run_as_it_was(tmp_path):
    """The issue's data loss: best.pt (epoch 1) of a run at epoch 2 used to continue in place,
    overwriting last.pt and metrics.json. Now it continues in a new folder with the run's settings."""
    import shutil

    import yaml

    first = run_trainkit("train", "model=mlp", "schedule=constant", "logger.tensorboard.enabled=false",
                         "trainer.epochs=1", "hydra.run.dir=r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    shutil.copy(tmp_path / "r" / "checkpoints" / "last.pt", tmp_path / "epoch1.pt")
    longer = run_trainkit("train", "resume=r", "trainer.epochs=2", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    shutil.copy(tmp_path / "epoch1.pt", tmp_path / "r" / "checkpoints" / "best.pt")  # best at epoch 1, last at 2
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "r").rglob("*") if p.is_file()}

    branch = run_trainkit("train", "resume=r/checkpoints/best.pt", cwd=tmp_path)
    assert branch.returncode == 0, branch.stdout + branch.stderr
    new = only_run_dir(tmp_path)
    assert f"branched from r/checkpoints/best.pt (epoch 1) into {new}; r is left as it was" in branch.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "r").rglob("*") if p.is_file()} == before
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs_run"] == 2
    record = json.loads((new / "metrics.json").read_text())
    assert record["status"] == "completed" and record["epochs_run"] == 2
    assert torch.load(new / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert torch.load(new / "checkpoints" / "best.pt", weights_only=True)["epoch"] in (1, 2)  # its own best.pt
    overrides = yaml.safe_load((new / ".hydra" / "overrides.yaml").read_text())
    assert "model=mlp" in overrides and "schedule=constant" in overrides  # the run's settings, re-used


def test_targets_from_a_run_folder_must_be_classes_trainkit_builds_or_typed_by_the_user(tmp_path):
    """Real Hydra composition: torch.nn.Hardswish (a module class) may come from a folder;
    builtins.print and torch.hub.load (functions) only when the user types them."""
    from trainkit.errors import UserError
    from trainkit.cli.preflight import ConfigSources
    from trainkit.cli.trust import FolderSettings, check_folder_settings

    def check(folder_line: str, typed: tuple[str, ...] = ()) -> None:
        overrides = ["model=mlp", folder_line, *typed]
        check_folder_settings(FolderSettings(tmp_path, ("model=mlp", folder_line)), list(typed), overrides,
                              ConfigSources(), ConfigSources())

    check("activation._target_=torch.nn.Hardswish")
    check("augmentation.train=[{_target_: albumentations.HorizontalFlip}]")
    for target in ("builtins.print", "torch.hub.load", "torch.distributed.elastic.multiprocessing.subprocess_handler"
                   ".subprocess_handler.SubprocessHandler", "os.makedirs"):
        with pytest.raises(UserError, match=f"activation._target_={re.escape(target)} comes from its .hydra/overrides.yaml"):
            check(f"activation._target_={target}")
    check("activation._target_=builtins.print", typed=("activation._target_=builtins.print",))  # the user's own choice


@pytest.mark.parametrize("value", ["a b", "runs_é/r1", "it's", 'say "hi"', "back\\slash", "trail\\", "q\\'", "${oc.env:HOME}",
                                   "\\${x}", "a=b,c [x] {y}:", "~/x 100%", "'", ""])
def test_paths_are_handed_to_hydra_quoted_and_read_back_exactly(compose_train, value):
    from trainkit.cli.preflight import hydra_quoted

    assert compose_train(f"+probe={hydra_quoted(value)}").probe == value


def test_the_printed_continue_command_works_pasted_into_bash_under_any_path(tmp_path):
    """A launch folder with spaces, unicode, both quotes and a $ in its name: Hydra's grammar used
    to reject the path trainkit handed it, and the printed command was not quoted for the shell."""
    launch = tmp_path / "runs é 'q' \"d\" $HOME"
    launch.mkdir()
    command = re.search(r"continue with: (.*)\n", interrupted_in_epoch_2(launch, "r1")).group(1)
    env = {**os.environ, "PATH": f"{Path(trainkit_command()[0]).parent}:{os.environ['PATH']}", "COLUMNS": "200"}
    pasted = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert pasted.returncode == 0, command + "\n" + pasted.stdout + pasted.stderr
    assert f"resumed from {launch / 'r1' / 'checkpoints' / 'last.pt'}" in pasted.stdout
    record = json.loads((launch / "r1" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["epochs_run"] == 4
