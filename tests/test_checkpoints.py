"""Checkpoints cannot be corrupted by a crash, nor abused to run code, and a damaged one is named, never a traceback."""

from __future__ import annotations

import copy
import fcntl
import io
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_trainkit
from trainkit.atomic import atomic_write_text
from trainkit.engine.checkpoints import FORMAT, load_checkpoint, save_checkpoint
from trainkit.errors import UserError
from trainkit.engine.seeding import capture_rng_states

CORRUPT = "truncated or corrupt, not a readable torch file"


def complete_payload(version: int) -> dict:
    """Every key a resume reads, with small values: what check_payload accepts, without a training run."""
    return {
        "model": {"w": torch.full((3,), float(version))}, "optimizer": {"state": {}, "param_groups": []},
        "schedule": {"steps_done": version, "main": {}}, "scaler": {}, "epoch": version, "global_step": version,
        "batch_in_epoch": 0, "running": {"loss_sum": 0.0, "correct": 0, "count": 0}, "callbacks": {"progress": {}},
        "rng": capture_rng_states(), "should_stop": False, "metrics": {}, "config": {},
        "data_spec": {"in_channels": 1, "image_size": 8, "num_classes": 10, "class_names": list("0123456789"),
                      "mean": [0.3], "std": [0.4]},
        "preprocess": {"mean": torch.zeros(1, 1, 1, 1)},
    }


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """The checkpoints folder of a real one-epoch run, written by `trainkit train` itself."""
    root = tmp_path_factory.mktemp("real_run")
    result = run_trainkit("train", "model=mlp", "trainer.epochs=1", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run" / "checkpoints"


@pytest.fixture
def real_payload(real_run) -> dict:
    return torch.load(real_run / "last.pt", weights_only=True)


def refusal(path) -> str:
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    return str(err.value)


# -- atomic writes --------------------------------------------------------------------------------

def test_kill_during_a_write_leaves_the_previous_checkpoint_intact_and_the_next_write_clears_its_leftover(tmp_path):
    path = tmp_path / "best.pt"
    torch.save(complete_payload(1), tmp_path / "base.pt")
    writer = textwrap.dedent(f"""
        import torch
        from trainkit.engine.checkpoints import save_checkpoint
        payload = torch.load({str(tmp_path / 'base.pt')!r}, weights_only=True)
        save_checkpoint({str(path)!r}, payload)
        print("first saved", flush=True)
        payload["model"] = {{"w": torch.randn(60_000_000)}}  # 240 MB: the write takes long enough to be killed in the middle
        payload["epoch"] = 2
        save_checkpoint({str(path)!r}, payload)
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

    assert len(list(tmp_path.glob(".best.pt.*.tmp"))) == 1  # the killed write's partial file
    save_checkpoint(path, complete_payload(3))
    assert list(tmp_path.glob(".*.tmp")) == []
    assert load_checkpoint(path)["epoch"] == 3


def test_a_new_write_removes_only_stale_temporaries_of_its_own_target(tmp_path):
    stale = tmp_path / ".last.pt.k7_x0q2a.tmp"  # a name mkstemp gave before this version
    other_target = tmp_path / ".last.pt.bak.k7_x0q2a.tmp"
    other_file = tmp_path / ".best.pt.k7_x0q2a.tmp"
    live = tmp_path / ".last.pt.abcdefgh.tmp"  # another process is writing it: it holds the file's lock
    for leftover in (stale, other_target, other_file, live):
        leftover.write_bytes(b"partial")
    writer_fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(writer_fd, fcntl.LOCK_EX)
        atomic_write_text(tmp_path / "last.pt", "new")
    finally:
        os.close(writer_fd)
    assert not stale.exists()
    assert other_target.exists() and other_file.exists() and live.exists()
    assert (tmp_path / "last.pt").read_text() == "new"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_written_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "last.pt", complete_payload(1))
        atomic_write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == mode


# -- files that are not data ---------------------------------------------------------------------

class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": Exploit(marker), "epoch": 0, "global_step": 0, "config": {}}, path)
    assert refusal(path) == (f"checkpoint {path}: refused, it asks to call posix.system; loading it could run code "
                             "(a checkpoint is read as data only)")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["pickle-0", "pickle-2", "pickle-4", "pickle-5", "torch.save-protocol-4"])
def test_a_raw_pickle_exploit_is_refused_as_code_silently(tmp_path, how):
    """Protocol 4+ stops torch's reader before it meets the GLOBAL, and torch warns first: the scan still names it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how.startswith("pickle"):
        path.write_bytes(pickle.dumps({"model": Exploit(marker)}, protocol=int(how[-1])))
    else:
        torch.save({"model": Exploit(marker)}, path, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = refusal(path)
    assert message == (f"checkpoint {path}: refused, it asks to call posix.system; loading it could run code "
                       "(a checkpoint is read as data only)")
    assert [str(w.message) for w in caught] == []
    assert not marker.exists()


def test_a_text_file_is_corrupt_not_a_traceback(tmp_path):
    path = tmp_path / "text.pt"
    path.write_text("hello\n")
    assert refusal(path) == f"checkpoint {path}: {CORRUPT} (KeyError: 101)"


def test_an_empty_file_is_corrupt(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    assert refusal(path) == f"checkpoint {path}: {CORRUPT} (the data ends too early)"


def test_random_bytes_are_corrupt_never_code(tmp_path):
    path = tmp_path / "noise.pt"
    for seed in range(200):
        rng = random.Random(seed)
        path.write_bytes(rng.randbytes(rng.choice([1, 7, 100, 4096])))
        message = refusal(path)
        assert message.startswith(f"checkpoint {path}: {CORRUPT} ("), (seed, message)


def test_a_torch_zip_with_garbled_pickle_is_corrupt(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **complete_payload(1)}, buffer)
    path = tmp_path / "garbled.pt"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, random.Random(0).randbytes(len(data)) if info.filename.endswith("data.pkl") else data)
    assert refusal(path).startswith(f"checkpoint {path}: {CORRUPT} (")


def test_truncated_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "last.pt"
    payload = complete_payload(1)
    payload["model"] = {"w": torch.zeros(100_000)}  # torch's own wording below needs a file of realistic size
    save_checkpoint(path, payload)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert refusal(path) == (f"checkpoint {path}: {CORRUPT} (PytorchStreamReader failed reading zip archive: "
                             "failed finding central directory)")
    for cut in (1, 10, 100, 1000, 5000, len(data) - 1000, len(data) - 1):
        path.write_bytes(data[:cut])
        assert refusal(path).startswith(f"checkpoint {path}: {CORRUPT} ("), cut


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, complete_payload(1))
    path.chmod(0)
    assert refusal(path) == f"checkpoint {path}: cannot be read (Permission denied)"


def test_foreign_file_is_not_a_trainkit_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    assert refusal(path) == f"checkpoint {path}: not a trainkit checkpoint (no '{FORMAT}' format marker)"


def test_shape_mismatch_names_the_tensors(tmp_path):
    from trainkit.engine.checkpoints import load_model_state

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(5, 2)).state_dict()
    with pytest.raises(UserError) as err:
        load_model_state(model, state, "other.pt")
    assert str(err.value) == ("checkpoint other.pt: does not fit this model: shape mismatch in 3 tensors: "
                              "0.weight (5, 4) vs model (3, 4); 0.bias (5,) vs model (3,); 1.weight (2, 5) vs model (2, 3)")


