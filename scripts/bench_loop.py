"""trainkit against a minimal hand-written PyTorch loop: seconds per epoch and test accuracy.

Both train the same small CNN (trainkit's `cnn`: two stages of two conv-BN-ReLU blocks,
max-pool, global average pool, linear) with Adam (lr 1e-3), a per-step cosine schedule and
batch size 128 on Fashion-MNIST, holding 10% of the training set out for validation.

    python scripts/bench_loop.py --data-dir ../shared/data --epochs 3 --repeats 2

Runs alternate (trainkit, hand-written, hand-written, trainkit, ...) so that a slow spell of
a shared machine does not land on one side only; the ratio is reported per pair and overall.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def hand_written(data_dir: str, epochs: int, batch_size: int, seed: int) -> dict:
    """The textbook loop, nothing else: tensors in memory, shuffle, forward, loss, backward, step."""
    import torchvision

    torch.manual_seed(seed)
    train = torchvision.datasets.FashionMNIST(data_dir, train=True, download=False)
    test = torchvision.datasets.FashionMNIST(data_dir, train=False, download=False)
    x = train.data.float().div(255).sub(0.2860).div(0.3530).unsqueeze(1)
    y = train.targets
    perm = torch.randperm(len(y))
    val_idx, train_idx = perm[: len(y) // 10], perm[len(y) // 10:]
    x_test = test.data.float().div(255).sub(0.2860).div(0.3530).unsqueeze(1)

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    model = nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * ((len(train_idx) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    epoch_seconds = []
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
        model.eval()
        with torch.no_grad():
            val_acc = sum((model(x[val_idx[i:i + 512]]).argmax(1) == y[val_idx[i:i + 512]]).sum().item()
                          for i in range(0, len(val_idx), 512)) / len(val_idx)
        epoch_seconds.append(time.perf_counter() - start)
    with torch.no_grad():
        test_acc = sum((model(x_test[i:i + 512]).argmax(1) == test.targets[i:i + 512]).sum().item()
                       for i in range(0, len(x_test), 512)) / len(x_test)
    return {"epoch_seconds": epoch_seconds, "test_acc": test_acc, "val_acc": val_acc}


def with_trainkit(data_dir: str, epochs: int, batch_size: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "trainkit", "train", "experiment=fashion_mnist_cnn", f"trainer.epochs={epochs}",
               f"trainer.batch_size={batch_size}", f"trainer.seed={seed}", f"dataset.data_dir={os.path.abspath(data_dir)}",
               "dataset.download=false", "hydra.run.dir=run"]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode:
            sys.exit(result.stdout + result.stderr)
        record = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {"epoch_seconds": record["epoch_seconds"], "test_acc": record["test"]["test/acc"], "wall_s": wall,
            "val_acc": record["final"]["val/acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("TRAINKIT_DATA_DIR", "../shared/data"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, device cpu")
    print(f"{'':14}{'s/epoch (mean)':>16}{'per epoch':>28}{'val acc':>10}{'test acc':>10}")
    ratios, results = [], {"trainkit": [], "hand-written": []}
    for repeat in range(args.repeats):
        order = ("trainkit", "hand-written") if repeat % 2 == 0 else ("hand-written", "trainkit")
        pair = {}
        for name in order:
            run = with_trainkit if name == "trainkit" else hand_written
            r = pair[name] = run(args.data_dir, args.epochs, args.batch_size, args.seed)
            results[name].append(r)
            per = " ".join(f"{s:.1f}" for s in r["epoch_seconds"])
            print(f"{name:14}{np.mean(r['epoch_seconds']):>16.2f}{per:>28}{r['val_acc']:>10.4f}{r['test_acc']:>10.4f}", flush=True)
        ratios.append(np.mean(pair["trainkit"]["epoch_seconds"]) / np.mean(pair["hand-written"]["epoch_seconds"]))
    mean = {name: np.mean([np.mean(r["epoch_seconds"]) for r in rs]) for name, rs in results.items()}
    print(f"mean s/epoch: trainkit {mean['trainkit']:.2f}, hand-written {mean['hand-written']:.2f}")
    print(f"trainkit / hand-written seconds per epoch: {mean['trainkit'] / mean['hand-written']:.2f} "
          f"(per pair: {', '.join(f'{r:.2f}' for r in ratios)}); trainkit process wall time "
          f"{np.mean([r['wall_s'] for r in results['trainkit']]):.1f}s")


if __name__ == "__main__":
    main()
