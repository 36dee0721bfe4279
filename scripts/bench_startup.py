"""Start-up time of the commands a user waits on before anything trains, against `import torch`.

Checking a config should cost less than importing torch: `trainkit train --cfg job`, a bad
override's one-line error and `--help` compose the config without importing torch, torchvision
or albumentations. Each command runs as a fresh process, in alternating rounds (the order
rotates every round), so that a busy machine slows them alike and the ratios stay comparable.
Prints each command's median wall time and its ratio to the median of `python -c "import torch"`,
with the machine's load before and after.

    python scripts/bench_startup.py              # 7 rounds
    python scripts/bench_startup.py --rounds 15
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINKIT = str(Path(sys.executable).parent / "trainkit")

# name: (command, the exit code it must end with)
COMMANDS = {
    "python -c 'import torch'": ([sys.executable, "-c", "import torch"], 0),
    "trainkit train --cfg job": ([TRAINKIT, "train", "--cfg", "job"], 0),
    "trainkit train optimizer=adamm": ([TRAINKIT, "train", "optimizer=adamm"], 2),
    "trainkit train trainer.epoch=3": ([TRAINKIT, "train", "trainer.epoch=3"], 2),
    "trainkit train optimizer.lr=-0.1": ([TRAINKIT, "train", "optimizer.lr=-0.1"], 2),
    "trainkit train --cfg job optimizer=adamm": ([TRAINKIT, "train", "--cfg", "job", "optimizer=adamm"], 2),
    "trainkit train --help": ([TRAINKIT, "train", "--help"], 0),
}
BASELINE = "python -c 'import torch'"


def wall_time(command: list[str], expected: int, cwd: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != expected:
        raise SystemExit(f"{' '.join(command)} ended with exit code {result.returncode}, not {expected}:\n"
                         f"{result.stdout}{result.stderr}")
    return seconds


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (each command once per round)")
    args = parser.parse_args()

    names = list(COMMANDS)
    times: dict[str, list[float]] = {name: [] for name in names}
    load_before = load()
    with tempfile.TemporaryDirectory() as cwd:  # nothing may be written; a stray run folder would show here
        for name in names:  # one unmeasured warm-up each: the file cache, .pyc files
            wall_time(*COMMANDS[name], cwd)
        for r in range(args.rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(wall_time(*COMMANDS[name], cwd))
        left = sorted(p.name for p in Path(cwd).iterdir())
    load_after = load()

    baseline = statistics.median(times[BASELINE])
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average (1/5/15 min) before {load_before}, after {load_after}; {args.rounds} rounds")
    print(f"{'command':<44} {'median s':>9} {'min s':>7} {'max s':>7} {'x import torch':>15}")
    for name in names:
        t = times[name]
        print(f"{name:<44} {statistics.median(t):>9.3f} {min(t):>7.3f} {max(t):>7.3f} "
              f"{statistics.median(t) / baseline:>15.2f}")
    if left:
        print(f"warning: the commands left files behind: {left}")


if __name__ == "__main__":
    main()
