"""Where the run computes, and in which precision."""

from __future__ import annotations

import contextlib

import torch

from trainkit.errors import UserError, allowed


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
    if precision == "bf16" and device.type == "cpu":
        return torch.bfloat16  # CPU autocast: oneDNN's bf16 kernels (AMX, AVX512-BF16) where the CPU has them
    if precision in ("bf16", "16"):
        if device.type != "cuda":
            raise allowed("trainer.precision", precision, "fp16 mixed precision needs a CUDA device; use 32, bf16 or auto")
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile's default backend (inductor) cannot build kernels for `device` here, or None.

    Checked before the run, because inductor finds out only at the first compiled call, minutes in:
    on a CPU it compiles C++ with $CXX (g++ when unset), on CUDA it writes triton kernels."""
    import importlib.util
    import os
    import shutil

    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs triton (pip install triton), which is not installed"
        return None
    if device.type == "cpu":
        compiler = os.environ.get("CXX") or "g++"
        if shutil.which(compiler) is None:
            return f"torch.compile on the CPU needs a C++ compiler, and {compiler!r} ($CXX, else g++) is not found"
        return None
    return f"torch.compile is not supported here on {device.type}"


def apply_speed_settings(trainer_cfg, device: torch.device) -> None:
    """Process-wide settings the run asks for: CPU threads and cuDNN's autotuner."""
    if trainer_cfg.threads:
        torch.set_num_threads(int(trainer_cfg.threads))
    torch.backends.cudnn.benchmark = bool(trainer_cfg.cudnn_benchmark)  # read by CUDA convolutions only


def check_compilable(trainer_cfg, device: torch.device) -> None:
    if trainer_cfg.compile:
        problem = compiler_problem(device)
        if problem:
            raise UserError(f"trainer.compile=true is not allowed here: {problem}; use trainer.compile=false")
