"""Find what `resume=` points at: the run folder, its checkpoint and its original overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from trainkit.errors import UserError
from trainkit.run_record import COMPLETED, DIVERGED, RunRecord


def resolve_resume_target(value: str) -> tuple[Path | None, Path]:
    """(run dir, checkpoint) for resume=<run dir or checkpoint file>; no run dir for a loose .pt file."""
    path = Path(value).expanduser()
    if path.is_dir():
        checkpoint = path / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            raise UserError(f"resume={value}: {checkpoint} does not exist; give a run folder that has checkpoints/last.pt, or a .pt file")
        return path, checkpoint
    if path.is_file():
        in_run = path.parent.name == "checkpoints" and (path.parent.parent / ".hydra").is_dir()
        return (path.parent.parent if in_run else None), path
    raise UserError(f"resume={value}: no such run folder or checkpoint file")


def original_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides the run was started with (resume and run-dir ones left out)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [o for o in (yaml.safe_load(path.read_text()) or [])
            if not o.startswith(("resume=", "hydra.run.dir=", "+resume="))]


def hydra_record(run_dir: Path) -> dict:
    """Hydra's own record of how the run was composed (.hydra/hydra.yaml), or {}."""
    path = run_dir / ".hydra" / "hydra.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("hydra", {}) if path.is_file() else {}


def original_config_dirs(run_dir: Path) -> list[str]:
    """The --config-dir folders the run was started with (from Hydra's record of its config sources)."""
    sources = hydra_record(run_dir).get("runtime", {}).get("config_sources", [])
    return [s["path"] for s in sources if s.get("schema") == "file" and s.get("provider") not in ("main", "hydra", "schema")]


def original_config_name(run_dir: Path) -> str | None:
    """The root config (--config-name) the run was started with."""
    return hydra_record(run_dir).get("job", {}).get("config_name")


def refuse_unresumable(run_dir: Path) -> None:
    """A run that another process is still training cannot be continued by a second one."""
    from trainkit.run_lock import is_locked

    if is_locked(run_dir):
        raise UserError(f"resume={run_dir} is not allowed: that run is still training in another process; "
                        "wait for it to end (or stop it with Ctrl-C) and resume it then")


def find_resumable(output_root: Path, config_hash: str) -> Path | None:
    """The newest unfinished run under output_root/runs with this config and a last.pt, that no
    process is training now."""
    from trainkit.run_lock import is_locked

    runs = output_root / "runs"
    if not runs.is_dir():
        return None
    candidates = []
    for run_dir in runs.iterdir():
        record = RunRecord.read(run_dir)
        checkpoint = run_dir / "checkpoints" / "last.pt"
        # A diverged run would diverge again from the same state: only stopped or killed runs qualify.
        if record and record.get("config_hash") == config_hash and record.get("status") not in (COMPLETED, DIVERGED) \
                and checkpoint.is_file() and not is_locked(run_dir):
            candidates.append((checkpoint.stat().st_mtime, run_dir))
    return max(candidates)[1] if candidates else None
