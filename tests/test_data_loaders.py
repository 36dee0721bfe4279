"""The 'workers' path's DataLoader settings, checked on real worker processes: pinned memory on
CUDA only, persistent workers, OpenCV threads off in workers, workers sized to the CPU affinity,
and the same images whatever the number of workers."""

from __future__ import annotations

import os
import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from conftest import compose_config as config
from trainkit.data.build import build_data
from trainkit.data.sources import ArraySource
from trainkit.data.loaders import WorkerLoader, default_workers

CPU = torch.device("cpu")


def stamp_process(image, **_):
    """Writes, into the image, which process ran the pipeline and how many threads OpenCV had there."""
    out = image.copy()
    out.flat[:4] = np.frombuffer(np.uint32(os.getpid()).tobytes(), dtype=np.uint8)
    out.flat[4] = cv2.getNumThreads()
    return out


def read_stamps(images: torch.Tensor) -> list[tuple[int, int]]:
    flat = images.flatten(1).numpy()
    return [(int(np.frombuffer(row[:4].tobytes(), dtype=np.uint32)[0]), int(row[4])) for row in flat]


@pytest.fixture(scope="module")
def two_epochs_on_two_workers():
    """(pid, OpenCV threads) of every image of two epochs through 2 worker processes, the main
    process having set OpenCV to 3 threads (which forked workers would inherit)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    source = ArraySource(np.zeros((32, 4, 4, 1), dtype=np.uint8), np.zeros(32, dtype=np.int64))
    pipeline = A.Compose([A.Lambda(image=stamp_process), A.ToTensorV2()])
    loader = WorkerLoader(source, pipeline, batch_size=4, seed=0, train=True, workers=2, pin_memory=False)
    try:
        epochs = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            epochs.append([stamp for images, _ in loader for stamp in read_stamps(images)])
    finally:
        loader.close()
        cv2.setNumThreads(before)
    return epochs


def test_workers_persist_across_epochs(two_epochs_on_two_workers):
    first, second = ({pid for pid, _ in epoch} for epoch in two_epochs_on_two_workers)
    assert len(first) == 2 and os.getpid() not in first  # two worker processes did the work
    assert second == first  # the same processes again: not restarted for the second epoch


def test_opencv_threads_are_off_inside_workers(two_epochs_on_two_workers):
    threads = {t for epoch in two_epochs_on_two_workers for _, t in epoch}
    assert threads == {1}  # cv2.setNumThreads(0): OpenCV runs on the calling thread only
    assert cv2.getNumThreads() > 1 or os.cpu_count() == 1  # the main process is left alone


def test_pin_memory_only_when_training_on_cuda():
    data = build_data(config("dataset=digits", "dataset.loader=workers", "dataset.workers=0"), CPU)
    assert [loader.loader.pin_memory for loader in (data.train, data.val, data.test)] == [False] * 3
    images, _ = next(iter(data.train))
    assert not images.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_are_pinned_when_training_on_cuda():
    data = build_data(config("dataset=digits", "dataset.loader=workers", "dataset.workers=0"), torch.device("cuda"))
    assert [loader.loader.pin_memory for loader in (data.train, data.val, data.test)] == [True] * 3
    images, _ = next(iter(data.train))
    assert images.is_pinned()  # so the copy to the GPU can overlap compute (non_blocking)


def test_default_workers_is_the_cpu_affinity_at_most_8():
    assert default_workers() == min(len(os.sched_getaffinity(0)), 8)
    data = build_data(config("dataset=digits", "dataset.loader=workers", "dataset.workers=auto"), CPU)
    assert data.train.loader.num_workers == default_workers()
    assert data.train.loader.persistent_workers == (default_workers() > 0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_default_workers_follows_a_narrowed_affinity():
    """A container or `taskset -c 0` leaves one core: one worker, not os.cpu_count() of them."""
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        pytest.skip("one core: a narrowed affinity cannot be told from the machine's count")
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert default_workers() == 1
    finally:
        os.sched_setaffinity(0, cores)


def test_the_number_of_workers_does_not_change_the_images():
    """The `strong` preset draws from albumentations' numpy and Python generators in every transform:
    seeded per sample, 0 and 2 worker processes give the same batches."""
    epochs = []
    for workers in (0, 2):
        data = build_data(config("dataset=digits", "augmentation=strong", "dataset.loader=workers",
                                 f"dataset.workers={workers}", "trainer.batch_size=256"), CPU)
        data.train.set_epoch(1)
        epochs.append([(x.clone(), y.clone()) for x, y in data.train])
        data.close()
    (serial, parallel) = epochs
    assert len(serial) == len(parallel) == 6
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(serial, parallel))
    assert not torch.equal(serial[0][0], torch.from_numpy(data.splits.train.images[:256]).permute(0, 3, 1, 2))
