"""Seconds per training step: 1 process against trainer.devices=2 (DDP, gloo on CPU or NCCL on GPUs).

    python scripts/bench_ddp.py [--repeats 2] [--steps 60] [extra overrides...]

Each layout runs as the real `trainkit train` command, alternating (1 process x all cores, 1 process x 1
thread, 2 processes x cores/2 threads) for --repeats rounds; a step's time is the median gap between the
wall times TensorBoard records for consecutive steps (log_every_n_steps=1), past the first 10 steps. The
load average is printed beside each run: on a shared machine the absolute times move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = {  # name: (extra overrides, environment)
    "1 process x all cores": ([], {}),
    "1 process x 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
    "2 processes (DDP)": (["trainer.devices=2"], {}),
}


def step_times(run_dir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/loss_step")
    return [b.wall_time - a.wall_time for a, b in zip(events, events[1:])][10:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data-dir", default="../shared/data", help="the folder holding FashionMNIST/raw")
    args, extra = parser.parse_known_args()
    base = ["dataset=fashion_mnist", "model=cnn", "optimizer=adam", "trainer.batch_size=128", "trainer.epochs=1",
            f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            "trainer.log_every_n_steps=1", "trainer.progress=false", f"paths.data_dir={args.data_dir}", *extra]
    trainkit = str(Path(sys.executable).parent / "trainkit")
    results: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    print(f"{'layout':24} {'repeat':>6} {'s/step':>8} {'load (1 min)':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, (overrides, env) in LAYOUTS.items():
                run_dir = Path(tmp) / f"{repeat}-{list(LAYOUTS).index(name)}"
                done = subprocess.run([trainkit, "train", *base, *overrides, f"hydra.run.dir={run_dir}"],
                                      env={**os.environ, **env}, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{name}: exit {done.returncode}\n{done.stderr[-2000:]}")
                seconds = statistics.median(step_times(run_dir))
                results[name].append(seconds)
                print(f"{name:24} {repeat + 1:>6} {seconds:8.3f} {os.getloadavg()[0]:13.1f}", flush=True)
    reference = statistics.fmean(results["1 process x all cores"])
    print("\nmean s/step, and as a share of 1 process x all cores:")
    for name, values in results.items():
        print(f"  {name:24} {statistics.fmean(values):.3f}  {statistics.fmean(values) / reference:.2f}")


if __name__ == "__main__":
    main()
