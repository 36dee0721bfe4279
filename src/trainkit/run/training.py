"""One training run in its folder: build the parts, fit, test the best checkpoint, record how it ended.

`run` returns the best value of the monitored metric, so that Hydra sweepers that optimise
(Optuna) can use it (cli/train.py is the Hydra app that calls it).
"""

from __future__ import annotations

import logging
import shlex
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainkit.atomic import StorageError
from trainkit.errors import allowed
from trainkit.run.callbacks import build_callbacks, monitor_mode
from trainkit.run.resume import CHECKPOINT_DIR, LAST_NAME, run_folder_of
from trainkit.run.record import RunRecord
from trainkit.status import Status

# torch, the data and the loop are imported where a run builds them: `trainkit train --cfg job`,
# --help and the check of a bad override, which Hydra answers from cli/train.py (importing this module), need none of them.
if TYPE_CHECKING:
    from torch import nn

    from trainkit.engine.loop import Trainer
    from trainkit.engine.tracking import Best

log = logging.getLogger("trainkit")

INTERRUPTED_EXIT_CODE = 130
DIVERGED_EXIT_CODE = 3
STORAGE_ERROR_EXIT_CODE = 74  # EX_IOERR (sysexits.h): a checkpoint or record could not be written


def run(cfg: DictConfig, run_dir: Path, started: float | None = None) -> float:
    """One training run in `run_dir` (its clock started at `started`); returns the best monitored value."""
    from rich.markup import escape

    from trainkit.engine.checkpoints import load_checkpoint
    from trainkit.config.check import check_config
    from trainkit.run.folder import refuse_used_run_dir
    from trainkit.console import report
    from trainkit.engine import distributed

    # One process per run folder: a second resume of a live run is refused. The `trainkit` command
    # usually claimed the folder before Hydra wrote into it; this takes the claim over.
    with run_lock(run_dir):
        check_config(cfg)
        # Read on rank 0 and sent to the other processes of a DDP run: they need no shared file system.
        resume_payload = distributed.from_rank_zero(lambda: load_checkpoint(cfg.resume)) if cfg.resume else None
        in_place = continues_run_in(cfg, run_dir)
        if not in_place and distributed.is_rank_zero():
            refuse_used_run_dir(run_dir)
        origin = run_folder_of(Path(cfg.resume)) if cfg.resume else None
        if origin is not None and not in_place:
            report(f"branched from {escape(str(cfg.resume))} (epoch {resume_payload['epoch']}) into {escape(str(run_dir))}; "
                   f"{escape(str(origin))} is left as it was")
        trainer, record = build_trainer(cfg, run_dir, resume_payload, started)
        if resume_payload is not None and not in_place:
            keep_best_in_new_folder(trainer.best, run_dir / CHECKPOINT_DIR / "best.pt", resume_payload)
        try:
            return fit_and_test(cfg, run_dir, trainer, record)
        finally:
            trainer.callbacks.close()
            trainer.data.close()


def run_lock(run_dir: Path):
    """The run folder's lock, taken by the process that writes the folder: rank 0 of a DDP run, or
    nobody here when `trainkit train trainer.devices=N` started this process and holds it itself."""
    import contextlib

    from trainkit.engine import distributed
    from trainkit.run.run_lock import RunLock

    if not distributed.is_rank_zero() or distributed.started_by_trainkit():
        return contextlib.nullcontext()
    return RunLock(run_dir)


def continues_run_in(cfg: DictConfig, run_dir: Path) -> bool:
    """resume= names the last.pt of the run in `run_dir` itself. Any other checkpoint (best.pt, a
    loose .pt) starts a new folder: continuing an older state in place would move the run back."""
    return bool(cfg.resume) and Path(cfg.resume).resolve() == (run_dir / CHECKPOINT_DIR / LAST_NAME).resolve()


def keep_best_in_new_folder(best: Best, path: Path, payload: dict) -> None:
    """A run started from another folder's checkpoint has its own best.pt: the starting weights when
    they are the best so far (a branch from best.pt), else the best is tracked afresh from here."""
    from trainkit.engine.checkpoints import save_checkpoint

    from trainkit.engine import distributed

    if best.epoch is not None and best.epoch == payload["epoch"]:
        if distributed.is_rank_zero():
            save_checkpoint(path, payload)
    else:
        best.forget()


