"""The Optuna study of a `hydra/sweeper=trainkit_optuna` sweep, on disk in the sweep folder.

The sweeper (trainkit.sweep.optuna_sweep) asks and tells; each job reports its monitored value
every epoch and asks whether to stop. Both build the storage, the pruner and the study from the
same `hydra.sweeper` config, so a job in another process (a joblib worker) reaches its trial with
nothing but that config and its job number: the sweeper launches trial N as Hydra job N.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from trainkit.errors import allowed

JOURNAL = "optuna.journal"  # the default storage file, in the sweep folder
DATABASE = "optuna.db"  # storage: sqlite
SWEEPER_TARGET = "hydra_plugins.trainkit_sweeper.trainkit_optuna.TrainkitOptunaSweeper"
PRUNERS = ("median", "successive_halving", "hyperband", "none")


def storage_url(storage: str | None, sweep_dir: str | Path) -> str:
    """null -> the journal file in the sweep folder; 'sqlite' -> optuna.db there; else as given."""
    if storage in (None, "", "journal"):
        return str(Path(sweep_dir).absolute() / JOURNAL)
    if storage == "sqlite":
        return f"sqlite:///{Path(sweep_dir).absolute() / DATABASE}"
    return str(storage)


def open_storage(url: str):
    """A journal file (any path) or an RDB URL (sqlite:///..., postgresql://...)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if "://" in url:
        # SQLAlchemy 2 + sqlite: the timeout rides out parallel writers.
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return RDBStorage(url, engine_kwargs=kwargs)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    # The open() lock works on every file system (the default symlink lock needs symlinks: not on FAT/SMB).
    return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))


def build_pruner(name: str, warmup_epochs: int = 1, startup_trials: int = 5, reduction_factor: int = 3,
                 max_epochs: int | None = None):
    """The pruner is not stored in the study: the sweeper and every job build the same one from config."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup_epochs, reduction_factor=reduction_factor)
    if name == "hyperband":
        # max_resource fixed (not "auto", which each process would learn on its own) so every process agrees.
        return optuna.pruners.HyperbandPruner(min_resource=warmup_epochs, max_resource=max_epochs or "auto",
                                              reduction_factor=reduction_factor)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise allowed("hydra.sweeper.pruner", name, ", ".join(PRUNERS))


def is_study_sweeper(sweeper_cfg) -> bool:
    return str(sweeper_cfg.get("_target_", "")) == SWEEPER_TARGET


def trial_of_this_job(epochs: int):
    """The live Optuna trial this job runs, or None outside a trainkit_optuna sweep."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or not is_study_sweeper(hc.sweeper):
        return None
    return trial_of_job(hc.sweeper, hc.sweep.dir, hc.job.num, max_epochs=hc.sweeper.max_epochs or epochs)


def trial_of_job(sweeper_cfg, sweep_dir: str, job_num: int, max_epochs: int | None = None):
    """The live trial that job `job_num` runs: report() and should_prune() go through the storage."""
    import optuna

    storage = open_storage(storage_url(sweeper_cfg.storage, sweep_dir))
    pruner = build_pruner(sweeper_cfg.pruner, sweeper_cfg.warmup_epochs, sweeper_cfg.startup_trials,
                          sweeper_cfg.reduction_factor, max_epochs)
    study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())  # the job never samples
    # Public storage API: study id from its name, trial id from its number.
    study_id = storage.get_study_id_from_name(sweeper_cfg.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, job_num)
    return optuna.trial.Trial(study, trial_id)


def holds_study(sweep_dir: Path, sweeper_cfg) -> bool:
    """The folder holds this trainkit_optuna search's study (the same storage and study_name): the
    same command with hydra.sweep.dir=<it> continues it."""
    if not is_study_sweeper(sweeper_cfg):
        return False
    url = storage_url(sweeper_cfg.get("storage"), sweep_dir)
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else Path(url)
    if "://" in url and not url.startswith("sqlite:///") or not path.is_file():
        return False
    import optuna

    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)}
    except Exception:  # an unreadable storage: not a study to continue (the sweeper says why when it opens it)
        return False
    return sweeper_cfg.get("study_name", "trainkit") in names


def load_study_in(sweep_dir: Path, sweeper_cfg=None):
    """The study a sweep folder holds (read only), or None when it holds none (a grid sweep)."""
    import optuna

    storage_cfg = sweeper_cfg.get("storage") if sweeper_cfg is not None else None
    url = storage_url(storage_cfg, sweep_dir)
    if "://" not in url and not Path(url).is_file():
        if not (Path(sweep_dir) / DATABASE).is_file():
            return None
        url = storage_url("sqlite", sweep_dir)
    elif url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    storage = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    name = sweeper_cfg.get("study_name") if sweeper_cfg is not None else None
    if not names:
        return None
    return optuna.load_study(study_name=name if name in names else names[0], storage=storage)