# -- the whole payload is checked -----------------------------------------------------------------

# Every key Trainer.checkpoint_payload() writes and Trainer.restore() reads (src/trainkit/loop.py).
REQUIRED = [
    ("model",), ("optimizer",), ("schedule",), ("schedule", "steps_done"), ("schedule", "main"), ("scaler",),
    ("epoch",), ("global_step",), ("batch_in_epoch",), ("running",), ("running", "loss_sum"), ("running", "correct"),
    ("running", "count"), ("callbacks",), ("rng",), ("rng", "python"), ("rng", "torch"), ("rng", "numpy"),
    ("rng", "numpy", "kind"), ("rng", "numpy", "keys"), ("rng", "numpy", "pos"), ("rng", "numpy", "has_gauss"),
    ("rng", "numpy", "cached_gaussian"), ("should_stop",), ("metrics",), ("config",), ("data_spec",),
    ("data_spec", "in_channels"), ("data_spec", "image_size"), ("data_spec", "num_classes"),
    ("data_spec", "class_names"), ("data_spec", "mean"), ("data_spec", "std"), ("preprocess",),
]


def saved_with(tmp_path: Path, payload: dict, keys: tuple, value=None, delete: bool = False) -> Path:
    payload = copy.deepcopy(payload)
    inner = payload
    for key in keys[:-1]:
        inner = inner[key]
    if delete:
        del inner[keys[-1]]
    else:
        inner[keys[-1]] = value
    path = tmp_path / "damaged.pt"
    torch.save(payload, path)
    return path


