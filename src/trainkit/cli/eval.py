"""`trainkit eval <run_dir | checkpoint> [overrides]`: a saved model measured on a split, without training.

    trainkit eval outputs/runs/<run>                       # the test split, as the run's own test saw it
    trainkit eval outputs/runs/<run> tta=ten_crop top_k=3  # with test-time augmentation
    trainkit eval outputs/runs/<run> split=val
    trainkit eval outputs/runs/<run> dataset=kmnist        # another dataset with the same image size and classes

The overrides compose configs/eval.yaml (real Hydra: tta is a group, each option documents its
knobs). Everything is computed before anything is written, so a failed eval leaves the run
folder as it was; then eval/<name>.json, the confusion matrix and reliability PNGs, and scalars
in the run's TensorBoard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig, open_dict

from trainkit.cli.one_line_parser import OneLineParser
from trainkit.errors import UserError


def main(argv: list[str]) -> None:
    parser = OneLineParser(prog="trainkit eval", formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Measure a saved model on a split without training. Writes <run>/eval/<name>.json, <name>_confusion.png,\n"
        "<name>_reliability.png, <name>_predictions.csv, and scalars in the run's TensorBoard."))
    parser.add_argument("target", help="a run folder or a checkpoint .pt")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value", help=(
        "split=test|val|train; tta=none|flip|five_crop|ten_crop|multiscale|flip_translate (tta.pad=2 ...); "
        "dataset=<name> (another dataset with the same image size and classes; dataset.data_dir=...); "
        "top_k=5 name=<name> batch_size=<n> device=auto|cpu|cuda out=<folder>"))
    args = parser.parse_args(argv)
    target, overrides = args.target, args.overrides
    cfg = compose_eval(overrides)
    from trainkit.run.evaluation import evaluate
    from trainkit.run.load import load_run

    loaded = load_run(target)
    result = evaluate(loaded, cfg)
    out_dir = output_folder(loaded, cfg)
    write_outputs(out_dir, result, loaded)
    show(result, out_dir)


def compose_eval(overrides: list[str]) -> DictConfig:
    """configs/eval.yaml with the overrides; `dataset.<key>=` ones are kept apart (see dataset_for)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from trainkit.cli.preflight import COMPOSE_ERRORS, group_options, one_line

    for o in overrides:
        if "=" not in o:
            raise UserError(f"{o}: not an override; write key=value (split=val) or group=option (tta=flip)")
    hydra_overrides = [o for o in overrides if not o.lstrip("+~").startswith("dataset.")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="trainkit.configs", version_base=None):
            try:
                cfg = compose(config_name="eval", overrides=hydra_overrides)
            except COMPOSE_ERRORS as e:
                raise UserError(one_line(e, hydra_overrides, group_options)) from None
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.dataset_overrides = [o for o in overrides if o not in hydra_overrides]
    return cfg


def output_folder(loaded, cfg: DictConfig) -> Path:
    base = loaded.run_dir if loaded.run_dir is not None else loaded.checkpoint.parent
    return Path(cfg.out).expanduser() if cfg.get("out") else base / "eval"


def write_outputs(out_dir: Path, result: dict, loaded, tensorboard: bool = True) -> None:
    """eval/<name>.json, its PNGs and predictions, then scalars in the run's TensorBoard; each file
    written whole (atomically), so an interrupted write leaves no half file."""
    import csv
    import io
    import json

    from trainkit.atomic import atomic_write_text
    from trainkit.reports import eval_plots

    name = result["name"]
    predictions = result.pop("predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = result["with_tta"] or result["plain"]
    source = Path(result["run"] or result["checkpoint"] or out_dir.parent).name
    title = f"{source}: {result['split']} ({result['dataset']})" + \
        (f", tta={result['tta']['kind']}" if result["with_tta"] is not None else "")
    eval_plots.confusion_matrix_png(out_dir / f"{name}_confusion.png", shown["confusion_matrix"], loaded.class_names, title)
    eval_plots.reliability_png(out_dir / f"{name}_reliability.png", shown["reliability"], shown["ece"], title)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["index", "label", "predicted", "confidence", "predicted_tta"])
    for i, (label, pred, conf) in enumerate(zip(predictions["label"], predictions["plain"], predictions["plain_confidence"])):
        tta = predictions["tta"][i] if predictions["tta"] is not None else ""
        writer.writerow([i, loaded.class_names[label], loaded.class_names[pred], f"{conf:.6f}",
                         loaded.class_names[tta] if tta != "" else ""])
    atomic_write_text(out_dir / f"{name}_predictions.csv", rows.getvalue())
    atomic_write_text(out_dir / f"{name}.json", json.dumps(result, indent=1))
    if tensorboard:
        log_to_tensorboard(loaded, result)


def log_to_tensorboard(loaded, result: dict) -> None:
    """eval/<name>/<metric> scalars at the checkpoint's step, in a new event file of the run's log."""
    if loaded.run_dir is None or not (loaded.run_dir / "tensorboard").is_dir():
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(loaded.run_dir / "tensorboard"), filename_suffix=f".eval-{result['name']}")
    step = loaded.global_step
    for label, report in (("", result["plain"]), ("tta_", result["with_tta"])):
        if report is None:
            continue
        for metric in ("acc", "nll", "ece", *[k for k in report if k.startswith("top")]):
            writer.add_scalar(f"eval/{result['name']}/{label}{metric}", report[metric], step)
    writer.close()


def show(result: dict, out_dir: Path) -> None:
    from rich.table import Table

    from trainkit.console import console

    plain, tta = result["plain"], result["with_tta"]
    epoch = f" (epoch {result['epoch']} checkpoint)" if result.get("epoch") is not None else ""
    table = Table(title=f"eval: {result['split']} split of {result['dataset']}, {result['plain']['images']} images{epoch}",
                  header_style="bold")
    table.add_column("metric")
    table.add_column("no TTA", justify="right")
    if tta is not None:
        table.add_column(f"tta={result['tta']['kind']} ({result['tta']['views']} views)", justify="right")
    metrics = ["acc", *[k for k in plain if k.startswith("top") and k != "top1"], "nll", "ece"]
    for metric in metrics:
        table.add_row(metric, f"{plain[metric]:.4f}", *([f"{tta[metric]:.4f}"] if tta is not None else []))
    console.print(table)
    recorded = result["recorded"].get(f"{result['split']}/acc")
    if recorded is not None:
        same = "reproduced exactly" if recorded == plain["acc"] else f"differs by {plain['acc'] - recorded:+.6f}"
        console.print(f"recorded {result['split']}/acc of the run: {recorded:.6f} ({same})")
    worst = ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in (tta or plain)["most_confused"][:5])
    if worst:
        console.print(f"most confused (true->predicted): {worst}")
    console.print(f"wrote {out_dir / (result['name'] + '.json')} (+ _confusion.png, _reliability.png, _predictions.csv)")


if __name__ == "__main__":
    main(sys.argv[1:])
