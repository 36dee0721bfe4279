"""Learning-rate schedules: torch schedulers built for the run's length, with linear warmup.

Every schedule here is stepped once per optimizer step, so its periods are converted from
epochs to steps when it is built; `plateau` alone is stepped per epoch, on the monitored
validation metric. Warmup, when asked for, runs first and ends at the LR the main schedule
starts from; the main schedule's clock t starts when warmup ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim import lr_scheduler as sched

from trainkit.config.check import OWN_KEYS
from trainkit.errors import UserError, allowed

WARMUP_KEYS = OWN_KEYS["schedule"]


@dataclass
class Horizon:
    """How long the main (post-warmup) phase of the schedule runs."""

    steps_per_epoch: int
    steps: int  # optimizer steps after warmup
    mode: str = "max"  # whether the monitored metric improves upwards (plateau)

    def to_steps(self, epochs: float) -> int:
        """Epochs (fractions allowed) as a whole number of optimizer steps, at least 1."""
        return max(1, int(round(float(epochs) * self.steps_per_epoch)))


def _check(key: str, value, ok: bool, what: str):
    if not ok:
        raise allowed(f"schedule.{key}", value, what)
    return value


def _positive(key: str, value) -> float:
    return _check(key, value, isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, "a number > 0")


# -- the main schedules: (optimizer, horizon, **knobs) -> torch scheduler ---------------------------

def constant(optimizer, horizon: Horizon):
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


def step(optimizer, horizon: Horizon, step_epochs: float = 3, gamma: float = 0.1):
    _positive("step_epochs", step_epochs)
    _positive("gamma", gamma)
    return sched.StepLR(optimizer, step_size=horizon.to_steps(step_epochs), gamma=gamma)


def multistep(optimizer, horizon: Horizon, milestones=(5, 8), gamma: float = 0.1):
    milestones = list(milestones)
    _check("milestones", milestones, all(isinstance(m, (int, float)) and m > 0 for m in milestones)
           and milestones == sorted(milestones), "a rising list of epochs > 0")
    _positive("gamma", gamma)
    return sched.MultiStepLR(optimizer, milestones=[horizon.to_steps(m) for m in milestones], gamma=gamma)


def exponential(optimizer, horizon: Horizon, gamma: float = 0.9):
    # Smooth: gamma per epoch spread over the epoch's steps, lr = a0 * gamma ** (t / steps_per_epoch).
    _positive("gamma", gamma)
    return sched.ExponentialLR(optimizer, gamma=gamma ** (1.0 / horizon.steps_per_epoch))


class InverseTime:
    """LR factor 1 / (1 + k t), t in epochs (fractional). torch has no such scheduler.

    A small class rather than a closure: LambdaLR saves a callable object's __dict__, so the
    checkpoint holds two numbers instead of a function."""

    def __init__(self, k: float, steps_per_epoch: int):
        self.k, self.steps_per_epoch = float(k), int(steps_per_epoch)

    def __call__(self, step: int) -> float:
        return 1.0 / (1.0 + self.k * step / self.steps_per_epoch)


class InverseSqrt:
    """LR factor 1 / sqrt(max(t, 1)), t in epochs (fractional): flat for the first epoch, where
    1/sqrt(t) would be infinite or above the base LR. torch has no such scheduler."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step: int) -> float:
        return 1.0 / math.sqrt(max(step / self.steps_per_epoch, 1.0))


def inverse_time(optimizer, horizon: Horizon, k: float = 0.5):
    _check("k", k, isinstance(k, (int, float)) and k >= 0, "a number >= 0 (decay per epoch)")
    return sched.LambdaLR(optimizer, InverseTime(k, horizon.steps_per_epoch))


def inverse_sqrt(optimizer, horizon: Horizon):
    return sched.LambdaLR(optimizer, InverseSqrt(horizon.steps_per_epoch))


def linear(optimizer, horizon: Horizon, end_factor: float = 0.0):
    _check("end_factor", end_factor, isinstance(end_factor, (int, float)) and 0 <= end_factor <= 1, "a number in [0, 1]")
    return sched.LinearLR(optimizer, start_factor=1.0, end_factor=float(end_factor), total_iters=horizon.steps)


def cosine(optimizer, horizon: Horizon, eta_min: float = 0.0):
    _check("eta_min", eta_min, isinstance(eta_min, (int, float)) and eta_min >= 0, "a number >= 0")
    return sched.CosineAnnealingLR(optimizer, T_max=max(1, horizon.steps), eta_min=eta_min)


def cosine_restarts(optimizer, horizon: Horizon, cycle_epochs: float = 2, cycle_mult: int = 2, eta_min: float = 0.0):
    _positive("cycle_epochs", cycle_epochs)
    _check("cycle_mult", cycle_mult, isinstance(cycle_mult, int) and cycle_mult >= 1, "a whole number >= 1")
    _check("eta_min", eta_min, isinstance(eta_min, (int, float)) and eta_min >= 0, "a number >= 0")
    return sched.CosineAnnealingWarmRestarts(optimizer, T_0=horizon.to_steps(cycle_epochs), T_mult=cycle_mult, eta_min=eta_min)


