"""Checkpoints as plain data: written atomically, read with weights_only=True."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import torch

from trainkit.atomic import atomic_write_bytes
from trainkit.errors import UserError

FORMAT = "trainkit-checkpoint-1"
REQUIRED_KEYS = ("format", "model", "epoch", "global_step", "config")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint's dict, or one clear UserError saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        wanted = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it asks to call {wanted.group(1)}" if wanted else "it holds objects other than tensors and plain data"
        raise UserError(f"checkpoint {path}: refused, {what}; loading it could run code (a checkpoint is read as data only)") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0].split(". ")[0][:120] if str(e) else type(e).__name__
        raise UserError(f"checkpoint {path}: truncated or corrupt, not a readable torch file ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"checkpoint {path}: not a trainkit checkpoint (no '{FORMAT}' format marker)")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise UserError(f"checkpoint {path}: incomplete, missing {', '.join(missing)}")
    return payload


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """load_state_dict with a message that names the tensors that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"shape mismatch in {len(mismatched)} tensors: {'; '.join(mismatched[:4])}")
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors the model does not have (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"checkpoint {path}: does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(state)
