"""Learning-rate schedules: torch schedulers built for the run's length, with linear warmup.

Every schedule here is stepped once per optimizer step, so its periods are converted from
epochs to steps when it is built; `plateau` alone is stepped per epoch, on the monitored
validation metric.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim import lr_scheduler as sched

WARMUP_KEYS = ("warmup_epochs", "warmup_steps", "warmup_start_factor")


@dataclass
class Horizon:
    """How long the main (post-warmup) phase of the schedule runs."""

    steps_per_epoch: int
    steps: int  # optimizer steps after warmup
    mode: str = "max"  # whether the monitored metric improves upwards (plateau)


def constant(optimizer, horizon: Horizon):
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


def step(optimizer, horizon: Horizon, step_epochs: int = 3, gamma: float = 0.1):
    return sched.StepLR(optimizer, step_size=int(step_epochs) * horizon.steps_per_epoch, gamma=gamma)


def cosine(optimizer, horizon: Horizon, eta_min: float = 0.0):
    return sched.CosineAnnealingLR(optimizer, T_max=max(1, horizon.steps), eta_min=eta_min)


class LRSchedule:
    """Linear warmup, then the main schedule; the loop calls step_batch and step_epoch."""

    def __init__(self, optimizer, main, warmup_steps: int, warmup_start_factor: float):
        self.optimizer, self.main, self.warmup_steps = optimizer, main, warmup_steps
        self.per_epoch = isinstance(main, sched.ReduceLROnPlateau)
        self.steps_done = 0
        self.warmup = None
        if warmup_steps > 0:
            self.warmup = sched.LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup_steps)
        if self.per_epoch:
            self.stepper = self.warmup
        elif self.warmup is not None:
            self.stepper = sched.SequentialLR(optimizer, [self.warmup, main], milestones=[warmup_steps])
        else:
            self.stepper = main

    def step_batch(self) -> None:
        self.steps_done += 1
        if self.per_epoch:
            if self.warmup is not None and self.steps_done <= self.warmup_steps:
                self.warmup.step()
        else:
            self.stepper.step()

    def step_epoch(self, metric: float | None) -> None:
        if self.per_epoch and self.steps_done >= self.warmup_steps and metric is not None:
            self.main.step(metric)

    def state_dict(self) -> dict:
        state = {"steps_done": self.steps_done, "main": self.main.state_dict()}
        if self.stepper is not None and self.stepper is not self.main:
            state["stepper"] = self.stepper.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = state["steps_done"]
        self.main.load_state_dict(state["main"])
        if "stepper" in state:
            self.stepper.load_state_dict(state["stepper"])


def build_schedule(schedule_cfg, optimizer, steps_per_epoch: int, epochs: int, mode: str = "max") -> LRSchedule:
    """The configured schedule for a run of `epochs` epochs of `steps_per_epoch` steps."""
    params = OmegaConf.to_container(schedule_cfg, resolve=True)
    warmup_epochs = params.pop("warmup_epochs", 0) or 0
    warmup_steps = max(int(params.pop("warmup_steps", 0) or 0), int(round(warmup_epochs * steps_per_epoch)))
    start_factor = params.pop("warmup_start_factor", 0.1)
    total = steps_per_epoch * epochs
    horizon = Horizon(steps_per_epoch=steps_per_epoch, steps=max(1, total - warmup_steps), mode=mode)
    main = instantiate(params)(optimizer, horizon)
    return LRSchedule(optimizer, main, warmup_steps, start_factor)
