"""SanityChecks: the start-of-run checks (initial loss vs ln C, inputs, labels), one line each in
the log and in metrics.json under `diagnostics`. They run before the first step of a new run (not
on a resume) and change nothing the run uses (see engine/diagnostics/sanity.py)."""

from __future__ import annotations

from rich.markup import escape

from trainkit.console import report
from trainkit.engine.callbacks.base import Callback
from trainkit.engine.diagnostics import sanity


class SanityChecks(Callback):
    order = 5  # before the progress bar starts and before anything is logged

    def __init__(self, images: int, tolerance: float, imbalance: float, weighted: bool, publish=None,
                 pretrained: str | None = None):
        self.images, self.tolerance, self.imbalance, self.weighted = int(images), float(tolerance), float(imbalance), weighted
        self.pretrained = pretrained  # the source of the starting weights (components.pretrained.pretrained_source)
        self.publish = publish  # publish(name, record): into metrics.json's diagnostics
        self.checks: list[sanity.Check] = []

    def on_fit_start(self, trainer) -> None:
        if trainer.global_step > 0:
            return  # a resumed run: its start was checked when it began
        self.checks = run_checks(trainer, self.images, self.tolerance, self.imbalance, self.weighted, self.pretrained)
        for check in self.checks:
            report(escape(check.line()) if check.ok else f"[yellow]{escape(check.line())}[/]")
            if self.publish is not None:
                self.publish(check.name, check.as_record())


def run_checks(trainer, images: int, tolerance: float, imbalance: float, weighted: bool,
               pretrained: str | None = None) -> list[sanity.Check]:
    data = trainer.data
    x, y = sanity.sample_batch(data, images)
    loss = sanity.data_loss(trainer.model, x, y, trainer.device, trainer.amp_dtype)
    return [sanity.initial_loss_check(loss, data.spec.num_classes, tolerance, pretrained), sanity.inputs_check(x),
            sanity.labels_check(data.splits.train.labels, data.spec.num_classes, imbalance, weighted)]
