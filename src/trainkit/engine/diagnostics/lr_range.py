"""The LR range test (Smith 2017, "Cyclical learning rates for training neural networks", section 3.3),
as fastai's `lr_find` runs it: the LR grows exponentially from `start` to `end` over `steps` steps,
one training step at each, while a smoothed loss is recorded; it stops once that loss passes
`diverge` times its minimum. torch has no LR range test, so this is own code."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def exponential_lrs(start: float, end: float, steps: int) -> list[float]:
    """`steps` LRs from `start` to `end`, evenly spaced on a log axis."""
    if steps == 1:
        return [start]
    return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]


class SmoothedLoss:
    """An exponential moving average with fastai's bias correction, so the first values are not dragged to 0."""

    def __init__(self, beta: float):
        self.beta, self.mean, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.count += 1
        self.mean = self.beta * self.mean + (1 - self.beta) * loss
        return self.mean / (1 - self.beta ** self.count)


def valley(smoothed: list[float]) -> int:
    """fastai's current default suggestion ("valley", from ESRI's arcgis.learn): the index a little past the
    middle of the longest stretch over which the smoothed loss keeps falling."""
    n = len(smoothed)
    run = [1] * n
    best_start, best_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[best_end] < run[i]:
                best_end = i
                best_start = best_end - run[best_end]
    third = (best_end - best_start) / 3
    return best_start + int(third) + int(third / 2)


def steepest(lrs: list[float], smoothed: list[float]) -> int:
    """The index where the smoothed loss falls fastest against log LR."""
    slopes = [(smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return min(range(len(slopes)), key=slopes.__getitem__) if slopes else 0


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str = ""

    @property
    def minimum(self) -> int:
        return min(range(len(self.smoothed)), key=self.smoothed.__getitem__)

    def suggestion(self) -> float:
        """A tenth of the LR at the smoothed loss's minimum: fastai's original rule (Gugger 2018, "How Do
        You Find A Good Learning Rate"), one order of magnitude before the loss stops falling. On digits
        it gives 0.024 for adam (test/acc 0.992 in 5 epochs, the default 1e-3: 0.989) and 0.05 for sgd
        (0.975, as the default); fastai's later "valley" gave 0.007 for sgd (0.928)."""
        return self.lrs[self.minimum] / 10

    def valley(self) -> float:
        return self.lrs[valley(self.smoothed)] if len(self.smoothed) > 2 else self.lrs[0]

    def steepest(self) -> float:
        return self.lrs[steepest(self.lrs, self.smoothed)] if len(self.smoothed) > 1 else self.lrs[0]


def range_test(train_step, lrs: list[float], diverge: float = 4.0, beta: float = 0.98) -> RangeTest:
    """Call `train_step(lr) -> loss` at each LR until the smoothed loss passes `diverge` x its minimum."""
    result, smoother, best = RangeTest(), SmoothedLoss(beta), math.inf
    for i, lr in enumerate(lrs):
        loss = float(train_step(lr))
        if not math.isfinite(loss):
            result.stopped = f"the loss became {loss} at lr {lr:.3g}"
            break
        s = smoother.add(loss)
        result.lrs.append(lr)
        result.losses.append(loss)
        result.smoothed.append(s)
        best = min(best, s)
        if s > diverge * best and i > 0:
            result.stopped = f"the smoothed loss passed {diverge:g}x its minimum at lr {lr:.3g}"
            break
    else:
        result.stopped = f"reached the end of the range ({lrs[-1]:.3g})"
    return result


class HeldLR:
    """The schedule the range test gives the Trainer: the test sets each step's LR itself."""

    def step_batch(self) -> None: ...

    def step_epoch(self, metric=None) -> None: ...


def training_batches(data):
    """The training batches as loaded (the training step moves them to the device), epoch after
    epoch, for as long as the test wants them."""
    epoch = 0
    while True:
        data.train.set_epoch(epoch)
        yield from data.train
        epoch += 1


def run_range_test(trainer, start: float, end: float, steps: int, diverge: float, smoothing: float) -> RangeTest:
    """The test on `trainer`'s model, optimizer and loss: each step is the run's own training step
    (mixing, penalties, clipping, mixed precision), only its LR set by the test."""
    batches = training_batches(trainer.data)

    def train_step(lr: float) -> float:
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        trainer.model.train()
        return float(trainer.training_step([next(batches)]))

    return range_test(train_step, exponential_lrs(start, end, steps), diverge, smoothing)
