"""`trainkit train`: compose the config, build the parts, fit, test the best checkpoint.

Returns the best value of the monitored metric, so that Hydra sweepers that optimise
(Optuna) can use it.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape
from torch import nn

from trainkit.checkpoint_callbacks import BestCheckpoint, LastCheckpoint
from trainkit.checkpoints import load_checkpoint, load_model_state
from trainkit.config_check import check_config, config_hash
from trainkit.data import build_data
from trainkit.devices import resolve_device, resolve_precision
from trainkit.errors import USER_ERROR_EXIT_CODE, UserError
from trainkit.interrupts import StopRequest
from trainkit.preflight import refuse_used_run_dir
from trainkit.loop import Trainer, steps_per_epoch
from trainkit.optimizers import build_optimizer
from trainkit.progress import ProgressDisplay, console, results_table
from trainkit.regularization import Regularizers
from trainkit.run_record import COMPLETED, DIVERGED, FAILED, INTERRUPTED, RunRecord
from trainkit.schedules import build_schedule
from trainkit.seeding import seed_everything
from trainkit.tensorboard_log import TensorBoardLogger, flat_hparams

log = logging.getLogger("trainkit")

INTERRUPTED_EXIT_CODE = 130
DIVERGED_EXIT_CODE = 3


def build_model(cfg: DictConfig, spec, dropout: float) -> nn.Module:
    factory = instantiate(cfg.model)
    model = factory(in_channels=spec.in_channels, image_size=spec.image_size, num_classes=spec.num_classes,
                    norm=instantiate(cfg.norm), activation=instantiate(cfg.activation), dropout=dropout)
    return instantiate(cfg.init)(model)


def build_callbacks(cfg: DictConfig, run_dir: Path) -> dict:
    """The named callbacks, in the order they run at each hook."""
    callbacks = {}
    stopping = (cfg.regularization or {}).get("early_stopping")
    if stopping is not None:
        from trainkit.early_stopping import EarlyStopping

        callbacks["early_stopping"] = EarlyStopping(**OmegaConf.to_container(stopping, resolve=True))
    callbacks["best_checkpoint"] = BestCheckpoint(run_dir / "checkpoints", cfg.trainer.monitor, cfg.trainer.mode)
    callbacks["last_checkpoint"] = LastCheckpoint(run_dir / "checkpoints")
    if cfg.logger.tensorboard.enabled:
        callbacks["tensorboard"] = TensorBoardLogger(run_dir / "tensorboard", cfg.trainer.log_every_n_steps,
                                                     cfg.logger.tensorboard.image_grid)
    callbacks["progress"] = ProgressDisplay(cfg.trainer.progress, cfg.trainer.log_every_n_steps)
    return callbacks


def chosen_groups() -> dict[str, str]:
    choices = HydraConfig.get().runtime.choices
    return {group: str(choice) for group, choice in choices.items() if not group.startswith("hydra") and choice is not None}


def run(cfg: DictConfig, run_dir: Path) -> float:
    """One training run in `run_dir`; returns the best monitored value."""
    check_config(cfg)
    resume_payload = None
    if cfg.resume:
        resume_payload = load_checkpoint(cfg.resume)
    else:
        refuse_used_run_dir(run_dir)
    device = resolve_device(cfg.trainer.device)
    amp_dtype = resolve_precision(cfg.trainer.precision, device)
    seed_everything(int(cfg.trainer.seed))

    data = build_data(cfg, device)
    regularizers = Regularizers(cfg.regularization, num_classes=data.spec.num_classes)
    model = build_model(cfg, data.spec, regularizers.dropout).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    schedule = build_schedule(cfg.schedule, optimizer, steps_per_epoch(data.train, cfg.trainer.limit_train_batches),
                              int(cfg.trainer.epochs), cfg.trainer.mode)
    weights = data.loss_weights.to(device) if data.loss_weights is not None else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=regularizers.label_smoothing)

    callbacks = build_callbacks(cfg, run_dir)
    record = callbacks["run_record"] = RunRecord(run_dir, cfg.trainer.monitor, cfg.trainer.mode, config_hash(cfg),
                                                 overrides_of_this_job())
    stop_request = StopRequest()
    trainer = Trainer(
        model=model, optimizer=optimizer, schedule=schedule, criterion=criterion, regularizers=regularizers,
        data=data, device=device, amp_dtype=amp_dtype, callbacks=callbacks, epochs=int(cfg.trainer.epochs),
        monitor=cfg.trainer.monitor, on_nan=cfg.trainer.on_nan, log_every_n_steps=cfg.trainer.log_every_n_steps,
        limit_train_batches=cfg.trainer.limit_train_batches, limit_val_batches=cfg.trainer.limit_val_batches,
        stop_request=stop_request, config=OmegaConf.to_container(cfg, resolve=True),
    )
    if resume_payload is not None:
        load_model_state(model, resume_payload["model"], cfg.resume)
        trainer.restore(resume_payload)
        record.resume_from(RunRecord.read(run_dir) or {})
        console.print(f"resumed from {cfg.resume}: epoch {trainer.epoch}, step {trainer.global_step}")

    console.print(f"run dir: {run_dir}")
    precision = "fp32" if amp_dtype is None else "autocast " + str(amp_dtype).replace("torch.", "")
    console.print(f"data: {cfg.dataset.name}, {len(data.splits.train)} train / {len(data.splits.val)} val / "
                  f"{len(data.splits.test)} test; device={device}, {precision}")
    record.update(status="running", loader=f"{data.loader_kind} ({data.loader_reason})", device=str(device))
    try:
        return fit_and_test(cfg, run_dir, trainer, record, stop_request)
    finally:
        if "tensorboard" in callbacks:
            callbacks["tensorboard"].close()
        data.close()


def fit_and_test(cfg: DictConfig, run_dir: Path, trainer: Trainer, record: RunRecord, stop_request: StopRequest) -> float:
    """Fit, then test the best checkpoint once; record the outcome and return the best monitored value."""
    callbacks = trainer.callbacks
    with stop_request:  # also through the test: a Ctrl-C there waits for it, a second one exits
        status = trainer.fit()
        best = callbacks["best_checkpoint"]
        stopped_early = getattr(callbacks.get("early_stopping"), "reason", None)
        summary = {"epochs_run": trainer.epoch, "global_step": trainer.global_step, "final": trainer.last_metrics,
                   "best": best.best, "best_epoch": best.best_epoch, "message": trainer.message or stopped_early}
        if status == "interrupted":
            record.update(**summary, status=INTERRUPTED)
            console.print(f"[yellow]interrupted[/]: saved {run_dir / 'checkpoints' / 'last.pt'}; continue with: trainkit train resume={run_dir}")
            raise RunEnded(INTERRUPTED_EXIT_CODE, status)
        if status == "diverged":
            record.update(**summary, status=DIVERGED)
            console.print(f"[red]diverged[/]: {escape(trainer.message)}. best.pt is left as it was.")
            raise RunEnded(DIVERGED_EXIT_CODE, status)
        if stopped_early:
            console.print(f"early stopping: {escape(stopped_early)}")
        test_metrics = test_best_checkpoint(trainer, run_dir / "checkpoints" / "best.pt", trainer.model)
    record.update(**summary, status=COMPLETED, test=test_metrics)
    if "tensorboard" in callbacks:
        final = {**test_metrics, f"best/{cfg.trainer.monitor}": best.best if best.best is not None else float("nan")}
        callbacks["tensorboard"].log_final(trainer, flat_hparams(cfg, chosen_groups()), final)
    rows = {f"best {cfg.trainer.monitor} (epoch {best.best_epoch})": best.best, **trainer.last_metrics, **test_metrics,
            "epochs": trainer.epoch, "wall time (s)": record.data["wall_time_s"]}
    console.print(results_table(f"results: {run_dir}", rows))
    return float(best.best) if best.best is not None else float("nan")


def test_best_checkpoint(trainer: Trainer, path: Path, model: nn.Module) -> dict:
    """Evaluate the test set once, with the weights of the best validation epoch."""
    if path.is_file():
        load_model_state(model, load_checkpoint(path, map_location="cpu")["model"], path)
    return trainer.evaluate(trainer.data.test, "test")


def overrides_of_this_job() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


class RunEnded(Exception):
    """The run stopped early (interrupted, diverged): results are saved, the exit code says why."""

    def __init__(self, code: int, status: str):
        super().__init__(status)
        self.code, self.status = code, status


def remove_if_empty_run(run_dir: Path) -> None:
    """A run that failed before training leaves no folder of half results behind."""
    import shutil

    leftovers = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if leftovers <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in list(run_dir.parents)[:2]:  # outputs/runs and outputs, when nothing else is in them
            try:
                parent.rmdir()
            except OSError:
                break


@hydra.main(version_base=None, config_path="pkg://trainkit.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg, run_dir)
    except UserError as e:
        if not cfg.resume:
            remove_if_empty_run(run_dir)
        if in_sweep:
            mark_failed(run_dir, f"error: {e}")
            return float("nan")
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
    except RunEnded as e:
        if in_sweep:
            return float("nan")
        raise SystemExit(e.code) from None
    except Exception as e:
        mark_failed(run_dir, f"crashed: {type(e).__name__}: {e}")
        if not in_sweep:
            raise
        # In a sweep one crashed job must not stop the others; its traceback goes to its log.
        log.error("job crashed:\n%s", traceback.format_exc())
        return float("nan")


def mark_failed(run_dir: Path, message: str) -> None:
    previous = RunRecord.read(run_dir) or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(run_dir, previous.get("monitor", ""), previous.get("mode", ""), previous.get("config_hash", ""),
                       overrides_of_this_job())
    record.data.update({k: v for k, v in previous.items() if k in record.data and k not in ("status", "wall_time_s")})
    record.update(status=FAILED, message=message)
    console.print(f"[red]job failed:[/] {escape(message)}")


if __name__ == "__main__":
    main()
