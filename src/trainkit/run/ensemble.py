"""Ensembles of trained runs: which runs, whether they fit together, and their averaged softmax.

"Train multiple independent models; at test time average their predicted probability
distributions, then choose argmax" (the lectures). Each member sees the images through its own
preprocessing, so runs with different architectures or normalization can be combined; they
must predict the same classes from the same images.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from trainkit.errors import UserError
from trainkit.run.load import LoadedRun, load_run

SNAPSHOT_GLOB = "checkpoints/snapshots/epoch_*.pt"


def members_of(targets: list[str], top: int | None, snapshots: bool) -> tuple[list[Path], Path]:
    """(the members' run folders or checkpoints, the folder the ensemble's results go to)."""
    paths = [Path(t).expanduser() for t in targets]
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such run folder, sweep folder or checkpoint")
    if snapshots:
        if len(paths) != 1 or not paths[0].is_dir():
            raise UserError("--snapshots takes one run folder (trained with callbacks=[snapshots])")
        found = sorted(paths[0].glob(SNAPSHOT_GLOB))
        if not found:
            raise UserError(f"{paths[0]}: no snapshots in checkpoints/snapshots/; train with callbacks=[snapshots] "
                            "(and schedule=cosine_restarts, or callbacks.snapshots.every_n_epochs=N)")
        members, home = found[-top:] if top else found, paths[0]
    elif len(paths) == 1 and is_sweep(paths[0]):
        members, home = ranked_runs(paths[0])[:top] if top else ranked_runs(paths[0]), paths[0]
    else:
        if top is not None:
            raise UserError("--top K picks the best runs of a sweep folder (or the last snapshots): give one sweep folder")
        root = Path(os.environ.get("TRAINKIT_OUTPUT_DIR") or "outputs")
        members, home = paths, root / "ensembles" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if len(members) < 2:
        raise UserError(f"an ensemble needs at least 2 members; found {len(members)} "
                        f"({', '.join(str(m) for m in members) or 'none'})")
    return members, home


def is_sweep(folder: Path) -> bool:
    return folder.is_dir() and not (folder / "checkpoints").is_dir() and any(folder.glob("*/metrics.json"))


def ranked_runs(sweep: Path) -> list[Path]:
    """The sweep's completed runs, best first by each run's own monitored validation value
    (never by test accuracy: choosing members on the test set would overstate the ensemble)."""
    runs = []
    for record_path in sorted(sweep.glob("*/metrics.json")):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("status") == "completed" and record.get("best") is not None \
                and (record_path.parent / "checkpoints" / "best.pt").is_file():
            sign = -1.0 if record.get("mode") == "max" else 1.0
            runs.append((sign * float(record["best"]), record_path.parent))
    if not runs:
        raise UserError(f"{sweep}: no completed run with a best.pt in this sweep folder")
    return [path for _, path in sorted(runs, key=lambda r: r[0])]


def check_members_fit(first: LoadedRun, other: LoadedRun) -> None:
    a, b = first.spec, other.spec
    if (a.image_size, a.in_channels) != (b.image_size, b.in_channels):
        raise UserError(f"cannot ensemble {other.checkpoint} with {first.checkpoint}: it takes {b.image_size}x{b.image_size}"
                        f"x{b.in_channels} images, the other {a.image_size}x{a.image_size}x{a.in_channels}")
    if list(a.class_names) != list(b.class_names):
        raise UserError(f"cannot ensemble {other.checkpoint} with {first.checkpoint}: it predicts the classes "
                        f"{b.class_names[:6]}{'...' if len(b.class_names) > 6 else ''}, the other "
                        f"{a.class_names[:6]}{'...' if len(a.class_names) > 6 else ''}")


def evaluate_ensemble(members: list[Path], cfg: DictConfig) -> tuple[dict, LoadedRun]:
    """Every member measured on the same images, then their mean softmax; (result, first member)."""
    from trainkit.engine.evaluation import classification_report
    from trainkit.run.evaluation import check_top_k, measure

    loaded = [load_run(m) for m in members]
    for other in loaded[1:]:
        check_members_fit(loaded[0], other)
    top_k = check_top_k(cfg.top_k, len(loaded[0].class_names))
    measured = []
    for run in loaded:
        m = measure(run, cfg)
        if measured and m.fingerprint != measured[0].fingerprint:
            raise UserError(f"cannot ensemble {run.checkpoint} with {loaded[0].checkpoint}: their {cfg.split} splits hold "
                            f"different images{dataset_difference(loaded[0], run)}; members must be tested on the same images")
        measured.append(m)
        run.model.cpu()  # one member's weights on the device at a time
    names = loaded[0].class_names
    labels = measured[0].predictions.labels
    member_probs = [m.probabilities for m in measured]
    mean = np.mean(member_probs, axis=0)
    report = classification_report(mean, labels, names, top_k, bins=int(cfg.bins))
    rows = [{"name": member_name(run), "checkpoint": str(run.checkpoint), "acc": float((p.argmax(1) == labels).mean())}
            for run, p in zip(loaded, member_probs)]
    best = max(r["acc"] for r in rows)
    tta = OmegaConf.to_container(cfg.tta, resolve=True)
    kind = "snapshots" if all(m.parent.name == "snapshots" for m in members) else "runs"
    result = {
        "name": str(cfg.name or f"ensemble_{len(loaded)}-{kind}_{cfg.split}" + ("" if tta["kind"] == "none" else f"_tta-{tta['kind']}")),
        "run": None, "checkpoint": None, "epoch": None, "dataset": measured[0].dataset, "split": str(cfg.split),
        "device": str(measured[0].device), "tta": {**tta, "views": measured[0].views},
        "members": rows, "best_member_acc": best, "gain_over_best_member": report["acc"] - best,
        "plain": report, "with_tta": None, "recorded": {},
        "predictions": {"label": labels.tolist(), "plain": mean.argmax(1).tolist(), "plain_confidence": mean.max(1).tolist(),
                        "tta": None},
    }
    return result, loaded[0]


def member_name(run: LoadedRun) -> str:
    if run.checkpoint.parent.name == "snapshots":
        return f"snapshot {run.checkpoint.stem} (epoch {run.epoch})"
    return str(run.run_dir or run.checkpoint)


def dataset_difference(a: LoadedRun, b: LoadedRun) -> str:
    """ (dataset.split_seed 0 vs 1): the first dataset setting the two runs differ in, if any."""
    da, db = a.config.get("dataset") or {}, b.config.get("dataset") or {}
    for key in sorted(set(da) | set(db)):
        if da.get(key) != db.get(key):
            return f" (dataset.{key} {da.get(key)} vs {db.get(key)})"
    return ""
