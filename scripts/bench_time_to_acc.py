"""Time to accuracy: run `trainkit train experiment=fashion_mnist_fast` once per seed, timing the
whole command (start-up, data load, training, test), and print each seed's wall time, CPU time
(the command's own, children included), test accuracy and the machine's load, then the mean.

    python scripts/bench_time_to_acc.py                       # seeds 0 1 2
    python scripts/bench_time_to_acc.py --seeds 0 --target 0.93 -- trainer.threads=2

It runs the `trainkit` installed beside this Python (or `--trainkit "python -m trainkit"`); extra
arguments after `--` go to every run. The exit code is 0 when the mean accuracy reaches --target and
every run took at most --budget seconds. Wall time on a shared machine depends on what else runs:
the load average before and after each run is printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="fashion_mnist_fast")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.93, help="test accuracy the mean must reach")
    ap.add_argument("--budget", type=float, default=300.0, help="wall seconds each run may take")
    beside = Path(sys.executable).parent / "trainkit"
    ap.add_argument("--trainkit", default=str(beside) if beside.is_file() else "trainkit",
                    help="how to start trainkit (a command line)")
    ap.add_argument("--data-dir", default=os.environ.get("TRAINKIT_DATA_DIR"), help="dataset.data_dir for every run")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="more overrides for every run (after --)")
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="time_to_acc_"))
    rows = []
    for seed in a.seeds:
        run_dir = out / f"seed{seed}"
        cmd = [*shlex.split(a.trainkit), "train", f"experiment={a.experiment}", f"trainer.seed={seed}",
               f"hydra.run.dir={run_dir}", "trainer.progress=false",
               *([f"dataset.data_dir={os.path.abspath(a.data_dir)}", "dataset.download=false"] if a.data_dir else []),
               *a.overrides]
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            print(f"seed {seed}: trainkit exited {proc.returncode}\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        record = json.loads((run_dir / "metrics.json").read_text())
        acc = record["test"]["test/acc"]
        rows.append({"seed": seed, "wall_s": wall, "cpu_s": cpu, "test_acc": acc, "load_before": load,
                     "load_after": os.getloadavg()[0], "epoch_seconds": record.get("epoch_seconds")})
        print(f"seed {seed}: wall {wall:6.1f} s  cpu {cpu:6.1f} s  test/acc {acc:.4f}  "
              f"load {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    mean_acc = statistics.mean(r["test_acc"] for r in rows)
    mean_wall = statistics.mean(r["wall_s"] for r in rows)
    sd = statistics.stdev(r["test_acc"] for r in rows) if len(rows) > 1 else 0.0
    ok = mean_acc >= a.target and max(r["wall_s"] for r in rows) <= a.budget
    print(f"mean over {len(rows)} seed(s): test/acc {mean_acc:.4f} +- {sd:.4f}, wall {mean_wall:.1f} s "
          f"(max {max(r['wall_s'] for r in rows):.1f}), cpu {statistics.mean(r['cpu_s'] for r in rows):.1f} s: "
          f"{'meets' if ok else 'misses'} >= {a.target} in <= {a.budget:.0f} s")
    (out / "time_to_acc.json").write_text(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
