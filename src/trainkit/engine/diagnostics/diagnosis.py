"""The end-of-run diagnosis: what the curves say went wrong, and the overrides the lectures would try.

The regimes of the lectures' "where does the error come from" and "babysitting the learning
process": high variance (overfitting: a big train/val gap), high bias (underfitting: low train
accuracy, no gap), a learning rate too high (the loss spikes above where it started, oscillates or
diverges) or too low (the loss falls slowly and steadily: far from done), else healthy. Read from
the per-epoch metrics and the logged step losses, with the monitors' verdicts as evidence when
they ran. Own code: no library diagnoses a run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from trainkit import metrics as M

HEALTHY, OVERFITTING, UNDERFITTING, LR_TOO_HIGH, LR_TOO_LOW = "healthy", "overfitting", "underfitting", "lr_too_high", "lr_too_low"
TITLES = {HEALTHY: "healthy", OVERFITTING: "overfitting", UNDERFITTING: "underfitting", LR_TOO_HIGH: "LR too high",
          LR_TOO_LOW: "LR too low"}


# An order of magnitude under the rule of thumb's update/weight ratio of 1e-3 (CS231n): steps this
# small are the LR's doing; larger ones are not "LR too low" however slowly the loss falls.
SMALL_UPDATES = 1e-4


@dataclass
class Rules:
    overfit_gap: float = 0.05  # train/acc - val/acc over this at the end is a big gap (high variance)
    underfit_acc: float = 0.8  # train/acc under this at the end is high bias: the lectures' epsilon
    spike: float = 1.5  # a logged step loss over this x the first one: the LR is too high
    slow_progress: float = 0.5  # the loss ended above this share of where it started ...
    steady: float = 0.5  # ... and was still falling at this share of its average rate (LR too low)


@dataclass
class Finding:
    verdict: str
    evidence: str
    remedies: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"diagnosis: {TITLES[self.verdict]}: {self.evidence}"
        return text + (f"; try {', '.join(self.remedies)}" if self.remedies else "")


@dataclass
class Curves:
    """What the run's curves held: per-epoch metrics and the logged step losses."""

    epochs: list[dict] = field(default_factory=list)
    step_losses: list[tuple[int, float]] = field(default_factory=list)
    status: str = "completed"
    lr: float = float("nan")  # the configured (peak) LR, for the remedies
    monitor: str = M.VAL_ACC
    mode: str = "max"
    update_ratio: float | None = None  # the monitors' median update/weight ratio, when they ran
    monitor_verdicts: list[str] = field(default_factory=list)


def diagnose(c: Curves, r: Rules) -> list[Finding]:
    """The findings, the main one first; [healthy] when nothing is wrong."""
    high = lr_too_high(c, r)
    if high is not None:
        return [high]  # a run thrown off by its LR says nothing about bias or variance
    findings = [f for f in (lr_too_low(c, r),) if f]
    findings += [f for f in (overfitting(c, r), underfitting(c, r, bool(findings))) if f]
    if not findings:
        last = c.epochs[-1] if c.epochs else {}
        findings.append(Finding(HEALTHY, f"train/acc {last.get(M.TRAIN_ACC, float('nan')):.3f}, val/acc "
                                         f"{last.get(M.VAL_ACC, float('nan')):.3f} (gap {gap(last):.3f} <= {r.overfit_gap:g}), "
                                         "the loss fell and stayed finite"))
    return findings


def gap(epoch: dict) -> float:
    return epoch.get(M.TRAIN_ACC, float("nan")) - epoch.get(M.VAL_ACC, float("nan"))


def lower(lr: float, by: float = 10) -> str:
    return f"optimizer.lr={lr / by:.3g}"


def lr_too_high(c: Curves, r: Rules) -> Finding | None:
    remedies = [lower(c.lr), "'regularization=[grad_clip]'", "schedule.warmup_epochs=1"]
    if c.status == "diverged":
        return Finding(LR_TOO_HIGH, "the training loss diverged (NaN/Inf)", remedies)
    if "exploding" in c.monitor_verdicts:
        return Finding(LR_TOO_HIGH, "the monitors saw exploding gradients", remedies)
    # The logged step losses and each epoch's mean (which sees the steps between the logged ones).
    points = [(f"step {step}", v) for step, v in c.step_losses]
    points += [(f"epoch {i + 1} (mean)", e.get(M.TRAIN_LOSS, float("nan"))) for i, e in enumerate(c.epochs)]
    if len(c.step_losses) >= 1 and math.isfinite(c.step_losses[0][1]):
        first = c.step_losses[0][1]
        where, worst = max(points[1:], key=lambda p: p[1] if math.isfinite(p[1]) else -math.inf, default=("", -math.inf))
        if worst > r.spike * first:
            return Finding(LR_TOO_HIGH, f"the training loss rose to {worst:.3g} at {where}, {worst / first:.1f} x its first "
                                        f"value {first:.3g} (over {r.spike:g} x): it oscillates instead of falling", remedies)
    if "update_ratio_high" in c.monitor_verdicts:
        return Finding(LR_TOO_HIGH, "the monitors saw an update/weight ratio far over 1e-3", remedies)
    return None


