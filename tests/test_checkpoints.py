"""Checkpoints cannot be corrupted by a crash, nor abused to run code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from trainkit.checkpoints import FORMAT, load_checkpoint, save_checkpoint
from trainkit.errors import UserError


def minimal_payload(version: int) -> dict:
    return {"model": {"w": torch.full((3,), float(version))}, "epoch": version, "global_step": version, "config": {}}


def test_kill_during_a_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "best.pt"
    writer = textwrap.dedent(f"""
        import sys, torch
        from trainkit.checkpoints import save_checkpoint
        save_checkpoint({str(path)!r}, {{"model": {{"w": torch.full((3,), 1.0)}}, "epoch": 1, "global_step": 1, "config": {{}}}})
        print("first saved", flush=True)
        big = torch.randn(60_000_000)  # 240 MB: the write takes long enough to be killed in the middle
        save_checkpoint({str(path)!r}, {{"model": {{"w": big}}, "epoch": 2, "global_step": 2, "config": {{}}}})
        print("second saved", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first saved"
    deadline = time.time() + 60
    while not list(tmp_path.glob(".best.pt.*.tmp")):  # the second write has begun
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    payload = load_checkpoint(path)
    assert payload["epoch"] == 1
    assert torch.equal(payload["model"]["w"], torch.full((3,), 1.0))


def test_a_pickle_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": Exploit(), "epoch": 0, "global_step": 0, "config": {}}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"checkpoint {path}: refused, it asks to call posix.system; loading it could run code "
                              "(a checkpoint is read as data only)")
    assert not marker.exists()


def test_truncated_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, minimal_payload(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"^checkpoint .*last\.pt: truncated or corrupt, not a readable torch file"):
        load_checkpoint(path)


def test_foreign_file_is_not_a_trainkit_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"checkpoint {path}: not a trainkit checkpoint (no '{FORMAT}' format marker)"


def test_shape_mismatch_names_the_tensors(tmp_path):
    from trainkit.checkpoints import load_model_state

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2)).state_dict()
    with pytest.raises(UserError) as err:
        load_model_state(model, state, "other.pt")
    assert str(err.value) == ("checkpoint other.pt: does not fit this model: shape mismatch in 3 tensors: "
                              "0.weight (5, 4) vs model (3, 4); 0.bias (5,) vs model (3,); 1.weight (2, 5) vs model (2, 3)")
