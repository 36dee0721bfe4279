"""Pruning's worth, measured: the same random search with the median pruner and without, over 3
sampler seeds, run alternately (so machine load hits both alike). Prints, per seed and in all,
the trials pruned, the epochs run and saved, and the best value found.

    python scripts/bench_pruning.py [--trials 16] [--epochs 8] [--seeds 0 1 2] [--out /tmp/bench_pruning]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SEARCH = ["hydra/sweeper=trainkit_optuna", "model=mlp", "optimizer=sgd", "optimizer.lr=tag(log, interval(1e-5, 10.0))",
          "logger.tensorboard.image_grid=0", "trainer.progress=false"]


def sweep(out: Path, seed: int, pruner: str, trials: int, epochs: int) -> dict:
    folder = out / f"seed{seed}_{pruner}"
    trainkit = str(Path(sys.executable).parent / "trainkit")
    started = time.perf_counter()
    subprocess.run([trainkit, "train", "-m", *SEARCH, f"hydra.sweeper.seed={seed}", f"hydra.sweeper.pruner={pruner}",
                    f"hydra.sweeper.n_trials={trials}", f"trainer.epochs={epochs}", f"hydra.sweep.dir={folder}"],
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in folder.glob("*/metrics.json")]
    best = max((r["best"] for r in records if r.get("status") in ("completed", "pruned") and r.get("best") is not None),
               default=float("nan"))
    return {"pruned": sum(r.get("status") == "pruned" for r in records), "epochs": sum(r.get("epochs_run", 0) for r in records),
            "best": best, "seconds": seconds, "trials": len(records)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_pruning"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{args.trials} trials x {args.epochs} epochs, model=mlp on digits, sgd, lr log-uniform in [1e-5, 10], random sampler")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows = []
    for i, seed in enumerate(args.seeds):
        order = ("median", "none") if i % 2 == 0 else ("none", "median")
        res = {pruner: sweep(args.out, seed, pruner, args.trials, args.epochs) for pruner in order}
        rows.append(res)
        m, n = res["median"], res["none"]
        print(f"seed {seed}: median pruner: {m['pruned']} of {m['trials']} trials pruned, {m['epochs']} epochs "
              f"({n['epochs'] - m['epochs']} saved, {1 - m['epochs'] / n['epochs']:.0%}), best val/acc {m['best']:.4f}, "
              f"{m['seconds']:.0f} s | no pruning: {n['epochs']} epochs, best val/acc {n['best']:.4f}, {n['seconds']:.0f} s")
    tot = {k: {f: sum(r[k][f] for r in rows) for f in ("pruned", "epochs", "trials", "seconds")} for k in ("median", "none")}
    mean_best = {k: sum(r[k]["best"] for r in rows) / len(rows) for k in ("median", "none")}
    print(f"all seeds: {tot['median']['pruned']} of {tot['median']['trials']} trials pruned; epochs {tot['median']['epochs']} vs "
          f"{tot['none']['epochs']} ({1 - tot['median']['epochs'] / tot['none']['epochs']:.0%} saved); wall "
          f"{tot['median']['seconds']:.0f} s vs {tot['none']['seconds']:.0f} s; mean best val/acc {mean_best['median']:.4f} "
          f"(pruning) vs {mean_best['none']:.4f} (none)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
