"""Images per second that each data path delivers to the training loop, so the gain is measured.

For every dataset x augmentation x device x path, builds the data exactly as `trainkit train`
does (build_data) and times the loop's side of it: iterate the training loader and call
Data.to_device (copy + preprocess), with no model. Worker start-up is excluded (one warm-up
batch); the clock then runs for --seconds or at least one batch. A dataset whose files are
missing is skipped, and a combination trainkit refuses (e.g. a preset with no batched
equivalent on the device path) is printed as n/a with the reason; the other rows go on.

    python scripts/bench_data.py --data-dir ../shared/data
    python scripts/bench_data.py --datasets digits --augmentations flip_crop,cutout --devices cpu
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

import trainkit.data.build as data_module
from trainkit.data.build import build_data
from trainkit.errors import UserError

# What a combination the script cannot run raises: trainkit's refusals and Hydra's "no such option".
NOT_POSSIBLE = (UserError, HydraException, OmegaConfBaseException)

DATASETS = {
    "digits": ["dataset=digits"],
    "mnist": ["dataset=mnist", "dataset.download=false"],
    "fashion_mnist": ["dataset=fashion_mnist", "dataset.download=false"],
    "cifar10-subset": ["dataset=imagefolder"],  # root filled in from --data-dir
}


def overrides_for(name: str, data_dir: Path, cache_dir: str) -> list[str]:
    if name == "cifar10-subset":
        return DATASETS[name] + [f"dataset.root={data_dir / 'cifar10-subset'}", f"dataset.cache_dir={cache_dir}"]
    if name in DATASETS:
        return DATASETS[name] + ([f"dataset.data_dir={data_dir}"] if name != "digits" else [])
    return [f"dataset={name}", f"dataset.data_dir={data_dir}", "dataset.download=false"]


def memoized_splits():
    """build_data reads the dataset every time; the benchmark reads each one once."""
    cache, original = {}, data_module.build_splits

    def build_splits(cfg, seed):
        key = (cfg.name, str(cfg.get("root")), str(cfg.data_dir))
        if key not in cache:
            cache[key] = original(cfg, seed)
        return cache[key]

    data_module.build_splits = build_splits


def images_per_second(data, device: torch.device, seconds: float) -> float:
    loader = data.train
    epoch = 0
    loader.set_epoch(epoch)
    batches = iter(loader)
    images, labels = next(batches)  # warm-up: worker start-up, first allocations
    data.to_device(images, labels)
    count, start = 0, time.perf_counter()
    while True:
        for images, labels in batches:
            x, _ = data.to_device(images, labels)
            count += len(labels)
            if time.perf_counter() - start > seconds:
                break
        else:
            epoch += 1
            loader.set_epoch(epoch)
            batches = iter(loader)
            continue
        break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="folder with MNIST/, FashionMNIST/ and cifar10-subset/ (default: ../shared/data)")
    parser.add_argument("--datasets", default="digits,mnist,fashion_mnist,cifar10-subset")
    parser.add_argument("--augmentations", default="none,flip_crop")
    parser.add_argument("--paths", default="workers,device")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", default="auto", help="DataLoader workers for the workers path (auto = cores, at most 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument("--cache-dir", default="/tmp/trainkit-bench-cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the main process (default: torch's)")
    args = parser.parse_args()

    memoized_splits()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
          + f"; {torch.get_num_threads()} torch threads, batch {args.batch_size}, {args.seconds:g}s per measurement")
    with initialize_config_module("trainkit.configs", version_base=None):
        for name in args.datasets.split(","):
            base = overrides_for(name, args.data_dir, args.cache_dir)
            try:  # read once here (memoized): a dataset that is not there is skipped as a whole
                data_module.build_splits(compose("train", overrides=base).dataset, 0)
            except NOT_POSSIBLE as e:
                print(f"  skipping {name}: {one_line(e)}", flush=True)
                continue
            for aug in args.augmentations.split(","):
                for dev in args.devices.split(","):
                    device = torch.device(dev)
                    for path in args.paths.split(","):
                        try:
                            cfg = compose("train", overrides=base + [
                                f"augmentation={aug}", f"dataset.loader={path}", f"dataset.workers={args.workers}",
                                f"trainer.batch_size={args.batch_size}"])
                            with contextlib.redirect_stdout(io.StringIO()):
                                data = build_data(cfg, device)
                        except NOT_POSSIBLE as e:
                            rows.append((name, aug, dev, path, None))
                            print(f"  {name:15s} {aug:10s} {dev:5s} {path:8s} n/a ({one_line(e)})", flush=True)
                            continue
                        try:
                            rate = images_per_second(data, device, args.seconds)
                        finally:
                            data.close()
                        rows.append((name, aug, dev, path, rate))
                        print(f"  {name:15s} {aug:10s} {dev:5s} {path:8s} {rate:12,.0f} img/s", flush=True)
                        del data

    print()
    print("| dataset | augmentation | device | workers img/s | device img/s | device / workers |")
    print("|---|---|---|---:|---:|---:|")
    table = {(n, a, d, p): r for n, a, d, p, r in rows}
    for n, a, d in dict.fromkeys((n, a, d) for n, a, d, _, _ in rows):
        w, g = table.get((n, a, d, "workers")), table.get((n, a, d, "device"))
        ratio = f"{g / w:.1f}x" if w and g else "-"
        print(f"| {n} | {a} | {d} | {cell(table, (n, a, d, 'workers'))} | {cell(table, (n, a, d, 'device'))} | {ratio} |")


def one_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def cell(table: dict, key: tuple) -> str:
    """img/s; n/a where trainkit refused the combination, - where it was not asked for."""
    if key not in table:
        return "-"
    return "n/a" if table[key] is None else f"{table[key]:,.0f}"


if __name__ == "__main__":
    main()
