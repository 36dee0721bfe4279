"""What the training monitors (diagnostics.monitor) cost: seconds per epoch with them on and off.

Runs the installed `trainkit train` on Fashion-MNIST with the cnn (experiment=fashion_mnist_cnn),
alternating monitor=true / monitor=false runs so that a change in the machine's load hits both
alike, and prints each run's train+val seconds per epoch (metrics.json's epoch_seconds) and the
median ratio. The target is at most 3% (issue 11).

    python scripts/bench_monitors.py                          # 3 pairs, 1 epoch each, the full epoch
    python scripts/bench_monitors.py --pairs 3 --limit-train-batches 100 --limit-val-batches 1   # quicker
    python scripts/bench_monitors.py --dataset digits          # no real data needed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(folder: Path, monitor: bool, args) -> float:
    trainkit = Path(sys.executable).parent / "trainkit"
    overrides = ["experiment=fashion_mnist_cnn"] if args.dataset == "fashion_mnist" else ["dataset=digits"]
    if args.data_dir:
        overrides.append(f"dataset.data_dir={args.data_dir}")
    overrides += [f"trainer.epochs={args.epochs}", f"diagnostics.monitor={str(monitor).lower()}", "trainer.progress=false",
                  "diagnostics.sanity=false", "diagnostics.diagnosis=false", "logger.tensorboard.image_grid=0",
                  "trainer.limit_test_batches=1",  # the test pass is not part of an epoch's seconds
                  f"hydra.run.dir={folder}"]
    if args.limit_train_batches:
        overrides.append(f"trainer.limit_train_batches={args.limit_train_batches}")
    if args.limit_val_batches:  # the monitors do nothing in validation: a shorter one leaves the ratio clearer
        overrides.append(f"trainer.limit_val_batches={args.limit_val_batches}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run([str(trainkit), "train", *overrides], check=True, capture_output=True, env=env, cwd=REPO)
    seconds = json.loads((folder / "metrics.json").read_text())["epoch_seconds"]
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="monitor on/off pairs, alternating")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-train-batches", type=int, default=0, help="0: the full epoch")
    parser.add_argument("--limit-val-batches", type=int, default=0, help="0: the full validation set")
    parser.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_monitors_"))
    on, off = [], []
    try:
        for i in range(args.pairs):
            order = (True, False) if i % 2 == 0 else (False, True)  # ABBA: neither side always goes first
            for monitor in order:
                s = one_run(work / f"{i}_{monitor}", monitor, args)
                (on if monitor else off).append(s)
                print(f"pair {i + 1}: monitor={str(monitor).lower():5}  {s:.2f} s/epoch", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [a / b for a, b in zip(on, off)]
    print(f"monitor on : median {statistics.median(on):.2f} s/epoch  ({', '.join(f'{s:.2f}' for s in on)})")
    print(f"monitor off: median {statistics.median(off):.2f} s/epoch  ({', '.join(f'{s:.2f}' for s in off)})")
    print(f"overhead: median of pair ratios {statistics.median(ratios) - 1:+.1%} "
          f"(pairs: {', '.join(f'{r - 1:+.1%}' for r in ratios)}); target <= +3%")
    print(f"machine: {os.cpu_count()} cores, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