def build_trainer(cfg: DictConfig, run_dir: Path, resume_payload: dict | None,
                  started: float | None = None) -> tuple[Trainer, RunRecord]:
    """Data, model, optimizer, schedule, loss and callbacks, restored from `resume_payload` if given."""
    from trainkit.engine.checkpoints import load_model_state
    from trainkit.config.check import config_hash
    from trainkit.config.schema import TrainerConfig, typed
    from trainkit.engine.interrupts import StopRequest
    from trainkit.engine.loop import Trainer, steps_per_epoch
    from trainkit.components.optimizers import needs_closure
    from trainkit.components.summary import model_summary, summary_lines
    from trainkit.console import report
    from trainkit.components.schedules import build_schedule
    from trainkit.engine.tracking import Best
    from trainkit.engine import distributed
    from trainkit.run.sweep_summary import sweep_stop_file

    device, amp_dtype, data, regularizers, model, optimizer, criterion = build_parts(cfg, resuming=resume_payload is not None)
    steps = steps_per_epoch(data.train, cfg.trainer.limit_train_batches)
    if needs_closure(optimizer) and steps > 1:
        raise allowed("trainer.batch_size", cfg.trainer.batch_size,
                      f"optimizer=lbfgs takes the whole training set as one fixed batch, and this gives {steps} batches "
                      f"per epoch; use trainer.batch_size >= {len(data.splits.train)} (optimizer=lbfgs sets 100000)")
    optimizer_steps = -(-steps // cfg.trainer.accumulate_grad_batches)  # per epoch: the schedule counts optimizer steps
    schedule = build_schedule(cfg.schedule, optimizer, optimizer_steps, int(cfg.trainer.epochs), monitor_mode(cfg))

    best = Best(cfg.trainer.monitor, monitor_mode(cfg))
    record = RunRecord(run_dir, cfg.trainer.monitor, monitor_mode(cfg), config_hash(cfg), overrides_of_this_job(), started,
                       write=distributed.is_rank_zero())
    callbacks = build_callbacks(cfg, run_dir, best, record)
    trainer = Trainer(
        typed(TrainerConfig, cfg.trainer), model=model, optimizer=optimizer, schedule=schedule, criterion=criterion,
        regularizers=regularizers, data=data, device=device, amp_dtype=amp_dtype, callbacks=callbacks, best=best,
        stop_request=StopRequest(on_force_exit=record.mark_interrupted, stop_file=sweep_stop_file()),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    if resume_payload is not None:
        load_model_state(model, resume_payload["model"], cfg.resume)
        trainer.restore(resume_payload)
        record.resume_from(RunRecord.read(run_dir) or {})
        report(f"resumed from {cfg.resume}: epoch {trainer.epoch}, step {trainer.global_step}")

    report(f"run dir: {run_dir}")
    if distributed.world() > 1:
        report(f"DDP: {distributed.world()} processes, {cfg.trainer.batch_size // distributed.world()} images each per "
               f"global batch of trainer.batch_size={cfg.trainer.batch_size}")
    precision = "fp32" if amp_dtype is None else "autocast " + str(amp_dtype).replace("torch.", "")
    report(f"data: {cfg.dataset.name}, {len(data.splits.train)} train / {len(data.splits.val)} val / "
           f"{len(data.splits.test)} test; device={device}, {precision}")
    summary = model_summary(model, data.spec.in_channels, data.spec.image_size)
    for line in summary_lines(chosen_model(cfg), summary):
        report(line)
    report(optimizer.weight_decay_summary)
    speed = speed_summary(cfg.trainer, data)
    if speed:
        report(f"speed: {speed}")
    if cfg.trainer.get("overfit_batches"):
        report(f"overfit check (trainer.overfit_batches={cfg.trainer.overfit_batches}): training and validating on the "
               f"same {len(data.splits.train)} training images every epoch")
    if trainer.epochs < cfg.trainer.epochs:
        report(f"fast dev run (trainer.fast_dev_run=true): {trainer.epochs} epoch, not the {cfg.trainer.epochs} of trainer.epochs")
    record.update(status=Status.RUNNING, loader=f"{data.loader_kind} ({data.loader_reason})", device=str(device),
                  model=summary)
    return trainer, record


def chosen_model(cfg: DictConfig) -> str:
    """The model's name for the summary: the torchvision architecture, else the model group's option."""
    from trainkit.run.callbacks import chosen_groups

    return str(cfg.model.get("name") or chosen_groups().get("model") or cfg.model.get("_target_", "model"))


def speed_summary(trainer_cfg, data) -> str:
    """The speed settings in effect, for the run's log ('' when all are off)."""
    import torch

    parts = []
    if trainer_cfg.channels_last:
        parts.append("channels_last")
    if trainer_cfg.compile:
        parts.append(f"torch.compile (mode {trainer_cfg.compile_mode})")
    if trainer_cfg.accumulate_grad_batches > 1:
        parts.append(f"{trainer_cfg.accumulate_grad_batches} batches per optimizer step")
    if torch.backends.cudnn.benchmark:
        parts.append("cudnn.benchmark")
    if getattr(getattr(data.train, "loader", None), "pin_memory", False):
        parts.append("pinned memory")
    if trainer_cfg.threads:
        parts.append(f"{torch.get_num_threads()} CPU thread(s)")
    return ", ".join(parts)


def one_epoch(cfg: DictConfig, **changes):
    """The run's typed trainer settings for a single epoch (trainkit check, lr-find), with `changes`."""
    import dataclasses

    from trainkit.config.schema import TrainerConfig, typed

    return dataclasses.replace(typed(TrainerConfig, cfg.trainer), epochs=1, fast_dev_run=False, **changes)


def build_parts(cfg: DictConfig, resuming: bool = False):
    """(device, amp dtype, data, regularizers, model, optimizer, loss) as a run starts them, seeded:
    also what `trainkit lr-find` and `trainkit check` train with. The model starts from its pretrained
    weights (model.weights, weights_path, from_run) unless `resuming` (a resume has its own), with
    the fine-tune's frozen blocks and LR factors; both are reported."""
    from torch import nn

    from trainkit.components.assembly import build_model
    from trainkit.components.optimizers import build_optimizer
    from trainkit.components.pretrained import load_pretrained
    from trainkit.components.regularization import Regularizers
    from trainkit.components.transfer import apply_finetune
    from trainkit.console import report
    from trainkit.data.build import build_data
    from trainkit.engine import distributed
    from trainkit.engine.devices import apply_speed_settings, check_compilable, resolve_device, resolve_precision
    from trainkit.engine.seeding import seed_everything

    device = resolve_device(cfg.trainer.device)
    amp_dtype = resolve_precision(cfg.trainer.precision, device)
    check_compilable(cfg.trainer, device)
    apply_speed_settings(cfg.trainer, device)
    seed_everything(int(cfg.trainer.seed))
    data = build_data(cfg, device, distributed.rank(), distributed.world())  # this rank's share of each batch
    regularizers = Regularizers(cfg.regularization, num_classes=data.spec.num_classes)
    model = build_model(cfg, data.spec, regularizers.dropout)
    pretrained = None if resuming else load_pretrained(model, cfg.model)
    if cfg.trainer.sync_bn:
        model = distributed.sync_batch_norm(model)
    model = model.to(device, memory_format=data.memory_format)
    if pretrained is None and hasattr(model, "init_from_data"):  # e.g. airbench's whitening conv, set from the training images
        model.init_from_data(data.train_sample())
    finetune = apply_finetune(model, **OmegaConf.to_container(cfg.finetune, resolve=True)) if cfg.get("finetune") else None
    if cfg.trainer.compile:
        # In place (nn.Module.compile): the state_dict keys stay the plain model's, so checkpoints load
        # into an uncompiled model and a resume loads into this one; compiling happens at the first forward pass.
        model.compile(mode=None if cfg.trainer.compile_mode == "default" else cfg.trainer.compile_mode)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization, finetune.lr_scales if finetune else None)
    for line in (pretrained, finetune.describe() if finetune else None):
        if line:
            report(line)
    weights = data.loss_weights.to(device) if data.loss_weights is not None else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=regularizers.label_smoothing)
    return device, amp_dtype, data, regularizers, model, optimizer, criterion


