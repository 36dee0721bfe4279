"""`hydra/sweeper=trainkit_optuna`: trainkit's Optuna sweeper, its schema (ConfigStore) and a thin Sweeper.

Hydra's plugin scan executes every module under hydra_plugins at the start of every app run, a
plain `trainkit train` included, and executes it outside sys.modules: so this module imports no
Optuna (about 0.3 s) and has no `from __future__ import annotations` (dataclasses then fail in the
scan). The work is in trainkit.sweep.optuna_sweep, imported when a sweep starts.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper


@dataclass
class TrainkitOptunaSweeperConf:
    _target_: str = "hydra_plugins.trainkit_sweeper.trainkit_optuna.TrainkitOptunaSweeper"
    sampler: str = "random"           # random (the lectures' default) | tpe | grid | cmaes (numeric ranges only)
    seed: Optional[int] = None        # the sampler's seed (moved on by the trials done when a study continues)
    pruner: str = "median"            # median | successive_halving | hyperband | none: stops hopeless trials early
    warmup_epochs: int = 1            # median: epochs before a trial may be pruned; successive_halving/hyperband: min epochs
    startup_trials: int = 5           # median: trials that run to the end before any is pruned
    reduction_factor: int = 3         # successive_halving/hyperband: 1 in reduction_factor trials goes on at each rung
    max_epochs: Optional[int] = None  # hyperband's largest budget; null: trainer.epochs
    grid_points: int = 5              # sampler=grid: values per continuous range (geometric for log ranges)
    direction: Optional[str] = None   # maximize | minimize; null: from trainer.monitor and trainer.mode
    n_trials: int = 20                # trials in the study in all (a continued study counts those already done)
    timeout: Optional[float] = None   # seconds: no new trial starts after this (running ones finish); null: none
    n_jobs: int = 1                   # trials at a time; > 1 needs hydra/launcher=joblib (hydra.launcher.n_jobs >= this)
    storage: Optional[str] = None     # null: <sweep dir>/optuna.journal; sqlite: <sweep dir>/optuna.db; or a path/RDB URL
    study_name: str = "trainkit"      # the study's name in the storage
    params: Dict[str, Any] = field(default_factory=dict)  # the search space, in Hydra's sweep syntax


ConfigStore.instance().store(group="hydra/sweeper", name="trainkit_optuna", node=TrainkitOptunaSweeperConf,
                             provider="trainkit")


class TrainkitOptunaSweeper(Sweeper):
    def __init__(self, **cfg: Any) -> None:
        self.cfg = cfg

    def setup(self, *, hydra_context, task_function, config) -> None:
        from trainkit.sweep.optuna_sweep import OptunaSweep

        self.impl = OptunaSweep(**self.cfg)
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.impl.sweep(arguments)
