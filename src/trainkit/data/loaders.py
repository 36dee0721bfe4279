"""The 'workers' data path: DataLoader worker processes running albumentations per image."""

from __future__ import annotations

import os
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainkit.data.augmentation import seed_pipeline
from trainkit.data.sources import ArraySource


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class EpochSampler(Sampler):
    """A seeded permutation per epoch, each index paired with its own augmentation seed.

    Because every sample carries its seed, augmentation does not depend on the number of
    workers, and a run resumed mid-epoch replays the same draws (see `skip`).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, weights: torch.Tensor | None = None):
        self.n, self.seed, self.shuffle, self.weights = n, seed, shuffle, weights
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def skip(self, samples: int) -> None:
        """Start the current epoch after its first `samples` samples (resume mid-epoch)."""
        self.start = samples

    def order(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = epoch_generator(self.seed, self.epoch)
        if self.weights is not None:
            indices = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            indices = torch.randperm(self.n, generator=g)
        else:
            indices = torch.arange(self.n)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        return indices, seeds

    def __iter__(self):
        indices, seeds = self.order()
        return iter(zip(indices[self.start:].tolist(), seeds[self.start:].tolist()))

    def __len__(self) -> int:
        return self.n - self.start


class GlobalBatches:
    """This process's share of each global batch of `sampler`'s epoch order (trainer.devices / torchrun).

    Rank r of N takes positions r, r+N, r+2N, ... of each global batch of `batch_size`: the interleave
    of torch's DistributedSampler, but over trainkit's own seeded order, whose (index, seed) pairs keep
    each image's augmentation what it is in one process, without the duplicates DistributedSampler pads
    an epoch with (validation counts every image once), and with resume mid-epoch (`start`). One
    process (N = 1) takes whole batches. A last training batch smaller than N is dropped: a rank with
    no image would have nothing to backpropagate.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int, train: bool, rank: int = 0, world: int = 1):
        self.sampler, self.batch_size, self.train, self.rank, self.world = sampler, batch_size, train, rank, world
        self.start = 0  # the first batch of the epoch to yield (resume mid-epoch)

    def __len__(self) -> int:
        """Global batches per epoch: the same count on every rank."""
        full, left = divmod(self.sampler.n, self.batch_size)
        return full + (left >= (self.world if self.train else 1))

    def positions(self, b: int) -> range:
        """Where this rank's share of global batch `b` sits in the epoch order."""
        start = b * self.batch_size
        return range(start + self.rank, min(start + self.batch_size, self.sampler.n), self.world)

    def total(self, b: int) -> int:
        """Images in global batch `b`, over all ranks."""
        return min(self.batch_size, self.sampler.n - b * self.batch_size)

    def __iter__(self):
        indices, seeds = self.sampler.order()
        for b in range(self.start, len(self)):
            share = self.positions(b)
            if len(share):  # an evaluation batch can leave a rank without images: it skips that batch
                yield list(zip(indices[share].tolist(), seeds[share].tolist()))


class AugmentedDataset(Dataset):
    """Applies the albumentations pipeline to one image, seeded by the sampler."""

    def __init__(self, source: ArraySource, pipeline):
        self.source, self.pipeline = source, pipeline

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, 0)
        image, label = self.source[index]
        seed_pipeline(self.pipeline, seed)
        return self.pipeline(image=image)["image"], label


def _quiet_worker(worker_id: int) -> None:
    # OpenCV's own thread pool inside each worker only fights the other workers for cores.
    import cv2

    cv2.setNumThreads(0)
    # torchrun signals each rank's whole process group: a worker killed by that SIGTERM would crash the
    # rank ("DataLoader worker ... is killed") before it saves last.pt. The rank stops its workers itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, which containers and taskset narrow), at most 8."""
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)


class WorkerLoader:
    """Batches of uint8 NCHW images and labels from DataLoader workers."""

    def __init__(self, source: ArraySource, pipeline, batch_size: int, seed: int, train: bool,
                 workers: int, pin_memory: bool, weights: torch.Tensor | None = None, persistent: bool = True,
                 rank: int = 0, world: int = 1):
        self.sampler = EpochSampler(len(source), seed, shuffle=train, weights=weights)
        self.batch_size = batch_size
        self.batches = GlobalBatches(self.sampler, batch_size, train, rank, world)
        self.loader = DataLoader(
            AugmentedDataset(source, pipeline), batch_sampler=self.batches,
            num_workers=workers, persistent_workers=workers > 0 and persistent, pin_memory=pin_memory,
            worker_init_fn=_quiet_worker if workers > 0 else None,
            # Its own generator: starting an epoch's iterator draws the workers' base seed from
            # it, not from the global torch RNG, so a resumed run's global stream stays exact.
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.batches.start = 0

    def skip_batches(self, batches: int) -> None:
        self.batches.start = batches

    def __iter__(self):
        return iter(self.loader)

    def close(self) -> None:
        """Stop persistent workers now rather than whenever the garbage collector gets to them."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def __len__(self) -> int:
        """Batches in a whole epoch (also after skip_batches)."""
        return len(self.batches)

    def batch_total(self, b: int) -> int:
        return self.batches.total(b)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, N / (C * count_c): a balanced dataset gets all ones."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)