def fit_and_test(cfg: DictConfig, run_dir: Path, trainer: Trainer, record: RunRecord) -> float:
    """Fit, then test the best checkpoint once; record the outcome and return the best monitored value."""
    from rich.markup import escape

    from trainkit.data.overfit import memorisation_verdict
    from trainkit.console import report, report_results
    from trainkit.engine import distributed

    best = trainer.best
    with trainer.stop_request:  # also through the test: a Ctrl-C there waits for it, a second one exits
        status = trainer.fit()
        if status == Status.COMPLETED and trainer.callbacks.stop_status is not None:
            status = trainer.callbacks.stop_status  # pruned: tested and recorded like a completed run
        stopped_early = trainer.callbacks.stop_reason
        summary = {"epochs_run": trainer.epoch, "global_step": trainer.global_step, "final": trainer.last_metrics,
                   "best": best.value, "best_epoch": best.epoch, "best_weights": best.weights,
                   "skipped_steps": trainer.skipped_steps,
                   "message": trainer.message or stopped_early}
        if status == Status.INTERRUPTED:
            record.update(**summary, status=Status.INTERRUPTED)
            report(f"[yellow]interrupted[/]: saved {escape(str(run_dir / CHECKPOINT_DIR / LAST_NAME))}; "
                   f"continue with: {escape(resume_command(run_dir))}", error=True)
            raise RunEnded(INTERRUPTED_EXIT_CODE, status)
        if status == Status.DIVERGED:
            record.update(**summary, status=Status.DIVERGED)
            report(f"[red]diverged[/]: {escape(trainer.message)}. best.pt is left as it was.", error=True)
            for line in trainer.callbacks.summary:
                report(escape(line), error=True)
            raise RunEnded(DIVERGED_EXIT_CODE, status)
        if stopped_early:
            report(escape(stopped_early))
        test_metrics = test_best_checkpoint(trainer, run_dir / "checkpoints" / "best.pt", trainer.model)
    # The callbacks see the test's figures first: weight averaging adds its own (test/acc_ema ...).
    results = {**test_metrics, f"best/{cfg.trainer.monitor}": best.value if best.value is not None else float("nan")}
    trainer.callbacks.on_test_end(trainer, results)
    test_metrics = {k: v for k, v in results.items() if k.startswith("test/")}
    record.update(**summary, status=status, test=test_metrics)
    weights = "" if best.weights == "raw" else f", {best.weights} weights"
    rows = {f"best {cfg.trainer.monitor} (epoch {best.epoch}{weights})": best.value, **trainer.last_metrics, **test_metrics,
            "epochs": trainer.epoch, "wall time (s)": record.data["wall_time_s"]}
    if trainer.skipped_steps:
        rows["skipped steps (non-finite loss)"] = trainer.skipped_steps
    report_results(f"results: {run_dir}", rows)
    for line in trainer.callbacks.summary:
        report(escape(line))
    if cfg.trainer.get("overfit_batches"):
        verdict = memorisation_verdict(trainer.last_metrics, images=len(trainer.data.splits.train), epochs=trainer.epoch)
        record.update(overfit_check=verdict.as_record())
        report(str(verdict) if verdict.passed else f"[red]{escape(str(verdict))}[/]")
    if distributed.is_rank_zero():
        refresh_sweep_summary(run_dir)
    return float(best.value) if best.value is not None else float("nan")


