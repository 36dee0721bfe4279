"""The README's coarse-to-fine figures: hparams_search=lr_wd_coarse, `trainkit refine`, then the
fine stage with the command refine prints; prints each stage's ranges, best value and test accuracy.

    python scripts/coarse_to_fine.py [--coarse 20] [--fine 10] [--epochs 4] [--out /tmp/coarse_to_fine]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

FAST = ["logger.tensorboard.image_grid=0", "trainer.progress=false"]


def trainkit(*args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "trainkit")
    return subprocess.run([exe, *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)


def stage(folder: Path) -> dict:
    records = [json.loads(p.read_text()) for p in folder.glob("*/metrics.json")]
    done = [r for r in records if r.get("status") == "completed"]
    best = max(done, key=lambda r: r["best"])
    top = sorted((r["best"] for r in done), reverse=True)[:5]
    every = sorted(r["best"] for r in records if r.get("best") is not None)
    return {"median": statistics.median(every),
            "worst": every[0], "trials": len(records), "completed": len(done), "pruned": sum(r.get("status") == "pruned" for r in records),
            "best": best["best"], "test": best["test"].get("test/acc"), "top5_mean": sum(top) / len(top),
            "overrides": " ".join(o for o in best["overrides"] if "=" in o and not o.startswith("hparams_search"))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--coarse", type=int, default=20)
    p.add_argument("--fine", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--model", default="mlp")
    p.add_argument("--out", type=Path, default=Path("/tmp/coarse_to_fine"))
    args = p.parse_args()
    coarse, fine = args.out / "coarse", args.out / "fine"
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    t = time.perf_counter()
    trainkit("train", "-m", "hparams_search=lr_wd_coarse", f"model={args.model}", *FAST, f"trainer.epochs={args.epochs}",
             f"hydra.sweeper.n_trials={args.coarse}", f"hydra.sweep.dir={coarse}")
    c = stage(coarse)
    print(f"coarse: {c['trials']} trials ({c['pruned']} pruned) in {time.perf_counter() - t:.0f} s; best val/acc {c['best']:.4f} "
          f"(test/acc {c['test']:.4f}), median {c['median']:.4f}, worst {c['worst']:.4f}; best: {c['overrides']}")
    refined = trainkit("refine", str(coarse))
    print(refined.stdout + refined.stderr)
    command = next(line.strip() for line in refined.stdout.splitlines() if line.strip().startswith("trainkit train -m"))
    t = time.perf_counter()
    # refine's command repeats the coarse stage's own overrides (model, epochs...): only the size and folder are added
    trainkit(*shlex.split(command)[1:], f"hydra.sweeper.n_trials={args.fine}", f"hydra.sweep.dir={fine}")
    f = stage(fine)
    print(f"fine: {f['trials']} trials ({f['pruned']} pruned) in {time.perf_counter() - t:.0f} s; best val/acc {f['best']:.4f} "
          f"(test/acc {f['test']:.4f}), median {f['median']:.4f}, worst {f['worst']:.4f}; best: {f['overrides']}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
