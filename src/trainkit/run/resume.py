"""Find what `resume=` points at (the run folder, its checkpoint and its original overrides), and
check that the checkpoint can continue this config (check_resumable)."""

from __future__ import annotations

from pathlib import Path

import yaml

from omegaconf import DictConfig, OmegaConf

from trainkit.config.targets import current_targets
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


# What a resumed run must share with the run it continues: anything else changes the training
# it is meant to continue (and optimizer or schedule state would not fit the new objects).
SAME_ON_RESUME = ("model", "norm", "activation", "init", "optimizer", "schedule", "regularization", "augmentation",
                  "dataset.name", "dataset.root", "dataset.val_fraction", "dataset.test_fraction", "dataset.preprocess",
                  "dataset.class_weights", "dataset.balanced_sampler", "dataset.split_seed", "dataset.resize",
                  "trainer.batch_size", "trainer.seed",
                  "trainer.limit_train_batches", "trainer.overfit_batches", "trainer.monitor", "trainer.mode")
# Schedules planned for the run's whole length: extending trainer.epochs would replan them mid-run.
LENGTH_PLANNED_SCHEDULES = ("trainkit.components.schedules.cosine", "trainkit.components.schedules.linear", "trainkit.components.schedules.onecycle")


def check_resumable(cfg: DictConfig, payload: dict, checkpoint: Path, in_place: bool = True) -> None:
    """The checkpoint can continue this config: same training setup, something left to train, finite
    weights that fit the model, and, in place, not older than the run it continues."""
    refuse_non_finite(payload, checkpoint)
    old = OmegaConf.create(current_targets(payload.get("config") or {}))  # a checkpoint from before a module moved
    new = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in SAME_ON_RESUME:
        was, now = plain(OmegaConf.select(old, key)), plain(OmegaConf.select(new, key))
        if was is not None and was != now:
            where, was_leaf, now_leaf = first_difference(key, was, now)
            raise UserError(f"{where}={now_leaf!r} is not allowed on resume: the run in {checkpoint} was trained with "
                            f"{where}={was_leaf!r}, and a resumed run continues the same training; start a new run to change it")
    refuse_finished(cfg, payload, checkpoint, in_place)
    old_epochs = OmegaConf.select(old, "trainer.epochs")
    if old_epochs is not None and old_epochs != cfg.trainer.epochs and cfg.schedule.get("_target_") in LENGTH_PLANNED_SCHEDULES:
        raise UserError(f"trainer.epochs={cfg.trainer.epochs} is not allowed on resume: the run was planned for {old_epochs} "
                        f"epochs and its schedule ({cfg.schedule._target_.rsplit('.', 1)[1]}) follows that length; "
                        "start a new run, or use a schedule without a planned length (e.g. step, plateau) to extend runs")
    if in_place:
        refuse_moving_back(payload, checkpoint)
    check_model_fits(cfg, payload, checkpoint)


def refuse_finished(cfg: DictConfig, payload: dict, checkpoint: Path, in_place: bool = True) -> None:
    """Resuming a run that has nothing left to train would only test it again; a new folder from
    such a checkpoint would be a "completed" run with no checkpoint in it."""
    done = int(payload["epoch"])
    if payload.get("should_stop"):
        raise UserError(f"resume={checkpoint} is not allowed: that run was stopped early after epoch {done} "
                        "(regularization.early_stopping); start a new run to train further")
    if done > cfg.trainer.epochs:
        raise UserError(f"trainer.epochs={cfg.trainer.epochs} is not allowed on resume: the run in {checkpoint} "
                        f"has already trained {done} epochs")
    if done < cfg.trainer.epochs:
        return
    if in_place:  # a run killed after its last epoch, before its test, is finished by a resume
        if (RunRecord.read(checkpoint.parent.parent) or {}).get("status") == Status.COMPLETED:
            raise UserError(f"resume={checkpoint} is not allowed: that run completed its {done} epochs, so nothing is "
                            "left to resume (a larger trainer.epochs extends a run whose schedule has no planned length)")
        return
    schedule = str(cfg.schedule.get("_target_", "")).rsplit(".", 1)[-1]
    if cfg.schedule.get("_target_") in LENGTH_PLANNED_SCHEDULES:
        how = f"its schedule ({schedule}) is planned for that length, so it cannot be extended: start a new run"
    else:
        how = f"raise trainer.epochs (e.g. trainer.epochs={done + 10}) to train it further"
    raise UserError(f"resume={checkpoint} is not allowed: it has trained all {done} epochs (trainer.epochs="
                    f"{cfg.trainer.epochs}), so a new run from it would have nothing to train; {how}")


def refuse_non_finite(payload: dict, checkpoint: Path) -> None:
    """Weights holding NaN or Inf cannot train on, and would be tested and reported as a result."""
    import torch

    bad = [k for k, t in payload["model"].items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"checkpoint {checkpoint}: its weights hold NaN or Inf ({len(bad)} tensors, e.g. "
                        f"{', '.join(bad[:3])}), so no run can continue from them; resume from an earlier checkpoint "
                        "(best.pt is never saved from a diverged epoch) or start a new run")


def refuse_moving_back(payload: dict, checkpoint: Path) -> None:
    """A run continued in place never goes back: its last.pt must hold the newest epoch it reached."""
    reached = (RunRecord.read(checkpoint.parent.parent) or {}).get("epochs_run") or 0
    if isinstance(reached, int) and reached > int(payload["epoch"]):
        raise UserError(f"resume={checkpoint} is not allowed: it holds epoch {payload['epoch']} but the run reached epoch "
                        f"{reached} (metrics.json), so continuing it in place would move the run back; put the run's own "
                        "last.pt back, or copy this file out of the run folder to start a new run from it")


def plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def first_difference(key: str, was, now) -> tuple[str, object, object]:
    """The first leaf where two config values differ: (its key, old value, new value)."""
    if isinstance(was, dict) and isinstance(now, dict):
        for k in [*was, *(k for k in now if k not in was)]:
            if was.get(k) != now.get(k):
                return first_difference(f"{key}.{k}", was.get(k), now.get(k))
    return key, was, now


def check_model_fits(cfg: DictConfig, payload: dict, checkpoint: Path) -> None:
    """Build the configured model and load the checkpoint's weights into it, before any file is written."""
    from trainkit.engine.checkpoints import load_model_state
    from trainkit.data.sources import DataSpec
    from trainkit.components.regularization import Regularizers
    from trainkit.components.assembly import build_model

    if "data_spec" not in payload:
        return
    spec = DataSpec(**payload["data_spec"])
    dropout = Regularizers(cfg.regularization, num_classes=spec.num_classes).dropout
    load_model_state(build_model(cfg, spec, dropout), payload["model"], checkpoint)
