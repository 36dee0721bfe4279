"""Which callbacks a run has: the one place where callbacks are built from the config.

To add a callback: write engine/callbacks/<name>.py (a Callback subclass with an `order` and,
if it keeps state across a resume, a `state_key`), then append it below under the config key
that turns it on. The CallbackList runs them by `order`, so where it is appended here does not
matter; nothing else in the run names a callback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from trainkit.engine import distributed
from trainkit.engine.callbacks.base import CallbackList
from trainkit.metrics import resolve_mode
from trainkit.run.study import trial_of_this_job

if TYPE_CHECKING:
    from trainkit.engine.tracking import Best
    from trainkit.run.record import RunRecord


def build_callbacks(cfg: DictConfig, run_dir: Path, best: Best, record: RunRecord) -> CallbackList:
    """Every callback `cfg` asks for; BestCheckpoint keeps `best` current, `record` writes metrics.json."""
    from trainkit.engine.callbacks.checkpointing import BestCheckpoint, LastCheckpoint
    from trainkit.engine.callbacks.progress import ProgressDisplay
    from trainkit.engine.callbacks.tensorboard import TensorBoardLogger, flat_hparams

    callbacks = []
    stopping = (cfg.regularization or {}).get("early_stopping")
    if stopping is not None:
        from trainkit.engine.callbacks.early_stopping import EarlyStopping

        callbacks.append(EarlyStopping(**OmegaConf.to_container(stopping, resolve=True)))
    averaging = cfg.regularization or {}
    if averaging.get("ema") is not None:  # ema and swa on every rank: their validation is collective
        from trainkit.engine.callbacks.ema import EMA

        callbacks.append(EMA(**OmegaConf.to_container(averaging.ema, resolve=True)))
    if averaging.get("swa") is not None:
        from trainkit.engine.callbacks.swa import SWA

        callbacks.append(SWA(run_dir / "checkpoints", **OmegaConf.to_container(averaging.swa, resolve=True)))
    if not distributed.is_rank_zero():  # with several processes rank 0 alone writes the run folder and the terminal
        return CallbackList(callbacks)
    if cfg.logger.tensorboard.enabled:
        callbacks.append(TensorBoardLogger(run_dir / "tensorboard", cfg.trainer.log_every_n_steps,
                                           cfg.logger.tensorboard.image_grid, flat_hparams(cfg, chosen_groups())))
    from trainkit.engine.callbacks.metrics_csv import MetricsCsv

    callbacks.append(MetricsCsv(run_dir / "metrics.csv"))
    trial = trial_of_this_job(int(cfg.trainer.epochs))
    if trial is not None:  # a trial of a trainkit_optuna search: it reports every epoch and may be pruned
        from trainkit.engine.callbacks.pruning import Pruning

        callbacks.append(Pruning(trial, cfg.trainer.monitor, str(HydraConfig.get().sweeper.pruner)))
    callbacks.append(BestCheckpoint(run_dir / "checkpoints", best, int(OmegaConf.select(cfg, "checkpoint.save_top_k", default=1))))
    callbacks.append(LastCheckpoint(run_dir / "checkpoints"))
    callbacks.append(ProgressDisplay(cfg.trainer.progress, cfg.trainer.log_every_n_steps))
    snapshots = (cfg.get("callbacks") or {}).get("snapshots")
    if snapshots is not None:
        from trainkit.engine.callbacks.snapshots import Snapshots, restart_cycle

        callbacks.append(Snapshots(run_dir / "checkpoints", snapshots.every_n_epochs, restart_cycle(cfg.schedule)))
    callbacks.append(record)
    callbacks += diagnostic_callbacks(cfg, record, tensorboard=next((c for c in callbacks if isinstance(c, TensorBoardLogger)), None))
    return CallbackList(callbacks)


def diagnostic_callbacks(cfg: DictConfig, record: RunRecord, tensorboard=None) -> list:
    """diagnostics.sanity, .monitor and .diagnosis: the start checks, the monitors, the end-of-run diagnosis."""
    from trainkit.engine.callbacks.diagnosis import Diagnosis
    from trainkit.engine.callbacks.monitors import Monitors, Thresholds
    from trainkit.components.pretrained import pretrained_source
    from trainkit.engine.callbacks.sanity import SanityChecks
    from trainkit.engine.diagnostics.diagnosis import Rules

    d = cfg.diagnostics

    def publish(name: str, value) -> None:
        record.update(diagnostics={**record.data.get("diagnostics", {}), name: value})

    found, monitors = [], None
    if d.sanity:
        weighted = cfg.dataset.get("class_weights") == "auto" or bool(cfg.dataset.get("balanced_sampler"))
        found.append(SanityChecks(d.sanity_images, d.initial_loss_tolerance, d.class_imbalance, weighted, publish,
                                  pretrained_source(cfg.model)))
    if d.monitor:
        thresholds = Thresholds(d.vanishing_ratio, d.exploding_growth, d.dead_fraction, d.update_ratio_low, d.update_ratio_high)
        monitors = Monitors(cfg.trainer.log_every_n_steps, thresholds, tensorboard, d.histograms, publish)
        found.append(monitors)
    if d.diagnosis:
        rules = Rules(d.overfit_gap, d.underfit_acc, d.spike, d.slow_progress)
        found.append(Diagnosis(rules, cfg.trainer.log_every_n_steps, cfg.trainer.monitor, monitor_mode(cfg), monitors,
                               tensorboard, lambda findings: record.update(diagnosis=findings)))
    return found


def monitor_mode(cfg: DictConfig) -> str:
    return resolve_mode(cfg.trainer.monitor, cfg.trainer.mode)


def chosen_groups() -> dict[str, str]:
    """The option picked in each group (`optimizer: adam`), or nothing outside a Hydra app."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    skipped = ("hydra", "logger", "paths")
    return {group: str(choice) for group, choice in choices.items() if not group.startswith(skipped) and choice is not None}
