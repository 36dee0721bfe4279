"""`trainkit lr-find [overrides]`: the LR range test (Smith 2017; fastai's lr_find) on the composed config.

It trains a fresh copy of the configured model with the LR growing exponentially from
diagnostics.lr_find.start_lr to end_lr, one step per LR, and suggests an LR from the smoothed loss
(a tenth of the LR at the smoothed loss's minimum). It writes lr_find.csv, lr_find.png and lr_find.json into a folder of its own
(<paths.output_root>/lr_find/<time>_<task_name>) and restores nothing into any run.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainkit.errors import UserError


@dataclass
class Found:
    folder: Path
    suggestion: float
    valley: float
    steepest: float
    steps: int
    stopped: str

    def override(self) -> str:
        return f"optimizer.lr={self.suggestion:.2g}"


def new_folder(cfg: DictConfig, kind: str) -> Path:
    """<paths.output_root>/<kind>/<date>_<time>_<task_name>: a folder of its own, never a run's."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{time.time_ns() // 1000 % 1_000_000:06d}"
    folder = Path(str(cfg.paths.output_root)) / kind / f"{stamp}_{cfg.task_name}"
    try:
        folder.mkdir(parents=True, exist_ok=False)
    except OSError as e:
        raise UserError(f"paths.output_root={cfg.paths.output_root!r}: cannot make {folder} ({e.strerror})") from None
    return folder


def find_lr(cfg: DictConfig, folder: Path) -> Found:
    """Run the range test for `cfg` and write its files into `folder`."""
    from trainkit.components.optimizers import needs_closure
    from trainkit.engine.diagnostics.lr_range import run_range_test
    from trainkit.engine.loop import Trainer
    from trainkit.run.training import build_parts, one_epoch

    settings = cfg.diagnostics.lr_find
    device, amp_dtype, data, regularizers, model, optimizer, criterion = build_parts(cfg)
    if needs_closure(optimizer):
        raise UserError("optimizer=lbfgs is not allowed with lr-find: L-BFGS takes whole-batch steps with a line search, "
                        "there is no per-step LR to sweep")
    steps = int(settings.steps)
    trainer = Trainer(one_epoch(cfg, log_every_n_steps=steps + 1),  # the test reads every loss itself
                      model=model, optimizer=optimizer, schedule=_held_lr(), criterion=criterion, regularizers=regularizers,
                      data=data, device=device, amp_dtype=amp_dtype, callbacks=[])
    try:
        result = run_range_test(trainer, float(settings.start_lr), float(settings.end_lr), steps,
                                float(settings.diverge), float(settings.smoothing))
    finally:
        data.close()
    if len(result.lrs) < 3:
        raise UserError(f"diagnostics.lr_find.start_lr={settings.start_lr}: the loss blew up within {len(result.lrs)} "
                        f"step(s) ({result.stopped}); start lower")
    found = Found(folder, result.suggestion(), result.valley(), result.steepest(), len(result.lrs), result.stopped)
    write_files(folder, result, found, cfg)
    return found


def _held_lr():
    from trainkit.engine.diagnostics.lr_range import HeldLR

    return HeldLR()


def write_files(folder: Path, result, found: Found, cfg: DictConfig) -> None:
    with open(folder / "lr_find.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed), start=1):
            writer.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{smooth:.6g}"])
    (folder / "lr_find.json").write_text(json.dumps({
        "suggestion": found.suggestion, "rule": "a tenth of the LR at the smoothed loss's minimum",
        "override": found.override(), "valley": found.valley, "steepest": found.steepest, "steps": found.steps,
        "stopped": found.stopped,
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True)}, indent=2))
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    plot(result, found.suggestion, folder / "lr_find.png", title=f"{cfg.model._target_.rsplit('.', 1)[-1]}, "
         f"{cfg.optimizer._target_.rsplit('.', 1)[-1]} on {cfg.dataset.name}")


def plot(result, suggestion: float, path: Path, title: str) -> None:
    """Loss against LR on a log axis, the suggestion marked. matplotlib is imported here only: the
    training path never loads it."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    i = min(range(len(result.lrs)), key=lambda k: abs(result.lrs[k] - suggestion))
    ax.scatter([suggestion], [result.smoothed[i]], color="C3", zorder=3, label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    top = max(result.smoothed[0], min(result.smoothed)) * 1.5
    ax.set_ylim(min(min(result.smoothed), min(result.losses)) * 0.9, top)
    ax.set_title(f"LR range test: {title}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(cfg: DictConfig, overrides: list[str], sources=None) -> Found:
    from rich.markup import escape

    from trainkit.console import report

    folder = new_folder(cfg, "lr_find")
    found = find_lr(cfg, folder)
    report(f"lr-find: {found.steps} steps from lr {cfg.diagnostics.lr_find.start_lr:g}; stopped: {escape(found.stopped)}")
    report(f"suggested LR: {found.suggestion:.2g} (a tenth of the LR at the smoothed loss's minimum; fastai's valley "
           f"{found.valley:.2g}, steepest descent {found.steepest:.2g})")
    report(f"train with it: {escape(train_command(overrides, found.override()))}")
    report(f"wrote {escape(str(folder / 'lr_find.png'))} and lr_find.csv")
    return found


def train_command(overrides: list[str], lr_override: str) -> str:
    """`trainkit train` with the same overrides, the LR replaced, quoted for the shell."""
    import shlex

    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+") != "optimizer.lr"]
    return " ".join(["trainkit", "train", *map(shlex.quote, kept), lr_override])
