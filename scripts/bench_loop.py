"""trainkit against minimal hand-written PyTorch loops: seconds per epoch and test accuracy.

All train the same small CNN (trainkit's `cnn`: two stages of two conv-BN-ReLU blocks, max-pool,
global average pool, linear) with Adam (lr 1e-3), a per-step cosine schedule and batch size 128 on
Fashion-MNIST without augmentation, holding 10% of the training set out for validation:

    trainkit      `trainkit train experiment=fashion_mnist_cnn trainer.channels_last=true` (its own timers:
                  metrics.json epoch_seconds)
    hand-nchw     the textbook loop on float NCHW tensors
    hand-cl       the same loop with model and batches in channels_last (NHWC), the fast layout on CPU

    python scripts/bench_loop.py --data-dir ../shared/data --epochs 2 --repeats 3

Every run is a fresh process (`python scripts/bench_loop.py --run NAME`), so no loop inherits another's
warm caches, and the order alternates (A B C, C B A, ...) so a slow spell of a shared machine does not
land on one side only. Each epoch is timed train + validation, as trainkit's epoch_seconds are, and
split into its steps, its validation and the rest (trainkit's epoch_phase_seconds); the machine's load
average is printed before each run. The ratios at the end are trainkit's mean seconds per epoch over
each hand-written loop's, per repeat and overall, then of the steps and of validation alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPS = ("trainkit", "hand-nchw", "hand-cl")
PHASES = ("train", "val", "rest")  # an epoch's seconds: the steps, validation, the rest (trainkit's metrics.json epoch_phase_seconds)


def hand_written(data_dir: str, epochs: int, batch_size: int, seed: int, channels_last: bool) -> dict:
    """The textbook loop, nothing else: tensors in memory, shuffle, forward, loss, backward, step."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn

    torch.manual_seed(seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    train = torchvision.datasets.FashionMNIST(data_dir, train=True, download=False)
    test = torchvision.datasets.FashionMNIST(data_dir, train=False, download=False)

    def prepare(images):
        return images.float().div(255).sub(0.2860).div(0.3530).unsqueeze(1).contiguous(memory_format=layout)

    x, y = prepare(train.data), train.targets
    x_test = prepare(test.data)
    perm = torch.randperm(len(y))
    val_idx, train_idx = perm[: len(y) // 10], perm[len(y) // 10:]

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    model = nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * ((len(train_idx) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    def accuracy(images, labels):
        model.eval()
        with torch.no_grad():
            return sum((model(images[i:i + 512]).argmax(1) == labels[i:i + 512]).sum().item()
                       for i in range(0, len(labels), 512)) / len(labels)

    epoch_seconds, phases = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = train_idx[torch.randperm(len(train_idx))]
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        trained = time.perf_counter()
        val_acc = accuracy(x[val_idx], y[val_idx])
        epoch_seconds.append(time.perf_counter() - start)
        phases.append({"train": trained - start, "val": time.perf_counter() - trained, "rest": 0.0})
    return {"epoch_seconds": epoch_seconds, "phases": phases, "val_acc": val_acc,
            "test_acc": accuracy(x_test, test.targets)}


def with_trainkit(data_dir: str, epochs: int, batch_size: int, seed: int, overrides: list[str]) -> dict:
    """trainkit's own run; its epoch_seconds time train + validation, like the loops above."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "trainkit", "train", "experiment=fashion_mnist_cnn", f"trainer.epochs={epochs}",
               f"trainer.batch_size={batch_size}", f"trainer.seed={seed}", f"dataset.data_dir={os.path.abspath(data_dir)}",
               "dataset.download=false", "trainer.progress=false", "trainer.channels_last=true", "hydra.run.dir=run",
               *overrides]
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if result.returncode:
            sys.exit(result.stdout + result.stderr)
        record = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {"epoch_seconds": record["epoch_seconds"], "phases": record["epoch_phase_seconds"],
            "test_acc": record["test"]["test/acc"], "val_acc": record["final"]["val/acc"]}


def run_in_fresh_process(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--run", name, "--data-dir", args.data_dir, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--seed", str(args.seed), *(["--"] + args.overrides if args.overrides else [])]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        sys.exit(f"{name} failed:\n{result.stdout}{result.stderr}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out.update(process_wall_s=time.perf_counter() - start, load=load,
               process_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TRAINKIT_DATA_DIR", "../shared/data"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop, alternating the order")
    parser.add_argument("--loops", default=",".join(LOOPS), help=f"comma-separated, from {', '.join(LOOPS)}")
    parser.add_argument("--run", choices=LOOPS, help=argparse.SUPPRESS)  # one run, in this (fresh) process
    parser.add_argument("overrides", nargs="*", help="more trainkit overrides (after --)")
    args = parser.parse_args()
    if args.run:
        if args.run == "trainkit":
            result = with_trainkit(args.data_dir, args.epochs, args.batch_size, args.seed, args.overrides)
        else:
            result = hand_written(args.data_dir, args.epochs, args.batch_size, args.seed, args.run == "hand-cl")
        print(json.dumps(result))
        return
    import torch

    loops = [name.strip() for name in args.loops.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, device cpu; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'loop':11}{'load':>6}{'s/epoch':>9}   {'per epoch':<16}{'train+val+rest s':<20}{'process wall s':>15}{'cpu s':>8}"
          f"{'val acc':>9}{'test acc':>9}")
    results: dict[str, list[dict]] = {name: [] for name in loops}
    for repeat in range(args.repeats):
        for name in loops if repeat % 2 == 0 else loops[::-1]:
            r = run_in_fresh_process(name, args)
            results[name].append(r)
            per = " ".join(f"{s:.1f}" for s in r["epoch_seconds"])
            split = "+".join(f"{statistics.mean(p[k] for p in r['phases']):.2f}" for k in PHASES)
            print(f"{name:11}{r['load']:>6.1f}{statistics.mean(r['epoch_seconds']):>9.2f}   {per:<16}{split:<20}"
                  f"{r['process_wall_s']:>15.1f}{r['process_cpu_s']:>8.1f}{r['val_acc']:>9.4f}{r['test_acc']:>9.4f}", flush=True)
    mean = {name: statistics.mean(statistics.mean(r["epoch_seconds"]) for r in rs) for name, rs in results.items()}
    print("mean s/epoch: " + ", ".join(f"{name} {m:.2f}" for name, m in mean.items()))
    if "trainkit" in results:
        for other in (n for n in loops if n != "trainkit"):
            per_repeat = [statistics.mean(t["epoch_seconds"]) / statistics.mean(o["epoch_seconds"])
                          for t, o in zip(results["trainkit"], results[other])]
            print(f"trainkit / {other} s/epoch: {mean['trainkit'] / mean[other]:.3f} "
                  f"(per repeat: {', '.join(f'{r:.3f}' for r in per_repeat)}; median {statistics.median(per_repeat):.3f})")
            for phase in PHASES[:2]:
                ours, theirs = (statistics.mean(p[phase] for r in results[n] for p in r["phases"]) for n in ("trainkit", other))
                print(f"  {phase} s/epoch: trainkit {ours:.2f}, {other} {theirs:.2f}: {ours / theirs:.3f}")
            rest = statistics.mean(p["rest"] for r in results["trainkit"] for p in r["phases"])
            print(f"  rest (trainkit's callbacks at the epoch's end: checkpoints, logs, monitors): {rest:.3f} s/epoch")


if __name__ == "__main__":
    main()
