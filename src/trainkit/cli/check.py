"""`trainkit check [overrides]`: the lectures' babysitting sequence as one command, on the composed config.

1. the initial loss (data loss alone) against ln C, with the inputs and the labels;
2. overfitting a tiny subset: the same run as `trainkit train debug=overfit` (so the same verdict);
3. the regularization check: with the configured regularization on, the initial loss rises;
4. the LR range test (`trainkit lr-find`), with its suggestion;
5. one timed epoch: images/s, the estimated time of the full run, peak memory.

It prints a table (step, figure, verdict, what to do) and writes check.json, the LR range test's
files and the overfit run into <paths.output_root>/check/<time>_<task_name>; it touches no other run.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

OK, WARN, FAIL, INFO = "ok", "warning", "FAILED", "-"


@dataclass
class Row:
    step: str
    figure: str
    verdict: str
    todo: str = ""


def sanity_rows(cfg: DictConfig) -> tuple[list[Row], Row, object]:
    """Steps 1 and 3 on a fresh model, and a Trainer for step 5 (built once: the same seeded start)."""
    from trainkit.components.pretrained import pretrained_source
    from trainkit.engine.callbacks.sanity import run_checks
    from trainkit.engine.diagnostics import sanity
    from trainkit.engine.diagnostics.lr_range import HeldLR
    from trainkit.engine.loop import Trainer
    from trainkit.run.training import build_parts, one_epoch

    device, amp_dtype, data, regularizers, model, optimizer, criterion = build_parts(cfg)
    trainer = Trainer(one_epoch(cfg), model=model, optimizer=optimizer, schedule=HeldLR(), criterion=criterion,
                      regularizers=regularizers, data=data, device=device, amp_dtype=amp_dtype, callbacks=[])
    d = cfg.diagnostics
    weighted = cfg.dataset.get("class_weights") == "auto" or bool(cfg.dataset.get("balanced_sampler"))
    initial, inputs, labels = run_checks(trainer, d.sanity_images, d.initial_loss_tolerance, d.class_imbalance, weighted,
                                         pretrained_source(cfg.model))
    judged = initial.figures.get("judged", True)  # not from pretrained weights: ln C is the loss of random ones
    rows = [Row("initial loss", f"{initial.figures['loss']:.3f} vs ln({data.spec.num_classes}) = {initial.figures['ln_c']:.3f}"
                + ("" if judged else " (pretrained weights: not judged)"),
                (OK if initial.ok else WARN) if judged else INFO, "" if initial.ok else initial.message.split(": ", 1)[-1]),
            Row("inputs", inputs.message if inputs.ok else inputs.message.split(":")[0], OK if inputs.ok else WARN,
                "" if inputs.ok else inputs.message),
            Row("labels", labels.message.split(", over")[0], OK if labels.ok else WARN, "" if labels.ok else labels.message)]
    x, y = sanity.sample_batch(data, d.sanity_images)
    with_reg = sanity.training_loss(model, criterion, regularizers, optimizer, x, y, device, amp_dtype)
    return rows, regularization_row(cfg, initial.figures["loss"], with_reg), trainer


def regularization_row(cfg: DictConfig, data_loss: float, with_reg: float) -> Row:
    chosen = sorted((cfg.regularization or {}).keys())
    decay = float(cfg.optimizer.get("weight_decay", 0.0) or 0.0)
    active = [c for c in chosen if c not in ("early_stopping", "grad_clip")] + (["optimizer.weight_decay"] if decay else [])
    figure = f"{data_loss:.3f} -> {with_reg:.3f}"
    if not active:
        return Row("regularization", f"{figure} (none in the loss)", INFO,
                   "none configured: add some once the overfit step passes, e.g. 'regularization=[l2,dropout]'")
    rise = with_reg - data_loss
    if rise > 1e-4:
        return Row("regularization", f"{figure} (+{rise:.3g} from {', '.join(active)})", OK)
    return Row("regularization", f"{figure} ({', '.join(active)})", WARN,
               f"the configured regularization ({', '.join(active)}) does not raise the initial loss: check its strength")


@contextmanager
def quiet():
    """The sub-run's own lines (epochs, its results table) stay out of the table's way."""
    from trainkit.console import console, error_console

    was = console.quiet, error_console.quiet
    console.quiet = error_console.quiet = True
    try:
        yield
    finally:
        console.quiet, error_console.quiet = was


def overfit_row(overrides: list[str], sources, folder: Path) -> Row:
    """`trainkit train debug=overfit` with these overrides, run into `folder`: its verdict."""
    from trainkit.cli import preflight
    from trainkit.run.record import RunRecord
    from trainkit.run.training import RunEnded, run

    extra = [] if any(o.split("=")[0].lstrip("+") == "debug" for o in overrides) else ["debug=overfit"]
    cfg = preflight.compose_checked([*overrides, *extra], sources).cfg
    if not cfg.trainer.get("overfit_batches"):
        return Row("overfit a tiny subset", "debug= sets no trainer.overfit_batches", INFO, "use debug=overfit")
    try:
        with quiet():
            run(cfg, folder)
    except RunEnded as e:
        return Row("overfit a tiny subset", f"the run {e.status}", FAIL, "lower optimizer.lr; see " + str(folder))
    verdict = (RunRecord.read(folder) or {}).get("overfit_check", {})
    figure = (f"{verdict.get('images')} images, {verdict.get('epochs')} epochs: train/acc {verdict.get('train/acc', math.nan):.3f}, "
              f"train/loss {verdict.get('train/loss', math.nan):.3f}")
    if verdict.get("passed"):
        return Row("overfit a tiny subset", figure, OK)
    frozen = OmegaConf.select(cfg, "finetune.mode")
    if frozen in ("linear_probe", "last_n"):
        return Row("overfit a tiny subset", figure, WARN,
                   f"finetune={frozen} trains only the blocks near the head, which may not memorise them; "
                   "check the whole model with finetune=full")
    return Row("overfit a tiny subset", figure, FAIL,
               "cannot memorise them: too little capacity (a bigger model), an LR too low (optimizer.lr), "
               "or a bug in the data or labels")


def lr_row(cfg: DictConfig, folder: Path) -> Row:
    from trainkit.cli.lr_find import find_lr

    found = find_lr(cfg, folder)
    lr = float(cfg.optimizer.get("lr", math.nan))
    ratio = lr / found.suggestion
    figure = f"suggested {found.suggestion:.2g} (configured {lr:.2g}); lr_find.png"
    if 0.1 <= ratio <= 10:
        return Row("LR range test", figure, OK)
    return Row("LR range test", figure, WARN, f"the configured LR is {ratio:.3g} x the suggestion: try {found.override()}")


def timed_epoch_row(cfg: DictConfig, trainer) -> Row:
    """One epoch of training and validation on the run's own parts, timed."""
    import resource

    import torch

    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    trainer.train_one_epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    trained = time.perf_counter()
    trainer.evaluate(trainer.data.val, "val", trainer.limit_val_batches)
    finished = time.perf_counter()
    images = trainer.steps_per_epoch * int(cfg.trainer.batch_size)
    images = min(images, len(trainer.data.splits.train))
    epoch_s = finished - started
    if device.type == "cuda":
        peak = f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    else:
        peak = f"peak process memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
    total = epoch_s * int(cfg.trainer.epochs)
    figure = (f"{images / (trained - started):.0f} img/s; epoch {epoch_s:.1f} s, full run ({cfg.trainer.epochs} epochs) "
              f"~{format_duration(total)}; {peak}")
    return Row("one timed epoch", figure, INFO)


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_table(rows: list[Row], folder: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from trainkit.console import console, log

    table = Table(title=f"trainkit check: {escape(str(folder))}", show_header=True, header_style="bold", show_lines=True)
    for column in ("step", "figure", "verdict", "what to do"):
        table.add_column(column, overflow="fold")
    colour = {OK: "green", WARN: "yellow", FAIL: "red"}
    for r in rows:
        table.add_row(r.step, escape(r.figure), f"[{colour[r.verdict]}]{r.verdict}[/]" if r.verdict in colour else r.verdict,
                      escape(r.todo))
    console.print(table)
    for r in rows:
        log.info("check: %s: %s: %s%s", r.step, r.verdict, r.figure, f"; {r.todo}" if r.todo else "")


def main(cfg: DictConfig, overrides: list[str], sources=None) -> list[Row]:
    from trainkit.cli import preflight
    from trainkit.cli.lr_find import new_folder
    from trainkit.console import report

    folder = new_folder(cfg, "check")
    sources = sources or preflight.ConfigSources()
    report(f"trainkit check: initial loss, overfit a tiny subset, regularization, LR range test, one timed epoch; into {folder}")
    with quiet():
        rows, regularization, trainer = sanity_rows(cfg)
    try:
        rows.append(overfit_row(overrides, sources, folder / "overfit"))
        rows.append(regularization)
        with quiet():
            rows.append(lr_row(cfg, folder))
        rows.append(timed_epoch_row(cfg, trainer))
    finally:
        trainer.data.close()
    (folder / "check.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print_table(rows, folder)
    return rows
