"""The runs and sweeps under an output folder, read back from their files (nothing is indexed
separately: the folders are the record), for `trainkit runs` and `trainkit compare`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from trainkit import metrics as M
from trainkit.errors import UserError
from trainkit.run.record import RunRecord
from trainkit.status import Status


@dataclass
class Entry:
    """One row of `trainkit runs`: a run, or a sweep summed up by its best job."""

    folder: Path
    kind: str  # run | sweep
    when: datetime
    task: str
    status: str  # a run's status; a sweep's counts, e.g. '6 completed, 2 pruned'
    monitor: str | None = None
    best: float | None = None
    test_acc: float | None = None
    jobs: list[dict] = field(default_factory=list)


def is_run(folder: Path) -> bool:
    return (folder / ".hydra").is_dir() or (folder / "metrics.json").is_file()


def is_sweep(folder: Path) -> bool:
    return (folder / "multirun.yaml").is_file() or any(is_run(p) for p in subfolders(folder))


def subfolders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def started(folder: Path) -> datetime:
    """When the run began: Hydra writes .hydra/ first (the folder's own time after a copy is less telling)."""
    for p in (folder / ".hydra" / "config.yaml", folder / "multirun.yaml", folder / ".hydra", folder):
        if p.exists():
            return datetime.fromtimestamp(p.stat().st_mtime)
    return datetime.fromtimestamp(0)


def config_of(folder: Path) -> dict:
    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def run_entry(folder: Path) -> Entry:
    record = RunRecord.read(folder) or {}
    status = record.get("status") or ("failed" if (folder / ".hydra").is_dir() else "unknown")
    return Entry(folder, "run", started(folder), str(config_of(folder).get("task_name", "")), str(status),
                 record.get("monitor"), finite(record.get("best")), finite((record.get("test") or {}).get(M.TEST_ACC)),
                 [record])


def sweep_entry(folder: Path) -> Entry:
    jobs = [run_entry(p) for p in subfolders(folder) if is_run(p)]
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    monitor = next((j.monitor for j in jobs if j.monitor), None)
    mode = next((j.jobs[0].get("mode") for j in jobs if j.jobs[0].get("mode")), "max")
    scored = [j for j in jobs if j.best is not None and j.status in (Status.COMPLETED, Status.PRUNED)]
    best = (max if mode == "max" else min)(scored, key=lambda j: j.best) if scored else None
    task = next((j.task for j in jobs if j.task), "")
    if not task and (folder / "multirun.yaml").is_file():
        task = str((yaml.safe_load((folder / "multirun.yaml").read_text()) or {}).get("task_name", ""))
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no jobs"
    return Entry(folder, "sweep", started(folder), task, status, monitor, best.best if best else None,
                 best.test_acc if best else None, [j.jobs[0] for j in jobs])


def index(outputs: Path) -> list[Entry]:
    """Every run and sweep under `outputs` (its runs/ and sweeps/ folders, or any layout), newest first."""
    if not outputs.is_dir():
        raise UserError(f"runs {outputs}: no such folder; give the output root (paths.output_root, 'outputs' by default)")
    entries, stack = [], [outputs]
    while stack:
        folder = stack.pop()
        if folder != outputs and is_run(folder):
            entries.append(run_entry(folder))
        elif folder != outputs and (folder / "multirun.yaml").is_file():
            entries.append(sweep_entry(folder))
        elif folder != outputs and any(is_run(p) for p in subfolders(folder)) and folder.parent.name == "sweeps":
            entries.append(sweep_entry(folder))  # a sweep stopped before Hydra wrote multirun.yaml
        else:
            stack.extend(subfolders(folder))
    return sorted(entries, key=lambda e: e.when, reverse=True)


def finite(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


# -- compare ---------------------------------------------------------------------------------------
def flat(node, prefix: str = "") -> dict[str, object]:
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = node
    return out


def run_folder(path: Path) -> Path:
    """A run folder from what the user typed: the folder, or a file in it (metrics.json, a checkpoint)."""
    folder = path if path.is_dir() else path.parent
    if folder.name == "checkpoints":
        folder = folder.parent
    if not folder.is_dir() or not (folder / ".hydra" / "config.yaml").is_file():
        raise UserError(f"compare {path}: not a run folder (no .hydra/config.yaml); give run folders such as "
                        "outputs/runs/<date>_<task> or a sweep's job folder")
    return folder


def comparison(paths: list[Path]) -> tuple[list[Path], dict[str, list], dict[str, list]]:
    """(the run folders, the settings that differ between them, their metrics), each value per run."""
    if len(paths) < 2:
        raise UserError(f"compare: {len(paths)} run folder(s) given; compare needs at least 2")
    folders = [run_folder(p) for p in paths]
    configs = [flat(config_of(f)) for f in folders]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = {k: [c.get(k, "—") for c in configs] for k in keys
              if len({repr(c.get(k, "—")) for c in configs}) > 1 and not k.startswith(("hydra.", "resume"))}
    records = [RunRecord.read(f) or {} for f in folders]
    monitor = next((r["monitor"] for r in records if r.get("monitor")), M.VAL_ACC)
    rows = {"status": [r.get("status") for r in records],
            f"best {monitor}": [r.get("best") for r in records],
            "best epoch": [r.get("best_epoch") for r in records],
            "epochs run": [r.get("epochs_run") for r in records]}
    for name in dict.fromkeys(k for r in records for k in (r.get("final") or {})):
        rows[f"last {name}"] = [(r.get("final") or {}).get(name) for r in records]
    for name in dict.fromkeys(k for r in records for k in (r.get("test") or {})):
        rows[name] = [(r.get("test") or {}).get(name) for r in records]
    rows["wall time (s)"] = [r.get("wall_time_s") for r in records]
    return folders, differ, rows
