"""The trainkit_optuna sweeper's work: a study on disk that the same command continues, trials
that report every epoch and get pruned, and parallel trials that do not wait for each other.

Written here rather than taken from hydra-optuna-sweeper: that plugin pins optuna<3, runs trials
in blocking batches, gives a job no access to its trial (so no pruning) and keeps no study by default.

Trial N runs as Hydra job N: the job reaches its trial through the storage named in its own
`hydra.sweeper` config and its job number (trainkit.run.study.trial_of_job), reports every epoch
and stops when the pruner says so. Its metrics.json says how it ended (completed, pruned,
diverged, failed, interrupted), and this sweeper tells the study accordingly.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from trainkit.atomic import atomic_write_text
from trainkit.errors import USER_ERROR_EXIT_CODE, UserError, allowed
from trainkit.metrics import resolve_mode
from trainkit.run.study import PRUNERS, build_pruner, open_storage, storage_url
from trainkit.status import Status
from trainkit.sweep import search_space as ss
from trainkit.sweep.journal import repair_tail

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "A new study created" lines: the sweeper says what matters

SAMPLERS = ("random", "tpe", "grid", "cmaes")
DIRECTIONS = ("maximize", "minimize")
STOP_GRACE_S = 120  # after Ctrl-C, how long running parallel jobs get to save before the sweeper exits
STATUS = "status"  # the trial's user attr that mirrors its run's status (refine and report read the study alone)
INTERRUPTED_EXIT_CODE = 130


class OptunaSweep:
    def __init__(self, **cfg) -> None:
        self.cfg = OmegaConf.create(cfg)
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        trainer = config.get("trainer") or {}
        if self.cfg.direction is None:  # the way trainer.monitor improves: the one rule, in trainkit.metrics
            mode = resolve_mode(trainer.get("monitor", "val/acc"), trainer.get("mode", "auto"))
            self.cfg.direction = "maximize" if mode == "max" else "minimize"
        if self.cfg.max_epochs is None:  # hyperband's budget; every job builds its pruner with the same one
            self.cfg.max_epochs = trainer.get("epochs")

    def sweep(self, arguments: list[str]) -> None:
        try:
            space, plain = self.check(arguments)
        except UserError as e:
            fail(str(e))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # what refine and report read back
        with SweepLock(self.sweep_dir):
            study = self.open_study(space)
            self.run_trials(study, space, plain)
        self.log_best(study)

    # -- before any trial ----------------------------------------------------------------------
    def check(self, arguments: list[str]) -> tuple[ss.SearchSpace, list[str]]:
        """The search space (YAML params, with the command line's sweeps over them) and the plain overrides."""
        c = self.cfg
        if c.sampler not in SAMPLERS:
            raise allowed("hydra.sweeper.sampler", c.sampler, ", ".join(SAMPLERS))
        if c.direction not in DIRECTIONS:
            raise allowed("hydra.sweeper.direction", c.direction, "maximize, minimize or null (from trainer.mode)")
        if c.pruner not in PRUNERS:
            raise allowed("hydra.sweeper.pruner", c.pruner, ", ".join(PRUNERS))
        for key in ("n_trials", "n_jobs", "grid_points", "reduction_factor", "warmup_epochs"):
            if not isinstance(c[key], int) or c[key] < (2 if key in ("grid_points", "reduction_factor") else 1):
                raise allowed(f"hydra.sweeper.{key}", c[key], f"a whole number >= {2 if key in ('grid_points', 'reduction_factor') else 1}")
        if c.startup_trials < 0:
            raise allowed("hydra.sweeper.startup_trials", c.startup_trials, "a whole number >= 0")
        if c.timeout is not None and not c.timeout > 0:
            raise allowed("hydra.sweeper.timeout", c.timeout, "a number of seconds > 0, or null")
        if c.n_jobs > 1 and type(self.launcher).__name__ == "BasicLauncher":
            raise allowed("hydra.sweeper.n_jobs", c.n_jobs, "1 with the basic launcher, which runs one job at a time; "
                          "for parallel trials add hydra/launcher=joblib (and hydra.launcher.n_jobs >= n_jobs)")
        params = {str(k): str(v) for k, v in (c.params or {}).items()}
        plain = []
        for override in ss.parse_arguments(arguments):
            key = override.get_key_element()
            if override.is_sweep_override():
                params[key] = override.input_line.split("=", 1)[1]  # the command line wins over the YAML
            else:
                params.pop(key, None)  # a plain value fixes a searched key
                plain.append(override.input_line)
        space = ss.parse(params)
        if not space.distributions:
            raise UserError("hydra.sweeper.params is empty: nothing to search; add a range, e.g. "
                            "'optimizer.lr=tag(log, interval(1e-4, 1e-1))'")
        if c.sampler == "cmaes":
            choices = [k for k, d in space.distributions.items() if isinstance(d, CategoricalDistribution)]
            if choices:
                raise allowed("hydra.sweeper.sampler", "cmaes", f"cmaes searches numeric ranges only and {', '.join(choices)} "
                              "is a choice: use sampler=tpe or random, or fix it")
        self.check_composes(space, plain)
        return space, plain

    def check_composes(self, space: ss.SearchSpace, plain: list[str]) -> None:
        """Every key and every choice composes, added one at a time so the error names the culprit:
        a misspelt key or a config-group option that does not exist fails here, not in trial 7."""
        loader = self.hydra_context.config_loader
        applied: dict = {}
        for key, d in space.distributions.items():
            values = list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low]
            for value in values:
                try:
                    loader.load_sweep_config(self.config, plain + space.overrides({**applied, key: value}))
                except Exception as e:  # Hydra's ConfigCompositionException / MissingConfigException
                    options = loader.get_group_options(key)
                    hint = f"the options of {key} are {', '.join(options)}" if options else "a key of the config"
                    first = str(e).strip().splitlines()[0]
                    raise allowed(f"hydra.sweeper.params.{key}", ss.encode(value), f"{hint} ({first})") from None
            applied[key] = values[0]

    # -- the study ---------------------------------------------------------------------------
    def open_study(self, space: ss.SearchSpace) -> optuna.Study:
        c = self.cfg
        url = storage_url(c.storage, self.sweep_dir)
        if "://" not in url and repair_tail(Path(url)):
            log.warning(f"{url}: its last line was cut off by a kill; removed it (kept in {Path(url).name}.partial)")
        try:
            self.storage = open_storage(url)
            study = optuna.create_study(study_name=c.study_name, storage=self.storage, direction=c.direction,
                                        load_if_exists=True, pruner=self.pruner())
        except Exception as e:
            fail(f"hydra.sweeper.storage={url} cannot be opened ({type(e).__name__}: {str(e).splitlines()[0]}); "
                 "use null (a journal file in the sweep folder), sqlite, or an RDB URL whose driver is installed")
        if study.direction.name.lower() != c.direction:
            fail(f"hydra.sweeper.direction={c.direction} is not allowed: the study in {url} was created to "
                 f"{study.direction.name.lower()}; use another hydra.sweep.dir or study_name")
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Left RUNNING by a run that was killed (SIGKILL, power loss): the SweepLock says no live sweeper owns it.
            self.interrupt(study, t.number)
            log.info(f"trial {t.number} was interrupted by the previous run: marked failed, not counted, its point runs again")
        # A resumed random/TPE sampler with the same seed would propose the first trials again.
        seed = None if c.seed is None else int(c.seed) + len(study.trials)
        study.sampler = self.build_sampler(space, seed)
        done = counted(study)
        if done:
            log.info(f"continuing study '{c.study_name}' in {url}: {done} of {c.n_trials} trials done")
        return study

    def pruner(self):
        c = self.cfg
        return build_pruner(c.pruner, c.warmup_epochs, c.startup_trials, c.reduction_factor, c.max_epochs)

    def build_sampler(self, space: ss.SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
        c = self.cfg
        if c.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if c.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, c.n_trials // 4)))
        if c.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=1)
        self.grid = ss.grid(space, c.grid_points)
        return optuna.samplers.GridSampler(self.grid, seed=seed)

    # -- the trials ----------------------------------------------------------------------------
    def run_trials(self, study: optuna.Study, space: ss.SearchSpace, plain: list[str]) -> None:
        c = self.cfg
        started = time.monotonic()
        running: dict[Future, optuna.Trial] = {}
        pool = ThreadPoolExecutor(c.n_jobs) if c.n_jobs > 1 else None
        stopping = False

        def room() -> bool:
            if stopping or counted(study) + len(running) >= c.n_trials:
                return False
            if c.timeout is not None and time.monotonic() - started > c.timeout:
                return False
            return not (c.sampler == "grid" and grid_exhausted(study, self.grid, len(running)))

        try:
            while True:
                while len(running) < c.n_jobs and room():
                    trial = study.ask(space.distributions)
                    overrides = plain + space.overrides(trial.params)
                    if pool is None:  # one at a time: in this thread, so Ctrl-C reaches the job as in any sweep
                        future: Future = Future()
                        running[future] = trial
                        future.set_result(self.launch_one(overrides, trial.number))
                    else:
                        running[pool.submit(self.launch_one, overrides, trial.number)] = trial
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    stopping |= self.tell(study, running.pop(future), future)
            if stopping:
                log.warning("the sweep stops here (a job was stopped by a signal); the same command with "
                            f"hydra.sweep.dir={self.sweep_dir} continues it")
                raise SystemExit(INTERRUPTED_EXIT_CODE)
        except BaseException as e:  # Ctrl-C in the sweeper, a job's own SystemExit: the trials still running are not results
            self.stop_running(study, running, pool)
            if isinstance(e, (KeyboardInterrupt, SystemExit)) and not stopping:
                log.warning("the search stops here; the same command with "
                            f"hydra.sweep.dir={self.sweep_dir} continues it (the interrupted trial runs again)")
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def stop_running(self, study, running: dict, pool) -> None:
        if pool is not None and running:
            # The jobs got the Ctrl-C too and save last.pt after their current step: let them (as a single run does).
            log.warning(f"stopping: waiting for {len(running)} running trial(s) to save (Ctrl-C again: exit now)")
            try:
                wait(running, timeout=STOP_GRACE_S)
            except KeyboardInterrupt:
                pass
        for future, trial in running.items():
            if future.done() and future.exception() is None:  # it returned: its record says how it ended
                self.tell(study, trial, future)
            else:
                self.interrupt(study, trial.number)

    def launch_one(self, overrides: list[str], number: int) -> JobReturn:
        return self.launcher.launch([overrides], initial_job_idx=number)[0]

    def tell(self, study: optuna.Study, trial: optuna.Trial, future: Future) -> bool:
        """Tell the study how the trial's job ended; True when the job was stopped by a signal (the sweep stops)."""
        ret: JobReturn = future.result()  # an exception raised by the launcher itself propagates
        record = job_record(ret)
        status = record.get("status")
        if status == Status.INTERRUPTED:  # Ctrl-C reached the job first (it saved last.pt and returned)
            self.interrupt(study, trial.number)
            return True
        try:
            value = float(ret.return_value)  # raises the job's exception if it failed
        except Exception as e:
            status = Status.FAILED
            trial.set_user_attr("message", f"{type(e).__name__}: {e}"[:500])
            state, value = TrialState.FAIL, None
        else:
            if status == Status.PRUNED:
                state, value = TrialState.PRUNED, None  # Optuna keeps the last reported value
            elif math.isfinite(value) and status in (None, Status.COMPLETED):
                state = TrialState.COMPLETE
            else:  # diverged, failed (a bad config in one trial, a crash): a result, counted, but no value
                state, value = TrialState.FAIL, None
                status = status if status not in (None, Status.COMPLETED, Status.RUNNING) else Status.FAILED
                if record.get("message"):
                    trial.set_user_attr("message", str(record["message"])[:500])
        if ret.hydra_cfg is not None:  # user attrs are frozen once told
            trial.set_user_attr("job_dir", str(ret.hydra_cfg.hydra.runtime.output_dir))
        if status:
            trial.set_user_attr(STATUS, str(status))
        try:
            study.tell(trial, value, state=state)
        except RuntimeError as e:  # GridSampler calls study.stop() outside optimize(); the tell is stored
            if "Study.stop" not in str(e):
                raise
        return bool(record.get("stop_requested"))

    def interrupt(self, study: optuna.Study, number: int) -> None:
        """A trial that a stop cut short: failed, not counted, and its point queued to run first next time."""
        trial = stored(study, number)
        if trial.state != TrialState.RUNNING:
            return
        study_id = self.storage.get_study_id_from_name(study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.storage.set_trial_user_attr(trial_id, STATUS, str(Status.INTERRUPTED))  # by number, from any process
        study.tell(number, state=TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": number})
        mark_retried(self.sweep_dir, number)

    def log_best(self, study: optuna.Study) -> None:
        states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
                  for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        log.info(f"trials: {states}")
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return
        best = study.best_trial
        log.info(f"best trial: {best.number}, value {best.value}, parameters {best.params}")
        OmegaConf.save(OmegaConf.create({"best_trial": best.number, "best_value": best.value,
                                         "best_params": best.params, "trials": states}),
                       self.sweep_dir / "optimization_results.yaml")


def job_record(ret: JobReturn) -> dict:
    """The job's metrics.json: status (completed, pruned, diverged, failed, interrupted) and stop_requested."""
    if ret.hydra_cfg is None:
        return {}
    path = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def job_dir_of(sweep_dir: Path, number: int) -> Path | None:
    """Job N's folder: `N` or `N_<overrides>` (hydra.sweep.subdir)."""
    for p in sweep_dir.iterdir():
        if p.is_dir() and (p.name == str(number) or p.name.startswith(f"{number}_")):
            return p
    return None


def mark_retried(sweep_dir: Path, number: int) -> None:
    """The interrupted trial's run record says so (a kill left it 'running'), and that its point runs
    again: the sweep's exit code does not count it as a failed job."""
    job = job_dir_of(sweep_dir, number)
    path = job / "metrics.json" if job is not None else None
    if path is None or not path.is_file():
        return
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return
    if record.get("status") in (Status.RUNNING, Status.INTERRUPTED):
        record.update(status=str(Status.INTERRUPTED), retried=True,
                      message="interrupted; the sweep runs this trial's point again as a new trial")
        atomic_write_text(path, json.dumps(record, indent=2))


def fail(message: str) -> None:
    """A user error: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USER_ERROR_EXIT_CODE)


def stored(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """A trial as the storage has it now (what other processes wrote included)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def counted(study: optuna.Study) -> int:
    """Trials that count toward n_trials: every finished one except those a stop interrupted."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.user_attrs.get(STATUS) != Status.INTERRUPTED))


def grid_exhausted(study: optuna.Study, grid: dict, running: int) -> bool:
    return counted(study) + running >= math.prod(len(v) for v in grid.values())


class SweepLock:
    """One sweeper per sweep folder: then a RUNNING trial found at start is one a killed run left."""

    def __init__(self, sweep_dir: Path):
        self.path = sweep_dir / ".sweep.lock"

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fail(f"hydra.sweep.dir={self.path.parent} is not allowed: another sweep is running in it "
                 "(wait for it, or choose another folder)")
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