def lr_too_low(c: Curves, r: Rules) -> Finding | None:
    """Slow and steady: the loss is still well above where it started and still falling at close
    to its average rate (it has not flattened out), or the updates are far smaller than 1e-3."""
    losses = [e.get(M.TRAIN_LOSS, float("nan")) for e in c.epochs]
    start = c.step_losses[0][1] if c.step_losses else (losses[0] if losses else float("nan"))
    if len(losses) < 2 or not all(map(math.isfinite, [start, *losses])) or start <= 0:
        return None
    progress = losses[-1] / start
    falling = all(b < a for a, b in zip(losses, losses[1:]))
    average_rate = (start - losses[-1]) / len(losses)
    last_rate = losses[-2] - losses[-1]
    tiny_updates = "update_ratio_low" in c.monitor_verdicts
    if c.update_ratio is not None and c.update_ratio >= SMALL_UPDATES and not tiny_updates:
        return None  # the steps are a healthy size: a slow fall is the task's difficulty or the model's, not the LR's
    if r.slow_progress < progress < 1 and falling and (last_rate >= r.steady * average_rate or tiny_updates):
        why = (f"the training loss fell only from {start:.3f} to {losses[-1]:.3f} ({progress:.0%} of its start, over "
               f"{r.slow_progress:.0%}) and was still falling at the end ({last_rate:.3g} in the last epoch, "
               f"{average_rate:.3g} per epoch on average)")
        if c.update_ratio is not None:
            why += f"; median update/weight ratio {c.update_ratio:.1e}"
        return Finding(LR_TOO_LOW, why, [f"optimizer.lr={c.lr * 10:.3g}", "trainkit lr-find", "trainer.epochs=<more>"])
    return None


def best_epoch(c: Curves) -> int:
    values = [e.get(c.monitor, float("nan")) for e in c.epochs]
    pick = max if c.mode == "max" else min
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    return pick(finite, key=values.__getitem__) + 1 if finite else len(values)


def overfitting(c: Curves, r: Rules) -> Finding | None:
    """A big train/val gap at the end, grown since the first epoch (high variance)."""
    if not c.epochs:
        return None
    end, start, best = gap(c.epochs[-1]), gap(c.epochs[0]), best_epoch(c)
    if end > r.overfit_gap and (end > start or len(c.epochs) == 1):
        where = (f"{c.monitor} stopped improving at epoch {best} of {len(c.epochs)}" if best < len(c.epochs)
                 else f"{c.monitor} was still improving at the last epoch")
        return Finding(OVERFITTING, f"train/acc {c.epochs[-1][M.TRAIN_ACC]:.3f} vs val/acc {c.epochs[-1][M.VAL_ACC]:.3f}: "
                                    f"a gap of {end:.3f} (over {r.overfit_gap:g}, {start:.3f} after epoch 1); {where}",
                       ["'regularization=[l2,dropout]'", "augmentation=flip_crop", "'regularization=[early_stopping]'",
                        "a smaller model (model.hidden / model.channels)", "more training data"])
    return None


def underfitting(c: Curves, r: Rules, lr_found: bool) -> Finding | None:
    if not c.epochs or lr_found:
        return None
    last = c.epochs[-1]
    acc = last.get(M.TRAIN_ACC, float("nan"))
    if acc < r.underfit_acc and gap(last) <= r.overfit_gap:
        flow = [v for v in c.monitor_verdicts if v in ("vanishing", "dead_units")]
        names = {"vanishing": "vanishing gradients", "dead_units": "dead units"}
        seen = f"; the monitors saw {' and '.join(names[v] for v in flow)}" if flow else ""
        return Finding(UNDERFITTING, f"train/acc {acc:.3f} (under {r.underfit_acc:g}) with no train/val gap ({gap(last):.3f}): "
                                     f"high bias{seen}",
                       (["norm=batch", "activation=relu", "init=kaiming"] if flow else []) + ["a bigger model (model.hidden=[512,256] / model.channels=[64,128] / model=resnet)",
                        "'regularization=[none]'", "trainer.epochs=<more>", "trainkit lr-find"])
    return None


def as_record(findings: list[Finding]) -> dict:
    return {"verdict": findings[0].verdict, "findings": [asdict(f) for f in findings]}
