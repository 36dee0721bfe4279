"""Where a training step's time goes: trainkit's loop against the hand-written channels_last loop,
step by step, on the same data, model and optimizer (trainkit builds both from its config).

    python scripts/profile_loop.py trainkit --steps 60 --profile torch      # torch.profiler table
    python scripts/profile_loop.py hand --steps 60 --profile torch

Run each loop in its own fresh process (warm caches favour whichever runs second). It prints the
process CPU time of the first 10 steps and the median of the rest (CPU time, because on a shared
machine wall time per step swings with the other jobs), and with --profile the top operators by
self CPU time (torch.profiler) or the top Python functions (cprofile). Extra trainkit overrides
follow `--` (the default is experiment=fashion_mnist_cnn, batch 128, channels_last).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

CLOCK = time.process_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loop", choices=["trainkit", "hand"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--profile", choices=["none", "torch", "cprofile"], default="none")
    parser.add_argument("--data-dir", default=os.environ.get("TRAINKIT_DATA_DIR", "../shared/data"))
    parser.add_argument("overrides", nargs="*", help="more trainkit overrides (after --)")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_module

    from trainkit.engine.callbacks.base import Callback, CallbackList
    from trainkit.run.training import build_trainer

    overrides = ["experiment=fashion_mnist_cnn", f"dataset.data_dir={os.path.abspath(args.data_dir)}", "dataset.download=false",
                 "trainer.epochs=1", f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=1",
                 "trainer.progress=false", "trainer.channels_last=true", "logger.tensorboard.enabled=false", *args.overrides]
    with initialize_config_module("trainkit.configs", version_base=None):
        cfg = compose("train", overrides=overrides)
    trainer, _ = build_trainer(cfg, Path(tempfile.mkdtemp(prefix="profile_loop.")), None)
    times: list[float] = []

    class StepClock(Callback):
        def on_step_end(self, trainer, loss) -> None:
            times.append(CLOCK())

    def trainkit_loop() -> None:
        trainer.callbacks = CallbackList([*trainer.callbacks, StepClock()])
        times.append(CLOCK())
        trainer.train_one_epoch()

    def hand_loop() -> None:
        """The textbook loop on trainkit's own uint8 data and model: normalise once, channels_last."""
        model, optimizer = trainer.model, trainer.optimizer
        data = trainer.data
        images = data.train_sample(len(data.splits.train))  # preprocessed, in the run's memory format
        labels = torch.from_numpy(data.splits.train.labels).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        batch = int(cfg.trainer.batch_size)
        model.train()
        times.append(CLOCK())
        for i in range(args.steps):
            idx = order[i * batch:(i + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            trainer.schedule.step_batch()
            times.append(CLOCK())

    run = trainkit_loop if args.loop == "trainkit" else hand_loop
    if args.profile == "torch":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    elif args.profile == "cprofile":
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    else:
        run()
    steps = [b - a for a, b in zip(times, times[1:])]
    print(f"{args.loop}: process CPU ms per step, first 10: {' '.join(f'{t * 1000:.0f}' for t in steps[:10])}; "
          f"median of steps 11-{len(steps)}: {statistics.median(steps[10:]) * 1000:.1f} ms "
          f"(torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
