"""hydra/sweeper=trainkit_optuna: real searches on digits through the installed `trainkit` command
(real Hydra, real training, the study read back from its journal file)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_trainkit, trainkit_command

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)

# Small and quick: an MLP on digits, no image grid, no progress bar.
FAST = ("model=mlp", "logger.tensorboard.image_grid=0", "trainer.progress=false")
SEARCH = ("hydra/sweeper=trainkit_optuna", "hydra.sweeper.seed=0")
LR = "optimizer.lr=tag(log, interval(1e-6, 10.0))"  # the slow half crawls, the top end diverges


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def sweep(tmp_path: Path, *overrides: str, name: str = "sweep", timeout: float = 300):
    folder = tmp_path / name
    result = run_trainkit("train", "-m", *SEARCH, *FAST, f"hydra.sweep.dir={folder}", *overrides, cwd=tmp_path,
                          timeout=timeout, env=env())
    return result, folder


def study_of(folder: Path, storage: str | None = None):
    from trainkit.run.study import open_storage

    return optuna.load_study(study_name="trainkit", storage=open_storage(storage or str(folder / "optuna.journal")))


def job_dir(folder: Path, number: int) -> Path:
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.split("_", 1)[0] == str(number)]
    assert len(found) == 1, sorted(p.name for p in folder.iterdir())
    return found[0]


def record(folder: Path, number: int) -> dict:
    return json.loads((job_dir(folder, number) / "metrics.json").read_text())


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


@pytest.fixture(scope="module")
def pruned_sweep(tmp_path_factory):
    """One search with the median pruner over an LR range whose low half crawls: several tests read it."""
    tmp = tmp_path_factory.mktemp("pruned")
    result, folder = sweep(tmp, "optimizer=sgd", LR, "trainer.epochs=4", "hydra.sweeper.n_trials=8",
                           "hydra.sweeper.pruner=median", "hydra.sweeper.startup_trials=2")
    return result, folder


def test_pruned_trials_stop_early_keep_their_files_and_do_not_fail_the_sweep(pruned_sweep):
    result, folder = pruned_sweep
    assert result.returncode in (0, 1), result.stderr  # 1 only if a trial diverged (a real failure)
    study = study_of(folder)
    assert len(study.trials) == 8
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, states(study)
    rows = {r["job"]: r for r in csv.DictReader(open(folder / "summary.csv"))}
    for t in pruned:
        run = record(folder, t.number)
        assert run["status"] == "pruned" and run["epochs_run"] < 4
        assert "pruned at epoch" in run["message"]
        assert rows[job_dir(folder, t.number).name]["status"] == "pruned"
        assert (job_dir(folder, t.number) / "checkpoints" / "best.pt").is_file()  # kept, with its curves
        assert list((job_dir(folder, t.number) / "tensorboard").glob("events.out.tfevents.*"))
        assert t.value == t.intermediate_values[max(t.intermediate_values)]  # Optuna keeps the last report
        assert len(t.intermediate_values) == run["epochs_run"]  # one report per epoch
    failed = [r for r in rows.values() if r["status"] not in ("completed", "pruned")]
    assert result.returncode == (1 if failed else 0), result.stderr
    for t in study.trials:  # trial N ran as job N with the trial's own learning rate
        overrides = yaml.safe_load((job_dir(folder, t.number) / ".hydra" / "overrides.yaml").read_text())
        lr = next(float(o.split("=")[1]) for o in overrides if o.startswith("optimizer.lr="))
        assert math.isclose(lr, t.params["optimizer.lr"])
    # the direction came from trainer.monitor (val/acc: maximize)
    assert study.direction.name == "MAXIMIZE"


def test_job_folders_say_what_the_job_ran(pruned_sweep):
    _, folder = pruned_sweep
    names = sorted((p.name for p in folder.iterdir() if (p / ".hydra").is_dir()), key=lambda n: int(n.split("_")[0]))
    assert [n.split("_", 1)[0] for n in names] == [str(i) for i in range(8)]
    for name in names:
        # the searched value only: optimizer=sgd, trainer.epochs=4... are the same for every job
        assert "optimizer.lr=" in name and "optimizer=sgd" not in name and "/" not in name
        assert len(name.encode()) <= 83
        lr = name.split("optimizer.lr=")[1].split(",")[0]
        assert len(lr.replace("e-0", "e-").replace(".", "").lstrip("0")) <= 6  # 3 significant figures


@pytest.mark.slow  # two more searches; the median pruner's test is in the default suite
@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_rung_pruners_prune(tmp_path, pruner):
    result, folder = sweep(tmp_path, "optimizer=sgd", LR, "trainer.epochs=4", "hydra.sweeper.n_trials=6",
                           f"hydra.sweeper.pruner={pruner}")
    assert result.returncode in (0, 1), result.stderr
    assert "PRUNED" in states(study_of(folder))


def test_pruner_none_runs_every_trial_to_the_end(tmp_path):
    result, folder = sweep(tmp_path, "optimizer=adam", "optimizer.lr=tag(log, interval(1e-3, 1e-2))",
                           "trainer.epochs=2", "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=none")
    assert result.returncode == 0, result.stderr
    study = study_of(folder)
    assert states(study) == ["COMPLETE"] * 3
    assert all(record(folder, t.number)["epochs_run"] == 2 for t in study.trials)
    assert [t.value for t in study.trials] == [record(folder, t.number)["best"] for t in study.trials]
    assert (folder / "report.html").is_file() and (folder / "summary.csv").is_file()


@pytest.mark.parametrize("how", [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_killed_sweep_continues_with_the_same_command(tmp_path, how):
    """A kill (or Ctrl-C to the whole process group, as a terminal sends it) in the middle of trial 1."""
    folder = tmp_path / "sweep"
    command = [*trainkit_command(), "train", "-m", *SEARCH, *FAST, f"hydra.sweep.dir={folder}", "optimizer=adam",
               "optimizer.lr=tag(log, interval(1e-3, 1e-2))", "trainer.epochs=12", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.pruner=none"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # until trial 1 has trained an epoch
        time.sleep(0.2)
        jobs = [p for p in folder.glob("1_*") if (p / "metrics.json").is_file()] if folder.is_dir() else []
        if jobs and json.loads((jobs[0] / "metrics.json").read_text()).get("epochs_run", 0) >= 1:
            break
    os.killpg(proc.pid, how)
    proc.wait(timeout=120)
    before = study_of(folder)
    if how == signal.SIGKILL:  # nobody could tell the study: the next run finds trial 1 still running
        assert proc.returncode == -9 and states(before) == ["COMPLETE", "RUNNING"]
    else:  # Ctrl-C: the job saved last.pt, the sweeper marked its trial and queued its point again
        assert proc.returncode == 130 and states(before) == ["COMPLETE", "FAIL", "WAITING"]

    result = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    after = study_of(folder).trials
    assert after[0].params == before.trials[0].params and after[0].value == before.trials[0].value  # kept
    assert after[1].state.name == "FAIL" and after[1].user_attrs["status"] == "interrupted"
    assert after[2].params == after[1].params and after[2].user_attrs["retry_of"] == 1  # its point ran again
    assert [t.state.name for t in after] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # 3 counted
    assert len({json.dumps(t.params) for t in after if t.state.name == "COMPLETE"}) == 3  # no repeated proposal
    assert record(folder, 1)["status"] == "interrupted" and record(folder, 1)["retried"] is True


def test_parallel_trials_with_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="hydra-joblib-launcher not installed")
    result, folder = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                           "optimizer=sgd", LR, "trainer.epochs=3", "hydra.sweeper.n_trials=4",
                           "hydra.sweeper.startup_trials=1", timeout=400)
    assert result.returncode in (0, 1), result.stderr
    trials = study_of(folder).trials
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in trials)
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])  # ran at once
    for t in trials:  # each job reported to its own trial, in its own process
        run = record(folder, t.number)
        if run["status"] in ("completed", "pruned"):
            assert len(t.intermediate_values) == run["epochs_run"]
            assert math.isclose(max(t.intermediate_values.values()), run["best"])


@pytest.mark.parametrize("sampler, extra, trials", [
    ("tpe", ("optimizer=choice(sgd, adam)",), 3),
    pytest.param("cmaes", (), 3, marks=pytest.mark.slow),
    # a grid: 2 log points x 2 optimizers = 4 trials, whatever n_trials says
    ("grid", ("optimizer=choice(sgd, adam)", "hydra.sweeper.grid_points=2"), 4),
])
def test_samplers(tmp_path, sampler, extra, trials):
    result, folder = sweep(tmp_path, f"hydra.sweeper.sampler={sampler}", "optimizer.lr=tag(log, interval(1e-3, 1e-1))",
                           *extra, "trainer.epochs=1", "hydra.sweeper.n_trials=50" if sampler == "grid" else
                           f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.pruner=none")
    assert result.returncode == 0, result.stderr
    study = study_of(folder)
    assert len(study.trials) == trials
    if sampler == "grid":
        assert sorted({t.params["optimizer.lr"] for t in study.trials}) == [1e-3, 0.1]


@pytest.mark.slow
def test_timeout_stops_starting_trials(tmp_path):
    result, folder = sweep(tmp_path, "optimizer.lr=tag(log, interval(1e-3, 1e-2))", "trainer.epochs=1",
                           "hydra.sweeper.n_trials=500", "hydra.sweeper.timeout=1")
    assert result.returncode == 0, result.stderr
    assert 1 <= len(study_of(folder).trials) < 10


def test_the_optuna_preset_as_documented(tmp_path):
    """configs/hparams_search/optuna.yaml's own example line, with its study in sqlite (SQLAlchemy 2)."""
    from trainkit import configs

    from test_sweep import documented_command

    command = documented_command(Path(configs.__file__).parent / "hparams_search" / "optuna.yaml", "interval(1e-5")
    result = run_trainkit(*command, "hydra.sweeper.storage=sqlite:///study.db", "hydra.sweeper.n_trials=2",
                          "trainer.epochs=1", *FAST, cwd=tmp_path, env=env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "setup plugin" not in output
    study = optuna.load_study(study_name="trainkit", storage=f"sqlite:///{tmp_path / 'study.db'}")
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    lr = trials[0].distributions["optimizer.lr"]  # the command line's range replaced the YAML's 1e-4..1e-1
    assert (type(lr).__name__, lr.low, lr.high, lr.log) == ("FloatDistribution", 1e-5, 1e-1, True)
    assert "trainer.batch_size" in trials[0].distributions  # the rest of the YAML's space stays


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=interval(0.1, 0.01)", "hydra.sweeper.params.optimizer.lr=interval(0.1, 0.01) is not allowed: low (0.1) must be below high (0.01)"),
    pytest.param("optimizer.lr=interval(0.1, 0.1)", "low (0.1) must be below high (0.1)", marks=pytest.mark.slow),
    ("optimizer.lr=tag(log, interval(0, 1))", "a log range needs low > 0"),
    ("trainer.batch_size=range(5, 5)", "the range is empty"),
    ("optimizer=choice(sgd, nadamx)", "optimizer"),
    pytest.param("hydra.sweeper.sampler=bayes", "hydra.sweeper.sampler='bayes' is not allowed: random, tpe, grid, cmaes",
                 marks=pytest.mark.slow),
    pytest.param("hydra.sweeper.n_jobs=2", "add hydra/launcher=joblib", marks=pytest.mark.slow),
    ("hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/x", "cannot be opened"),
    ("hydra.sweeper.bogus=1", "bogus"),
])
def test_bad_search_input_is_one_line_and_exit_2(tmp_path, override, message):
    result, folder = sweep(tmp_path, "optimizer.lr=tag(log, interval(1e-3, 1e-2))", "trainer.epochs=1",
                           "hydra.sweeper.n_trials=2", override)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not folder.is_dir() or not any((p / ".hydra").is_dir() for p in folder.iterdir())  # no trial ran