def onecycle(optimizer, horizon: Horizon, pct_start: float = 0.3, div_factor: float = 25.0,
             final_div_factor: float = 1.0e4, anneal_strategy: str = "cos", cycle_momentum: bool = True,
             base_momentum: float = 0.85, max_momentum: float = 0.95):
    _check("pct_start", pct_start, isinstance(pct_start, (int, float)) and 0 < pct_start < 1, "a number in (0, 1)")
    _positive("div_factor", div_factor)
    _positive("final_div_factor", final_div_factor)
    _check("anneal_strategy", anneal_strategy, anneal_strategy in ("cos", "linear"), "cos or linear")
    # Cycling momentum would give plain SGD (momentum 0) a momentum it was not configured with,
    # and Adagrad has none to cycle: only optimizers that already use momentum or betas get it.
    defaults = optimizer.defaults
    has_momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
    return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=horizon.steps,
                            pct_start=float(pct_start), div_factor=div_factor, final_div_factor=final_div_factor,
                            anneal_strategy=anneal_strategy, cycle_momentum=bool(cycle_momentum and has_momentum),
                            base_momentum=base_momentum, max_momentum=max_momentum)


def plateau(optimizer, horizon: Horizon, factor: float = 0.1, patience: int = 3, threshold: float = 1.0e-4,
            threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0):
    _check("factor", factor, isinstance(factor, (int, float)) and 0 < factor < 1, "a number in (0, 1)")
    _check("patience", patience, isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1,
           "a whole number of epochs >= 1")
    _check("cooldown", cooldown, isinstance(cooldown, int) and cooldown >= 0, "a whole number of epochs >= 0")
    _check("threshold", threshold, isinstance(threshold, (int, float)) and threshold >= 0, "a number >= 0")
    _check("threshold_mode", threshold_mode, threshold_mode in ("rel", "abs"), "rel or abs")
    _check("min_lr", min_lr, isinstance(min_lr, (int, float)) and min_lr >= 0, "a number >= 0")
    # torch's patience counts the bad epochs it tolerates (it cuts on the one after); ours, like
    # early_stopping.patience, counts the bad epochs after which it acts.
    return sched.ReduceLROnPlateau(optimizer, mode=horizon.mode, factor=factor, patience=patience - 1, threshold=threshold,
                                   threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr)


# -- warmup + main, driven by the loop ------------------------------------------------------------------

class LRSchedule:
    """Linear warmup, then the main schedule; the loop calls step_batch and step_epoch."""

    def __init__(self, optimizer, main, warmup_steps: int, warmup_start_factor: float):
        self.optimizer, self.main, self.warmup_steps = optimizer, main, warmup_steps
        self.per_epoch = isinstance(main, sched.ReduceLROnPlateau)
        self.steps_done = 0
        self.warmup = None
        if warmup_steps > 0:
            # Built after `main`, so it warms up to the LR `main` starts from (its `initial_lr`).
            self.warmup = sched.LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup_steps)
        if self.per_epoch:
            self.stepper = self.warmup
        elif self.warmup is not None:
            self.stepper = sched.SequentialLR(optimizer, [self.warmup, main], milestones=[warmup_steps])
        else:
            self.stepper = main

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step_batch(self) -> None:
        self.steps_done += 1
        if self.per_epoch:
            if self.warmup is not None and self.steps_done <= self.warmup_steps:
                self.warmup.step()
        elif not self._exhausted():
            self.stepper.step()

    def _exhausted(self) -> bool:
        # OneCycleLR raises past its total_steps (a run extended on resume): hold the last LR instead.
        return isinstance(self.main, sched.OneCycleLR) and self.main.last_epoch >= self.main.total_steps

    def step_epoch(self, metric: float | None) -> None:
        if not self.per_epoch or self.steps_done < self.warmup_steps:
            return
        if metric is None:
            raise UserError("schedule=plateau needs the monitored metric (trainer.monitor) every epoch, and this run has none")
        self.main.step(float(metric))

    def state_dict(self) -> dict:
        state = {"steps_done": self.steps_done, "main": self.main.state_dict()}
        if self.stepper is not None and self.stepper is not self.main:
            state["stepper"] = self.stepper.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = state["steps_done"]
        self.main.load_state_dict(state["main"])
        if "stepper" in state:
            self.stepper.load_state_dict(dict(state["stepper"]))  # SequentialLR pops from the dict it is given


def build_schedule(schedule_cfg, optimizer, steps_per_epoch: int, epochs: int, mode: str = "max") -> LRSchedule:
    """The configured schedule for a run of `epochs` epochs of `steps_per_epoch` steps."""
    params = OmegaConf.to_container(schedule_cfg, resolve=True)
    warmup_epochs = params.pop("warmup_epochs", 0) or 0
    warmup_steps = params.pop("warmup_steps", 0) or 0
    start_factor = params.pop("warmup_start_factor", 0.1)
    _check("warmup_epochs", warmup_epochs, isinstance(warmup_epochs, (int, float)) and warmup_epochs >= 0, "a number of epochs >= 0")
    _check("warmup_steps", warmup_steps, isinstance(warmup_steps, int) and warmup_steps >= 0, "a whole number of steps >= 0")
    _check("warmup_start_factor", start_factor, isinstance(start_factor, (int, float)) and 0 < start_factor <= 1, "a number in (0, 1]")
    warmup_steps = max(warmup_steps, int(round(warmup_epochs * steps_per_epoch)))
    total = steps_per_epoch * epochs
    if warmup_steps >= total:
        raise UserError(f"a warmup of {warmup_steps} steps is not allowed in a run of {total} steps ({epochs} epochs x "
                        f"{steps_per_epoch}): lower schedule.warmup_epochs or schedule.warmup_steps")
    horizon = Horizon(steps_per_epoch=steps_per_epoch, steps=max(1, total - warmup_steps), mode=mode)
    main = instantiate(params)(optimizer, horizon)
    return LRSchedule(optimizer, main, warmup_steps, start_factor)
