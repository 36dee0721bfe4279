"""One trainkit process per run folder, and a killed process never leaves its run locked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainkit.errors import UserError
from trainkit.run.run_lock import RunLock, is_locked


def start_holder(run_dir: Path, body: str = "time.sleep(120)") -> subprocess.Popen:
    """A real second process that takes the run's lock, says so, then runs `body`."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from trainkit.run.run_lock import RunLock
        with RunLock({str(run_dir)!r}):
            print("locked", flush=True)
    """) + textwrap.indent(textwrap.dedent(body), "    ")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def in_use(run_dir: Path, pid: int) -> str:
    return f"{run_dir} is in use by another trainkit process (pid {pid}); wait for it to end or choose another run"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return tmp_path / "run"


def test_a_second_process_is_refused_while_the_first_holds_the_run(run_dir):
    holder = start_holder(run_dir)
    try:
        assert is_locked(run_dir)
        with pytest.raises(UserError) as err:
            RunLock(run_dir).acquire()
        assert str(err.value) == in_use(run_dir, holder.pid)
        assert (run_dir / ".lock").read_text() == f"{holder.pid} {socket.gethostname()}\n"
    finally:
        holder.kill()
        holder.wait()


def test_after_sigkill_of_the_holder_its_stale_lock_file_blocks_nobody(run_dir):
    holder = start_holder(run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run_dir / ".lock").read_text().startswith(f"{holder.pid} ")  # left behind: it had no chance to clean up
    assert not is_locked(run_dir)
    with RunLock(run_dir):
        assert (run_dir / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        assert is_locked(run_dir)
    assert not is_locked(run_dir)


def test_a_holder_that_ends_normally_removes_its_lock_file(run_dir):
    holder = start_holder(run_dir, "sys.stdin.readline()")
    assert is_locked(run_dir)
    holder.communicate("done\n", timeout=30)
    assert holder.returncode == 0
    assert not (run_dir / ".lock").exists()
    assert not is_locked(run_dir)


def test_a_forked_child_does_not_keep_the_lock_after_its_parent_is_killed(run_dir):
    """DataLoader workers are forked from the training process: they must not hold the run once it is gone."""
    holder = start_holder(run_dir, """
        if os.fork() == 0:
            print(os.getpid(), flush=True)  # the at-fork hooks have run by the time the child's code does
            time.sleep(120)
            os._exit(0)
        time.sleep(120)
    """)
    child = int(holder.stdout.readline())
    try:
        assert is_locked(run_dir)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the forked child is still alive ...
        assert not is_locked(run_dir)  # ... and the run is free
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_lock_is_held_for_the_life_of_the_with_block(run_dir):
    lock = RunLock(run_dir)
    with lock:
        assert lock.acquire() is lock  # already held: a no-op, not a refusal of itself
        probe_code = f"from trainkit.run.run_lock import is_locked; print(is_locked({str(run_dir)!r}))"
        probe = subprocess.run([sys.executable, "-c", probe_code], capture_output=True, text=True, check=True)
        assert probe.stdout.strip() == "True"
        with pytest.raises(UserError) as err:
            RunLock(run_dir).acquire()
        assert str(err.value) == in_use(run_dir, os.getpid())
    assert not (run_dir / ".lock").exists()
    RunLock(run_dir).acquire().release()  # free again


def test_is_locked_on_a_run_without_a_lock_creates_nothing(run_dir):
    run_dir.mkdir()
    assert not is_locked(run_dir)
    assert not is_locked(run_dir / "missing")
    assert list(run_dir.iterdir()) == []


# -- issue 9: the lock is taken before Hydra writes anything -------------------------------------

def start_trainkit(cwd: Path, *args: str) -> subprocess.Popen:
    from conftest import trainkit_command

    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("TRAINKIT_OUTPUT_DIR", None)
    return subprocess.Popen([*trainkit_command(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


REFUSALS = r"error: (\S+ is in use by another trainkit process \(pid \d+\); wait for it to end or choose another run" \
           r"|hydra\.(run|sweep)\.dir='shared' already holds a (run|sweep); .*)\n"


def test_of_two_runs_started_at_once_into_one_folder_the_loser_writes_nothing(tmp_path):
    """Three tries of two real processes racing for one hydra.run.dir: the folder's .hydra/ record
    and train.log are the winner's alone (the loser used to rewrite them before being refused)."""
    import json
    import re

    import yaml

    rates = ("0.001", "0.002")
    for attempt in range(3):
        cwd = tmp_path / str(attempt)
        cwd.mkdir()
        procs = [start_trainkit(cwd, "train", "model=mlp", "trainer.epochs=1", "logger.tensorboard.enabled=false",
                                f"optimizer.lr={lr}", "hydra.run.dir=shared") for lr in rates]
        outputs = [p.communicate(timeout=600) for p in procs]
        codes = [p.returncode for p in procs]
        assert sorted(codes) == [0, 2], (codes, outputs)
        winner = codes.index(0)
        assert re.fullmatch(REFUSALS, outputs[1 - winner][1]), outputs[1 - winner]
        lr, other = rates[winner], rates[1 - winner]
        hydra_dir = cwd / "shared" / ".hydra"
        assert f"optimizer.lr={lr}" in yaml.safe_load((hydra_dir / "overrides.yaml").read_text())
        assert str(yaml.safe_load((hydra_dir / "config.yaml").read_text())["optimizer"]["lr"]) == lr
        assert f"optimizer.lr={lr}" in yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]["overrides"]["task"]
        assert f"optimizer.lr={lr}" in json.loads((cwd / "shared" / "metrics.json").read_text())["overrides"]
        log = (cwd / "shared" / "train.log").read_text()
        assert log.count("run dir: ") == 1 and other not in log and "error" not in log
        assert not (cwd / "shared" / ".lock").exists()  # released by the winner when it ended


