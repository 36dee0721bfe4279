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
from trainkit.run_lock import RunLock, is_locked


def start_holder(run_dir: Path, body: str = "time.sleep(120)") -> subprocess.Popen:
    """A real second process that takes the run's lock, says so, then runs `body`."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from trainkit.run_lock import RunLock
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
        probe_code = f"from trainkit.run_lock import is_locked; print(is_locked({str(run_dir)!r}))"
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
