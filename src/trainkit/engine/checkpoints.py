"""Checkpoints as plain data: written atomically, read with weights_only=True, checked whole before use."""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import random
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from trainkit.atomic import atomic_write_bytes
from trainkit.errors import UserError

FORMAT = "trainkit-checkpoint-1"


class DictOf:
    """A dict whose values all have one type (a state_dict of tensors, the callbacks' states)."""

    def __init__(self, item: type):
        self.item = item


class Defaulted:
    """A key restore() reads with a default, so checkpoints written before it existed still resume."""

    def __init__(self, expected: type):
        self.expected = expected


# What Trainer.checkpoint_payload() writes and Trainer.restore(), cli/preflight.py and run/training.py read:
# a file missing any of it would fail mid-resume with a traceback instead of one clear line.
PAYLOAD = {
    "model": DictOf(torch.Tensor),
    "optimizer": dict,
    "schedule": {"steps_done": int, "main": dict},
    "scaler": dict,  # empty when the run had no loss scaling
    "epoch": int,
    "global_step": int,
    "batch_in_epoch": int,
    "running": {"loss_sum": float, "correct": int, "count": int, "skipped_in_epoch": Defaulted(int)},
    "skipped_steps": Defaulted(int),
    "callbacks": DictOf(dict),
    "rng": {"python": tuple, "torch": torch.Tensor,
            "numpy": {"kind": str, "keys": torch.Tensor, "pos": int, "has_gauss": int, "cached_gaussian": float}},
    "should_stop": bool,
    "metrics": dict,
    "config": dict,
    "data_spec": {"in_channels": int, "image_size": int, "num_classes": int, "class_names": list, "mean": list,
                  "std": list},
    "preprocess": DictOf(torch.Tensor),
}


def save_checkpoint(path: str | Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint's dict, or one UserError naming the file and what is wrong: never a traceback."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        path.open("rb").close()
    except OSError as e:
        raise UserError(f"checkpoint {path}: cannot be read ({e.strerror})") from None
    payload = _load_as_data(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: not a trainkit checkpoint (no '{FORMAT}' format marker)")
    check_payload(payload, path)
    return payload


def _load_as_data(path: Path, map_location):
    """torch.load(weights_only=True), every failure turned into a UserError that says refused or corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns (pickle protocol, ...) before it refuses: our one line says it all
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # garbage raises anything from KeyError to struct.error inside the unpickler
        callable_name = _named_global(e) or _foreign_global(path)
        if callable_name:
            raise UserError(f"checkpoint {path}: refused, it asks to call {callable_name}; loading it could run code "
                            "(a checkpoint is read as data only)") from None
        raise UserError(f"checkpoint {path}: truncated or corrupt, not a readable torch file ({_reason(e)})") from None


def _named_global(error: Exception) -> str | None:
    """The non-allowed callable torch refused at a GLOBAL; the anchored pattern keeps garbled names out."""
    found = re.search(r"GLOBAL ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*) (?:was not|whose module)", str(error))
    return found.group(1) if isinstance(error, pickle.UnpicklingError) and found else None


def _foreign_global(path: Path) -> str | None:
    """A non-allowed callable in a complete pickle that torch could not parse (e.g. protocol 4 from pickle.dump).

    pickletools only decodes opcodes, it runs nothing; garbage fails to decode and is reported as corrupt.
    """
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
        with path.open("rb") as file, _pickle_stream(file) as stream:
            return next((name for name in _globals_in(stream) if name not in allowed), None)
    except Exception:
        return None


def _pickle_stream(file):
    """The pickle inside: data.pkl of a torch zip file, or the file itself (legacy and raw pickles)."""
    if not zipfile.is_zipfile(file):
        file.seek(0)
        return contextlib.nullcontext(file)
    archive = zipfile.ZipFile(file)
    return archive.open(next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")))


def _globals_in(stream) -> list[str]:
    """module.name of every GLOBAL/STACK_GLOBAL, following the strings and memo that STACK_GLOBAL takes them from."""
    names, strings, memo = [], [], {}
    for op, arg, _ in pickletools.genops(stream):  # raises on garbage or a pickle without STOP
        if op.name in ("GLOBAL", "INST"):
            names.append(arg.replace(" ", "."))
        elif isinstance(arg, str) and ("STRING" in op.name or "UNICODE" in op.name):
            strings.append(arg)
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and strings:
            memo[arg] = strings[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
            strings.append(memo[arg])
        elif op.name == "STACK_GLOBAL":
            names.append(".".join(strings[-2:]) if len(strings) >= 2 else "a function it names indirectly")
    return names


def _reason(error: Exception) -> str:
    """A short technical detail for the message: torch's own words where they say something."""
    text = str(error)
    unpickler = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if unpickler:
        return unpickler.group(1)[:120]
    if isinstance(error, EOFError):
        return "the data ends too early"
    if isinstance(error, RuntimeError) and text:
        return text.splitlines()[0].split(". ")[0][:120]
    return f"{type(error).__name__}: {text.splitlines()[0][:120]}" if text else type(error).__name__


def check_payload(payload: dict, path: str | Path) -> None:
    """Every key a resume reads, with its type, so a damaged file fails here and not mid-restore."""
    _check(payload, PAYLOAD, "", path)
    _check_rng_states(payload["rng"], path)


def _check(value, expected, key: str, path) -> None:
    """Walk PAYLOAD beside the value, so the message names the full dotted key (running.count)."""
    if isinstance(expected, dict):
        _require(value, dict, key, path)
        for name, inner in expected.items():
            inner_key = f"{key}.{name}" if key else name
            if name in value:
                _check(value[name], inner, inner_key, path)
            elif not isinstance(inner, Defaulted):
                raise UserError(f"checkpoint {path}: incomplete or damaged: {inner_key} missing")
    elif isinstance(expected, DictOf):
        _require(value, dict, key, path)
        for name, item in value.items():
            _require(item, expected.item, f"{key}.{name}", path)
    elif isinstance(expected, Defaulted):
        _require(value, expected.expected, key, path)
    else:
        _require(value, expected, key, path)


def _require(value, expected: type, key: str, path) -> None:
    """isinstance, except that a bool is not an int, an int is a float, and a list is a tuple (pickle round trips)."""
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is tuple:
        ok = isinstance(value, (tuple, list))
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise UserError(f"checkpoint {path}: incomplete or damaged: {key} is {type(value).__name__}, "
                        f"expected {expected.__name__}")


def _check_rng_states(states: dict, path) -> None:
    """Load each state into a fresh generator: the global ones a resume restores are left untouched."""
    from trainkit.engine.seeding import _as_tuples

    if "cuda" in states:  # only written on a GPU; a CPU generator cannot hold it, so its type is all we check
        _require(states["cuda"], torch.Tensor, "rng.cuda", path)
    n = states["numpy"]
    checks = {
        "rng.python": lambda: random.Random().setstate(_as_tuples(states["python"])),
        "rng.numpy": lambda: np.random.RandomState().set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])),
        "rng.torch": lambda: torch.Generator().set_state(states["torch"]),
    }
    for key, load in checks.items():
        try:
            load()
        except Exception as e:
            raise UserError(f"checkpoint {path}: incomplete or damaged: {key} is not a random generator state "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """load_state_dict with a message that names the tensors that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        from trainkit.components.pretrained import misfit

        raise UserError(f"checkpoint {path}: does not fit this model: {misfit(mismatched, missing, unexpected)}")
    model.load_state_dict(state)