def resume_command(run_dir: Path) -> str:
    """The command that continues the run, quoted for the shell: it works pasted back as it is."""
    return f"trainkit train {shlex.quote(f'resume={run_dir}')}"


def test_best_checkpoint(trainer: Trainer, path: Path, model: nn.Module) -> dict:
    """Evaluate the test set once, with the weights of the best validation epoch."""
    from trainkit.engine import distributed
    from trainkit.engine.checkpoints import load_checkpoint, load_model_state

    # Rank 0's best.pt, sent to every process of a DDP run (each tests its share of the test set).
    weights = distributed.from_rank_zero(lambda: load_checkpoint(path, map_location="cpu")["model"] if path.is_file() else None)
    if weights is not None:
        load_model_state(model, weights, path)
    return trainer.evaluate(trainer.data.test, "test", trainer.limit_test_batches)


def refresh_sweep_summary(run_dir: Path) -> None:
    """A sweep job resumed on its own brings its sweep's summary.csv up to date."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return  # the sweep writes it when all its jobs are done
    if (run_dir.parent / "summary.csv").is_file():
        from trainkit.run.sweep_summary import write_summary

        write_summary(run_dir.parent)


def overrides_of_this_job() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


class RunEnded(Exception):
    """The run stopped early (interrupted, diverged): results are saved, the exit code says why."""

    def __init__(self, code: int, status: Status):
        super().__init__(status)
        self.code, self.status = code, status


def storage_failed(run_dir: Path, error: StorageError, in_sweep: bool) -> float:
    """One line and exit code 74 (EX_IOERR); metrics.json says failed if it can still be written."""
    message = str(error)
    if (run_dir / CHECKPOINT_DIR / LAST_NAME).is_file():
        message += f"; free some space, then continue with: {resume_command(run_dir)}"
    try:
        mark_failed(run_dir, f"storage: {message}", say=in_sweep)
    except OSError:
        pass  # the disk is still full: the record keeps its last state
    if in_sweep:
        return float("nan")
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(STORAGE_ERROR_EXIT_CODE)


def crashed(run_dir: Path, error: Exception, in_sweep: bool) -> float:
    mark_failed(run_dir, f"crashed: {type(error).__name__}: {error}")
    if not in_sweep:
        raise error
    # In a sweep one crashed job must not stop the others; its traceback goes to its log.
    log.error("job crashed:\n%s", traceback.format_exc())
    return float("nan")


def stop_sweep(run_dir: Path) -> None:
    from trainkit.console import report
    from trainkit.run.sweep_summary import write_summary

    report("the sweep stops here: the jobs after this one are not started", error=True)
    write_summary(run_dir.parent)


def mark_failed(run_dir: Path, message: str, say: bool = True) -> None:
    from rich.markup import escape

    from trainkit.console import report

    previous = RunRecord.read(run_dir) or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(run_dir, previous.get("monitor", ""), previous.get("mode", ""), previous.get("config_hash", ""),
                       overrides_of_this_job())
    record.data.update({k: v for k, v in previous.items() if k in record.data and k not in ("status", "wall_time_s")})
    record.update(status=Status.FAILED, message=message)
    if say:
        report(f"[red]job failed:[/] {escape(message)}", error=True)

