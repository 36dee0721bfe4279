"""Sweeps past one process with Hydra's launcher plugins: joblib (hydra/launcher=parallel), submitit run locally
(hydra/launcher=slurm_local) and on SLURM (hydra/launcher=slurm, composed and instantiated: no cluster here)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_trainkit, trainkit_command

QUICK = ["trainer.epochs=1", "trainer.limit_train_batches=3", "trainer.progress=false"]


def only_sweep(root: Path) -> Path:
    (sweep,) = (root / "outputs" / "sweeps").iterdir()
    return sweep


def summary(sweep: Path, name: str = "summary.csv") -> list[dict]:
    """The rows, each job by its number (its folder is `<number>_<what it varies>`)."""
    rows = list(csv.DictReader(open(sweep / name)))
    return [{**r, "job": r["job"].split("_")[0]} if "job" in r else r for r in rows]


def job_dir(sweep: Path, number: str) -> Path:
    (folder,) = sweep.glob(f"{number}_*")
    return folder


def test_joblib_runs_four_jobs_two_at_a_time_and_pools_the_seeds(tmp_path):
    result = run_trainkit("train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optimizer=sgd,adam",
                          "trainer.seed=1,2", *QUICK, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = only_sweep(tmp_path)
    rows = summary(sweep)
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]
    assert {r["status"] for r in rows} == {"completed"}
    # joblib ran them in its worker processes, not in the sweep's process: each job's train.log names its pid
    pooled = summary(sweep, "summary_over_seeds.csv")
    assert sorted(r["config"] for r in pooled) == ["optimizer=adam", "optimizer=sgd"]
    assert all(r["runs"] == "2" and r["completed"] == "2" for r in pooled)
    assert "summary over seeds" in result.stdout


def test_submitit_runs_each_job_as_its_own_local_process(tmp_path):
    result = run_trainkit("train", "-m", "hydra/launcher=slurm_local", "optimizer=sgd,adam", *QUICK, cwd=tmp_path,
                          env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = only_sweep(tmp_path)
    rows = summary(sweep)
    assert sorted(r["job"] for r in rows) == ["0", "1"] and {r["status"] for r in rows} == {"completed"}
    logs = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # submitit's own record of each job
    assert all((job_dir(sweep, j) / "checkpoints" / "best.pt").is_file() for j in ("0", "1"))


def test_ctrl_c_on_a_joblib_sweep_saves_the_running_jobs_skips_the_rest_and_writes_the_summary(tmp_path):
    """A terminal's Ctrl-C reaches the sweep and its jobs (one process group): the running jobs save last.pt,
    the others never start, the summary is written, exit 130, as with the basic launcher."""
    args = ["train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optimizer=sgd,adam",
            "trainer.seed=1,2", "trainer.epochs=200", "trainer.progress=false", "hydra.sweep.dir=sweep"]
    sweep = subprocess.Popen([*trainkit_command(), *args], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
                             start_new_session=True)  # its own process group, as a terminal's foreground job
    deadline = time.time() + 240
    while time.time() < deadline and not all(
            any((tmp_path / "sweep").glob(f"{j}_*/tensorboard")) for j in ("0", "1")):
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(sweep.pid, signal.SIGINT)
    out, _ = sweep.communicate(timeout=180)
    assert sweep.returncode == 130, out
    assert (tmp_path / "sweep" / "summary.csv").is_file(), out
    rows = {r["job"]: r for r in summary(tmp_path / "sweep")}
    assert sorted(rows) == ["0", "1", "2", "3"], out
    assert {rows[j]["status"] for j in rows} == {"interrupted"}
    for job in ("0", "1"):
        assert (job_dir(tmp_path / "sweep", job) / "checkpoints" / "last.pt").is_file()
        record = json.loads((job_dir(tmp_path / "sweep", job) / "metrics.json").read_text())
        assert record["global_step"] > 0
    assert rows["2"]["message"] == rows["3"]["message"] == "not started: the sweep was stopped"
    assert "Traceback" not in out
    assert not (tmp_path / "sweep" / ".stop").exists()


def test_the_slurm_launcher_composes_and_is_instantiated():
    """What can be checked without a cluster: the preset with a user's overrides composes, and Hydra's
    submitit plugin builds its SLURM launcher from it with the sbatch parameters."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="trainkit.configs", version_base=None):  # as the CLI finds them
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
            "hydra.launcher.gpus_per_node=2", "hydra.launcher.array_parallelism=4",
            "+hydra.launcher.additional_parameters.account=proj"])
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert {k: launcher.params[k] for k in ("partition", "timeout_min", "gpus_per_node", "array_parallelism")} == \
        {"partition": "gpu", "timeout_min": 90, "gpus_per_node": 2, "array_parallelism": 4}
    assert launcher.params["additional_parameters"] == {"account": "proj"}
    assert launcher.params["cpus_per_task"] == 8 and launcher.params["mem_gb"] == 32


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="this machine has sbatch: a SLURM sweep would start")
def test_a_slurm_sweep_without_sbatch_is_refused_before_anything_is_written(tmp_path):
    result = run_trainkit("train", "-m", "hydra/launcher=slurm", "optimizer=sgd,adam", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("error: hydra/launcher=slurm is not allowed here: sbatch is not on PATH (submitit submits the "
                             "jobs with it); start the sweep on the cluster's login node, or try it here with "
                             "hydra/launcher=slurm_local\n")
    assert not (tmp_path / "outputs").exists()


def test_a_job_that_saw_the_sweeps_stop_file_still_saves_on_its_first_ctrl_c(tmp_path):
    """The race behind a flaky joblib Ctrl-C: the sweep process writes its stop file on SIGINT while the same
    SIGINT (one process group) reaches a job; a job whose handler ran after the file appeared took the file for
    a first signal and the SIGINT for a second one, and exited without saving. A file is not a signal."""
    from trainkit.engine.interrupts import StopRequest

    stop_file = tmp_path / "stop"
    stop_file.write_text("SIGINT\n")
    forced = []
    with StopRequest(on_force_exit=lambda: forced.append(True), stop_file=stop_file) as request:
        assert request.requested == "the sweep was stopped"
        os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
        time.sleep(0.1)
        assert forced == [] and request.requested == "the sweep was stopped"
        with pytest.raises(SystemExit) as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert second.value.code == 128 + signal.SIGINT and forced == [True]
