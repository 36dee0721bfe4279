"""Where the run computes, and in which precision."""

from __future__ import annotations

import contextlib

import torch

from trainkit.errors import allowed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise allowed("trainer.device", name, "no CUDA device is available here; use auto or cpu")
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise allowed("trainer.device", name, f"this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise allowed("trainer.device", name, "no Apple MPS device is available here; use auto or cpu")
    return torch.device(name)  # the name passed config/schema.py's rule


def resolve_precision(precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for mixed precision, or None for plain fp32 (auto on a CPU, or 32).
    `precision` passed config/schema.py's rule: auto, 32, bf16 or 16."""
    precision = str(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision in ("bf16", "16"):
        if device.type != "cuda":
            raise allowed("trainer.precision", precision, "mixed precision needs a CUDA device; use 32 or auto")
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
