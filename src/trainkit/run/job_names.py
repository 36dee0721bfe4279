"""Sweep job folders named by what the job ran, safe on every file system:
    hydra.sweep.subdir: ${job_folder:${hydra.job.num},${hydra.overrides.task},${hydra.sweep.dir}}
gives 3_optimizer=adam,schedule=step: the job number, then the overrides the sweep varies (those
written with sweep syntax on the command line or in hydra.sweeper.params; every override when the
sweep's multirun.yaml is not there to say), sorted by key. Floats are cut to 3 significant figures,
characters that some file system refuses become _, and the name stops at 80 bytes. TensorBoard then
shows `3_optimizer=adam,schedule=step/tensorboard` instead of `3/tensorboard`; the number in front
keeps each name unique.

The resolver must be registered in every process that resolves a job's config: cli/train.py (the
Hydra app) registers it when imported, which joblib workers do when they unpickle the task."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

MAX_NAME = 80  # bytes; NAME_MAX is 255, and Windows paths stop at 260 characters in all, so stay short
UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')  # forbidden on Windows (and / everywhere); control characters
FLOAT = re.compile(r"(?<=[=,\[ ])(-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+)(?=$|[,\] ])")
RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM\d|LPT\d)(\..*)?$", re.IGNORECASE)  # Windows device names
NOT_NAMED = ("hparams_search", "experiment", "resume")  # the same for every job of a sweep


def short_floats(text: str) -> str:
    """Each float value of an override line to 3 significant figures: `lr=0.0012345678` -> `lr=0.00123`."""
    return FLOAT.sub(lambda m: f"{float(m.group(1)):.3g}", str(text))


def safe_name(text: str, max_bytes: int = MAX_NAME) -> str:
    """`optimizer.lr=0.0012345678,optimizer=adam` -> `optimizer.lr=0.00123,optimizer=adam`."""
    text = short_floats(text)
    text = UNSAFE.sub("_", text).strip(" .")  # Windows drops trailing dots and spaces
    if RESERVED.match(text):
        text = "_" + text
    if len(text.encode()) > max_bytes:
        text = text.encode()[: max_bytes - 1].decode(errors="ignore").rstrip(" .") + "~"
    return text


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


@lru_cache(maxsize=8)
def swept_keys(multirun: Path, mtime_ns: int) -> frozenset[str] | None:
    """The keys a sweep varies: its command line's sweeps and its search space (hydra.sweeper.params)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(multirun)
    task = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
    try:
        parsed = OverridesParser.create().parse_overrides(task)
    except Exception:  # not ours to judge here: name the job by all its overrides
        return None
    keys = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    keys |= {str(k) for k in (OmegaConf.select(cfg, "hydra.sweeper.params") or {})}
    return frozenset(keys)


def job_folder(number, overrides=(), sweep_dir: str | None = None) -> str:
    overrides = [str(o) for o in overrides if key_of(str(o)) not in NOT_NAMED]
    multirun = Path(str(sweep_dir)) / "multirun.yaml" if sweep_dir else None
    if multirun is not None and multirun.is_file():
        keys = swept_keys(multirun, multirun.stat().st_mtime_ns)
        if keys is not None:
            overrides = [o for o in overrides if key_of(o) in keys]
    name = safe_name(",".join(sorted(overrides, key=key_of)))
    return f"{number}_{name}" if name else str(number)


def register() -> None:
    if not OmegaConf.has_resolver("job_folder"):
        OmegaConf.register_new_resolver("job_folder", job_folder)