def test_of_two_sweeps_started_at_once_into_one_folder_the_loser_writes_nothing(tmp_path):
    import re

    import yaml

    procs = [start_trainkit(tmp_path, "train", "-m", "model=mlp", "trainer.epochs=1", "logger.tensorboard.enabled=false",
                            f"optimizer.lr={lr}", "hydra.sweep.dir=shared") for lr in ("0.001", "0.002")]
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, outputs)
    winner = codes.index(0)
    assert re.fullmatch(REFUSALS, outputs[1 - winner][1]), outputs[1 - winner]
    lr = ("0.001", "0.002")[winner]
    assert f"optimizer.lr={lr}" in yaml.safe_load((tmp_path / "shared" / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["0", "multirun.yaml", "report.html", "summary.csv"]
    assert f"optimizer.lr={lr}" in yaml.safe_load((tmp_path / "shared" / "0" / ".hydra" / "overrides.yaml").read_text())


def test_a_claimed_folder_is_taken_over_by_the_runs_own_lock_in_the_same_process(run_dir):
    """The CLI claims the folder before Hydra starts; the run's RunLock in the same process takes the
    claim over instead of refusing itself (flock on a second descriptor would conflict)."""
    from trainkit.run.run_lock import claim

    claimed = claim(run_dir)
    assert is_locked(run_dir)
    with RunLock(run_dir) as lock:
        assert lock._fd is not None and claimed._fd is None
        assert is_locked(run_dir)
    assert not is_locked(run_dir) and not (run_dir / ".lock").exists()
    with pytest.raises(UserError):  # a plain second RunLock in one process is still refused
        with RunLock(run_dir):
            RunLock(run_dir).acquire()


def test_a_claim_refused_by_its_check_leaves_no_folder_behind(tmp_path):
    from trainkit.run.run_lock import claim

    def used():
        raise UserError("already holds a run")

    with pytest.raises(UserError):
        claim(tmp_path / "new" / "run", used)
    assert list(tmp_path.iterdir()) == []