def test_checkpoints_of_a_real_run_pass_and_leave_the_global_rngs_alone(real_run):
    python_before, numpy_before, torch_before = random.getstate(), np.random.get_state()[1], torch.get_rng_state()
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(real_run / name)
        assert payload["epoch"] == 1 and payload["format"] == FORMAT
    assert random.getstate() == python_before  # the RNG states are checked in fresh generators
    assert np.array_equal(np.random.get_state()[1], numpy_before)
    assert torch.equal(torch.get_rng_state(), torch_before)


@pytest.mark.parametrize("keys", REQUIRED, ids=".".join)
def test_each_missing_key_is_named(tmp_path, real_payload, keys):
    path = saved_with(tmp_path, real_payload, keys, delete=True)
    assert refusal(path) == f"checkpoint {path}: incomplete or damaged: {'.'.join(keys)} missing"


def test_every_key_a_real_run_writes_is_checked(tmp_path, real_payload):
    """A key added to checkpoint_payload() without a check in checkpoints.PAYLOAD fails here, not in a resume."""
    written = [(k,) for k in real_payload if k != "format"]
    written += [(k, inner) for k in ("running", "rng", "data_spec", "schedule") for inner in real_payload[k]]
    for keys in written:
        path = saved_with(tmp_path, real_payload, keys, b"not this")
        assert f": incomplete or damaged: {'.'.join(keys)} is bytes, expected " in refusal(path), keys


def test_keys_added_later_are_optional_but_checked(tmp_path, real_payload):
    """skipped_steps and running.skipped_in_epoch are read with a default: a checkpoint from before them resumes."""
    payload = copy.deepcopy(real_payload)
    payload.pop("skipped_steps", None)
    payload["running"].pop("skipped_in_epoch", None)
    path = tmp_path / "older.pt"
    torch.save(payload, path)
    assert load_checkpoint(path)["epoch"] == 1
    path = saved_with(tmp_path, payload, ("skipped_steps",), "3")
    assert refusal(path) == f"checkpoint {path}: incomplete or damaged: skipped_steps is str, expected int"


WRONG_TYPES = [
    (("epoch",), "1", "epoch is str, expected int"),
    (("epoch",), True, "epoch is bool, expected int"),
    (("global_step",), 3.0, "global_step is float, expected int"),
    (("batch_in_epoch",), None, "batch_in_epoch is NoneType, expected int"),
    (("model",), [torch.zeros(2)], "model is list, expected dict"),
    (("model", "classifier.weight"), [[0.0]], "model.classifier.weight is list, expected Tensor"),
    (("optimizer",), "adam", "optimizer is str, expected dict"),
    (("schedule", "steps_done"), "21", "schedule.steps_done is str, expected int"),
    (("schedule", "main"), [], "schedule.main is list, expected dict"),
    (("scaler",), None, "scaler is NoneType, expected dict"),
    (("running",), [0.0, 0, 0], "running is list, expected dict"),
    (("running", "loss_sum"), "nan", "running.loss_sum is str, expected float"),
    (("running", "correct"), 1.5, "running.correct is float, expected int"),
    (("callbacks",), [], "callbacks is list, expected dict"),
    (("callbacks", "best_checkpoint"), 0.8, "callbacks.best_checkpoint is float, expected dict"),
    (("rng",), None, "rng is NoneType, expected dict"),
    (("rng", "python"), "state", "rng.python is str, expected tuple"),
    (("rng", "torch"), [1, 2], "rng.torch is list, expected Tensor"),
    (("rng", "numpy", "keys"), [1], "rng.numpy.keys is list, expected Tensor"),
    (("rng", "numpy", "pos"), "624", "rng.numpy.pos is str, expected int"),
    (("should_stop",), 0, "should_stop is int, expected bool"),
    (("metrics",), None, "metrics is NoneType, expected dict"),
    (("config",), "train.yaml", "config is str, expected dict"),
    (("data_spec", "num_classes"), "10", "data_spec.num_classes is str, expected int"),
    (("data_spec", "class_names"), "0123456789", "data_spec.class_names is str, expected list"),
    (("preprocess",), None, "preprocess is NoneType, expected dict"),
    (("preprocess", "mean"), 0.3, "preprocess.mean is float, expected Tensor"),
]


