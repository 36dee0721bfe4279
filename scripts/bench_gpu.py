"""GPU benchmark: trainkit's speed knobs on one CUDA device (start it with scripts/bench_gpu.sh).

Prints, on a CIFAR-shaped problem (3 x 32 x 32, 10 classes):
  1. images/s, seconds per 50,000-image epoch and peak GPU memory of one training step (forward, loss,
     backward, fused SGD step) of the cnn and resnet-20, for fp32/bf16 x NCHW/channels_last x eager/compiled
     (the models as trainkit builds them, synthetic batches resident on the GPU, warm-up steps excluded);
  2. one epoch of resnet-20 (bf16, channels_last) through `trainkit train` with the on-device loader and
     with the DataLoader-workers loader, on a synthetic 50,000-image CIFAR-shaped image folder;
  3. experiment=cifar10_speedrun's seconds to finish (10 epochs) on that folder, from its metrics.json.

    bash scripts/bench_gpu.sh                  # the whole thing, < 8 minutes on a recent GPU
    python scripts/bench_gpu.py --cpu          # a dry run on the CPU with tiny sizes, no compile: checks the script only

Without CUDA (and without --cpu) it prints one line and exits 2. Synthetic images train nothing useful: the
accuracies printed are not figures, only the times are.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="trainkit.configs", version_base=None):
        return hydra_compose(config_name="train", overrides=list(overrides))


def step_grid(device, batch: int, steps: int, warmup: int, compile_too: bool, images_per_epoch: int) -> list[dict]:
    """Timed training steps of each model x precision x layout x compile combination."""
    import torch
    import torch.nn.functional as F

    from trainkit.components.assembly import build_model

    spec = argparse.Namespace(in_channels=3, image_size=32, num_classes=10)
    rows = []
    for model_name, precision, channels_last, compiled in itertools.product(
            ("cnn", "resnet"), ("32", "bf16"), (False, True), (False, True) if compile_too else (False,)):
        cfg = compose(f"model={model_name}", "dataset=cifar10")
        torch.manual_seed(0)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(cfg, spec, 0.0).to(device, memory_format=layout)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=True)
        if compiled:
            model.compile()
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=layout)
        y = torch.randint(0, 10, (batch,), device=device)
        dtype = torch.bfloat16 if precision == "bf16" else None

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(warmup):  # compiling happens here
            step()
        synchronize(device)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        row = {"model": "resnet-20" if model_name == "resnet" else "cnn", "precision": "bf16" if dtype else "fp32",
               "layout": "channels_last" if channels_last else "NCHW", "compile": compiled,
               "images_per_s": batch / seconds, "s_per_epoch": images_per_epoch * seconds / batch,
               "peak_mib": peak, "warmup_s": first}
        rows.append(row)
        print(f"{row['model']:10}{row['precision']:>6}{row['layout']:>15}{'compiled' if compiled else 'eager':>10}"
              f"{row['images_per_s']:>12.0f}{row['s_per_epoch']:>10.2f}{peak:>10.0f}{first:>10.1f}", flush=True)
        del model, optimizer
    return rows


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_cifar_folder(root: Path, train: int, test: int) -> Path:
    """A CIFAR-shaped image folder (train/<class>/*.png, test/<class>/*.png) of random images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i}.png", compress_level=0)
    return root


def trainkit_run(args: list[str], cwd: Path, timeout: float) -> dict:
    """One `trainkit train` in a subprocess; its metrics.json and the command's wall time."""
    trainkit = Path(sys.executable).parent / "trainkit"
    start = time.perf_counter()
    result = subprocess.run([str(trainkit), "train", *args, "trainer.progress=false", "hydra.run.dir=run"], cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if result.returncode:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    record = json.loads((cwd / "run" / "metrics.json").read_text())
    return {**record, "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU with tiny sizes (checks the script only)")
    parser.add_argument("--batch", type=int, default=512, help="training batch of the step grid")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per combination")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled half of the grid")
    parser.add_argument("--images", type=int, default=50_000, help="training images of the synthetic CIFAR set")
    parser.add_argument("--skip-runs", action="store_true", help="only the step grid (no trainkit runs)")
    args = parser.parse_args()

    import torch

    if args.cpu:
        device = torch.device("cpu")
        args.batch, args.steps, args.images, warmup, test_images = 16, 2, 200, 1, 100
        args.no_compile = True  # inductor's C++ build takes minutes on a CPU: the dry run leaves it out
    elif not torch.cuda.is_available():
        print("error: no CUDA device here (torch.cuda.is_available() is False): run this on a GPU machine, "
              "or pass --cpu for a dry run of the script", file=sys.stderr)
        return 2
    else:
        device, warmup, test_images = torch.device("cuda"), 10, 10_000
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run: no figures)"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}, {args.steps} timed steps after {warmup} warm-up")
    print(f"{'model':10}{'prec':>6}{'layout':>15}{'':>10}{'images/s':>12}{'s/epoch':>10}{'peak MiB':>10}{'warmup s':>10}")
    step_grid(device, args.batch, args.steps, warmup, compile_too=not args.no_compile, images_per_epoch=args.images)
    if args.skip_runs:
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        root = synthetic_cifar_folder(tmp / "cifar", args.images, test_images)
        print(f"\nsynthetic CIFAR-shaped set: {args.images} + {test_images} images written in {time.perf_counter() - start:.0f} s")
        data = [f"dataset=imagefolder", f"dataset.root={root}", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.29,0.29,0.29]",
                f"trainer.device={device.type}"]
        tiny = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"] if args.cpu else []
        print(f"{'loader (resnet-20, bf16, channels_last, 1 epoch)':52}{'s/epoch':>10}{'images/s':>10}")
        for loader in ("device", "workers"):
            out = tmp / f"loader_{loader}"
            out.mkdir()
            r = trainkit_run(["model=resnet", *data, f"dataset.loader={loader}", "trainer.epochs=1", "trainer.batch_size=512",
                              "trainer.precision=bf16", "trainer.channels_last=true", "augmentation=flip_crop", *tiny],
                             out, timeout=600)
            if "error" in r:
                print(f"{loader:52}error: {r['error']}")
                continue
            seconds = r["epoch_seconds"][0]
            print(f"{loader:52}{seconds:>10.2f}{args.images * 0.9 / seconds:>10.0f}", flush=True)
        out = tmp / "speedrun"
        out.mkdir()
        speed_tiny = [*tiny, "trainer.epochs=2", "schedule.warmup_epochs=0.5"] if args.cpu else []
        r = trainkit_run(["experiment=cifar10_speedrun", *data, *speed_tiny], out, timeout=900)
        if "error" in r:
            print(f"speedrun: error: {r['error']}")
        else:
            print(f"\nexperiment=cifar10_speedrun on {args.images} synthetic images: {sum(r['epoch_seconds']):.1f} s of "
                  f"training + validation over {len(r['epoch_seconds'])} epochs (first {r['epoch_seconds'][0]:.1f} s), "
                  f"{r['wall_s']:.1f} s for the whole command (start-up, data load and test included)")
    if device.type == "cuda":
        print(f"peak GPU memory of this process: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
