"""Find what `resume=` points at: the run folder, its checkpoint and its original overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from trainkit.errors import UserError
from trainkit.run.record import RunRecord
from trainkit.status import Status

# A run continues in place only from its own newest state, checkpoints/last.pt; best.pt or any other
# checkpoint in a run folder continues into a new folder (a branch), so no run ever moves backwards.
CHECKPOINT_DIR, LAST_NAME = "checkpoints", "last.pt"


def resume_value(raw: str) -> str:
    """The value of resume= as typed: taken raw, not through Hydra's grammar, so any path works
    unquoted; a value quoted for Hydra ('my run') is unquoted. Empty is refused: it usually comes
    from an unset shell variable, and the user asked to resume, not to start a new run."""
    value = raw
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" and not Path(raw).expanduser().exists():
        from hydra.core.override_parser.overrides_parser import OverridesParser

        try:
            value = str(OverridesParser.create().parse_override(f"resume={raw}").value())
        except Exception:  # not a Hydra-quoted string after all: the raw text is the path
            value = raw
    if not value.strip():
        raise UserError(f"resume={raw} is not allowed: it is empty (an unset shell variable?); give a run folder, "
                        "a checkpoint file or auto, or leave resume= out to start a new run")
    return value


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint file lies in (<run>/checkpoints/x.pt), or None for a loose file."""
    in_run = checkpoint.parent.name == CHECKPOINT_DIR and (checkpoint.parent.parent / ".hydra").is_dir()
    return checkpoint.parent.parent if in_run else None


def resolve_resume_target(value: str) -> tuple[Path | None, Path]:
    """(run dir, checkpoint) for resume=<run dir or checkpoint file>; no run dir for a loose .pt file."""
    path = Path(value).expanduser()
    if path.is_dir():
        checkpoint = path / CHECKPOINT_DIR / LAST_NAME
        if not checkpoint.is_file():
            raise UserError(f"resume={value}: {checkpoint} does not exist; give a run folder that has checkpoints/last.pt, or a .pt file")
        return path, checkpoint
    if path.is_file():
        return run_folder_of(path), path
    raise UserError(f"resume={value}: no such run folder or checkpoint file")


def continues_in_place(run_dir: Path | None, checkpoint: Path) -> bool:
    """Whether the run goes on in `run_dir` itself: only from its own last.pt."""
    return run_dir is not None and checkpoint.resolve() == (run_dir / CHECKPOINT_DIR / LAST_NAME).resolve()


def original_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides the run was started with (resume= left out: this resume sets its own).

    Data from the run folder, not trusted: trainkit.cli.trust checks what they would build."""
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = read_yaml(path) if path.is_file() else []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides or []):
        raise UserError(f"resume={run_dir}: {path} is not a list of overrides (a damaged run folder)")
    return [o for o in overrides or [] if not o.lstrip("+").startswith("resume=")]


def hydra_record(run_dir: Path) -> dict:
    """Hydra's own record of how the run was composed (.hydra/hydra.yaml), or {}."""
    path = run_dir / ".hydra" / "hydra.yaml"
    record = (read_yaml(path) or {}) if path.is_file() else {}
    hydra = record.get("hydra") if isinstance(record, dict) else None
    return hydra if isinstance(hydra, dict) else {}


def read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"resume={path.parent.parent}: {path} cannot be read ({type(e).__name__}); a damaged run folder") from None


def original_config_dirs(run_dir: Path) -> list[str]:
    """The --config-dir folders the run was started with (from Hydra's record of its config sources).

    Read from the run folder, so not trusted: what they hold is checked like the folder's overrides."""
    sources = (hydra_record(run_dir).get("runtime") or {}).get("config_sources") or []
    return [s["path"] for s in sources if isinstance(s, dict) and s.get("schema") == "file"
            and s.get("provider") not in ("main", "hydra", "schema") and isinstance(s.get("path"), str)]


def original_config_name(run_dir: Path) -> str | None:
    """The root config (--config-name) the run was started with."""
    name = (hydra_record(run_dir).get("job") or {}).get("config_name")
    return name if isinstance(name, str) else None


def refuse_unresumable(run_dir: Path) -> None:
    """A run that another process is still training cannot be continued by a second one."""
    from trainkit.run.run_lock import is_locked

    if is_locked(run_dir):
        raise UserError(f"resume={run_dir} is not allowed: that run is still training in another process; "
                        "wait for it to end (or stop it with Ctrl-C) and resume it then")


def find_resumable(output_root: Path, config_hash: str) -> Path | None:
    """The newest unfinished run under output_root/runs with this config and a last.pt, that no
    process is training now."""
    from trainkit.run.run_lock import is_locked

    runs = output_root / "runs"
    if not runs.is_dir():
        return None
    candidates = []
    for run_dir in runs.iterdir():
        record = RunRecord.read(run_dir)
        checkpoint = run_dir / "checkpoints" / "last.pt"
        # A diverged run would diverge again from the same state: only stopped or killed runs qualify.
        if record and record.get("config_hash") == config_hash and record.get("status") not in (Status.COMPLETED, Status.DIVERGED) \
                and checkpoint.is_file() and not is_locked(run_dir):
            candidates.append((checkpoint.stat().st_mtime, run_dir))
    return max(candidates)[1] if candidates else None
