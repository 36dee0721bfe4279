"""Measure what test-time augmentation and ensembling add, with trainkit's own commands.

Trains one run per seed (a sweep), evaluates each with every TTA asked for, then ensembles the
runs; prints one Markdown table (the README's figures come from here).

    python scripts/eval_gains.py --seeds 1 2 3 --tta five_crop flip_translate -- trainer.epochs=20 augmentation=affine
    python scripts/eval_gains.py --out outputs/gains_cifar --tta flip ten_crop flip_translate -- \
        dataset=imagefolder dataset.root=../shared/data/cifar10-subset augmentation=flip_crop trainer.epochs=15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def trainkit(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "trainkit"), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--tta", nargs="+", default=["flip", "five_crop", "flip_translate"])
    parser.add_argument("--out", default=f"outputs/gains_{time.strftime('%Y%m%d_%H%M%S')}")
    parser.add_argument("overrides", nargs="*", help="trainkit train overrides (after --)")
    args = parser.parse_args()
    sweep = Path(args.out)
    started = time.time()
    if not (sweep / "summary.csv").is_file():
        trainkit("train", "-m", f"trainer.seed={','.join(map(str, args.seeds))}", f"hydra.sweep.dir={sweep}",
                 "trainer.progress=false", *args.overrides)
    trained = time.time()
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    rows = {}
    for run in runs:
        for tta in args.tta:
            path = run / "eval" / f"test_tta-{tta}.json"
            if not path.is_file():  # a rerun only prints the table again
                trainkit("eval", str(run), f"tta={tta}")
            report = json.loads(path.read_text())
            rows.setdefault("no TTA", []).append(report["plain"]["acc"])
            rows.setdefault(f"tta={tta}", []).append(report["with_tta"]["acc"])
    if not list((sweep / "eval").glob("ensemble_*-runs_test.json")):
        trainkit("ensemble", str(sweep))
    ensemble = json.loads(next((sweep / "eval").glob("ensemble_*-runs_test.json")).read_text())
    print(f"{len(runs)} runs ({' '.join(args.overrides)}), test images: {ensemble['plain']['images']}; "
          f"training {trained - started:.0f} s, evaluation {time.time() - trained:.0f} s, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| | test acc, mean ± std over seeds | gain over no TTA |")
    print("|---|---|---|")
    plain = np.array(rows.pop("no TTA")[:: len(args.tta)])
    print(f"| no TTA | {plain.mean():.4f} ± {plain.std():.4f} | |")
    for name, values in rows.items():
        values = np.array(values)
        print(f"| {name} | {values.mean():.4f} ± {values.std():.4f} | {(values - plain).mean():+.4f} |")
    best = ensemble["best_member_acc"]
    print(f"\nensemble of {len(runs)} (mean softmax): {ensemble['plain']['acc']:.4f}; best member {best:.4f} "
          f"(gain {ensemble['gain_over_best_member']:+.4f}); members' mean {np.mean([m['acc'] for m in ensemble['members']]):.4f}")


if __name__ == "__main__":
    main()
