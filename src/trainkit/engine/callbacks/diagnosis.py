"""Diagnosis: collects the run's curves and, when the fit ends, says what they show (overfitting,
underfitting, LR too high or too low, healthy) with the overrides to try. The lines go under the
results table, the findings into metrics.json (`diagnosis`) and TensorBoard (a text summary)."""

from __future__ import annotations

from trainkit.engine.callbacks.base import Callback
from trainkit.engine.diagnostics.diagnosis import Curves, Rules, as_record, diagnose
from trainkit.status import Status


class Diagnosis(Callback):
    order = 40  # after the checkpoints; its lines are printed by the run under the results table
    state_key = "diagnosis"  # the curves so far, so a resumed run is diagnosed on all of them

    def __init__(self, rules: Rules, every: int, monitor: str, mode: str, monitors=None, tensorboard=None, publish=None):
        self.rules, self.every = rules, max(1, int(every))
        self.curves = Curves(monitor=monitor, mode=mode)
        self.monitors, self.tensorboard, self.publish = monitors, tensorboard, publish
        self.findings = []

    def on_fit_start(self, trainer) -> None:
        self.curves.lr = max(float(g.get("initial_lr", g["lr"])) for g in trainer.optimizer.param_groups)

    def on_step_end(self, trainer, loss) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == 1:  # the steps the TensorBoard logger reads the loss at anyway
            self.curves.step_losses.append((step, float(loss)))

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.curves.epochs.append({k: float(v) for k, v in metrics.items()})

    def on_fit_end(self, trainer, status: Status) -> None:
        if status not in (Status.COMPLETED, Status.DIVERGED):
            return  # interrupted or crashed: the curves are not the run's
        self.curves.status = str(status)
        if self.monitors is not None:
            self.curves.monitor_verdicts = [v.name for v in self.monitors.verdicts]
            ratios = self.monitors.update_ratios
            self.curves.update_ratio = sorted(ratios)[len(ratios) // 2] if ratios else None
        self.findings = diagnose(self.curves, self.rules)
        if self.publish is not None:
            self.publish(as_record(self.findings))
        writer = getattr(self.tensorboard, "writer", None)
        if writer is not None:
            writer.add_text("diagnostics/diagnosis", "\n\n".join(f.line() for f in self.findings), trainer.global_step)

    @property
    def summary(self) -> list[str]:
        return [f.line() for f in self.findings]

    def state_dict(self) -> dict:
        return {"epochs": self.curves.epochs, "step_losses": self.curves.step_losses}

    def load_state_dict(self, state: dict) -> None:
        self.curves.epochs = list(state.get("epochs", []))
        self.curves.step_losses = [tuple(s) for s in state.get("step_losses", [])]