@pytest.mark.parametrize("keys, value, what", WRONG_TYPES, ids=[w for _, _, w in WRONG_TYPES])
def test_each_wrong_type_is_named(tmp_path, real_payload, keys, value, what):
    path = saved_with(tmp_path, real_payload, keys, value)
    assert refusal(path) == f"checkpoint {path}: incomplete or damaged: {what}"


@pytest.mark.parametrize("keys, value", [
    (("rng", "torch"), torch.zeros(3, dtype=torch.uint8)),
    (("rng", "python"), (3, (1, 2), None)),
    (("rng", "numpy", "keys"), torch.zeros(5, dtype=torch.int64)),
    (("rng", "numpy", "kind"), "PCG64"),
])
def test_a_damaged_rng_state_is_named(tmp_path, real_payload, keys, value):
    path = saved_with(tmp_path, real_payload, keys, value)
    assert refusal(path).startswith(f"checkpoint {path}: incomplete or damaged: rng.{keys[1]} is not a random "
                                    "generator state (")


# -- issue 9: a disk that fills up during a checkpoint write ---------------------------------------

@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A finished one-epoch run whose schedule can be extended: a resume writes its next checkpoints."""
    root = tmp_path_factory.mktemp("one_epoch")
    result = run_trainkit("train", "model=mlp", "schedule=constant", "trainer.epochs=1", "logger.tensorboard.enabled=false",
                          "hydra.run.dir=run", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


def small_tmpfs(folder: Path, size_kb: int) -> None:
    """A real file system that fills up; needs the right to mount (root), else the test is skipped."""
    folder.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mount.stderr.strip() or 'mount failed'}); the file-size-limit case covers it")


def file_size_limit(limit: int):
    """RLIMIT_FSIZE in the child: a write past `limit` bytes fails with EFBIG (CPython ignores SIGXFSZ)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("how", ["full_tmpfs", "file_size_limit"])
def test_a_disk_full_during_a_checkpoint_write_is_one_named_error_and_the_previous_checkpoint_stays(one_epoch_run, tmp_path, how):
    import json
    import re
    import shutil

    from conftest import trainkit_command

    checkpoint_size = (one_epoch_run / "checkpoints" / "last.pt").stat().st_size
    preexec = None
    if how == "full_tmpfs":
        used_kb = sum(p.stat().st_size // 1024 + 4 for p in one_epoch_run.rglob("*")) + 64
        small_tmpfs(tmp_path / "disk", used_kb + checkpoint_size // 2048)  # room for half a checkpoint more
        run_dir = tmp_path / "disk" / "run"
    else:
        run_dir = tmp_path / "run"
        preexec = file_size_limit(checkpoint_size // 2)  # above every other file the run writes, below a checkpoint
    try:
        shutil.copytree(one_epoch_run, run_dir)
        before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
        env = {**os.environ, "COLUMNS": "200"}
        result = subprocess.run([*trainkit_command(), "train", f"resume={run_dir}", "trainer.epochs=3"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300, preexec_fn=preexec)
        assert result.returncode == 74, result.stdout + result.stderr
        reason = r"No space left on device \(ENOSPC\)" if how == "full_tmpfs" else r"File too large \(EFBIG\)"
        assert re.fullmatch(rf"error: could not write {re.escape(str(run_dir))}/checkpoints/(best|last)\.pt: {reason}; "
                            rf"the previous \1\.pt is intact; free some space, then continue with: trainkit train "
                            rf"resume={re.escape(str(run_dir))}\n", result.stderr), result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == before  # no temporary left either
        assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
        record = json.loads((run_dir / "metrics.json").read_text())
        assert record["status"] == "failed" and record["message"].startswith("storage: could not write ")
    finally:
        if how == "full_tmpfs":
            subprocess.run(["umount", str(tmp_path / "disk")], check=True)
