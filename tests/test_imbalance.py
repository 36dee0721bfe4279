"""Class imbalance on a deliberately imbalanced subset of digits: inverse-frequency loss
weights N / (C * count_c) and a balanced (oversampling) sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from conftest import compose_config
from trainkit.data.augmentation import build_pipeline
from trainkit.data.build import build_data
from trainkit.data.datasets import load_digits_arrays
from trainkit.data.sources import ArraySource
from trainkit.data.device_loader import DeviceLoader
from trainkit.data.loaders import EpochSampler, WorkerLoader, class_weights

C = 10
COUNTS = np.array([160, 120, 80, 60, 40, 30, 20, 15, 10, 5])  # 32:1 between the commonest and the rarest class
N = int(COUNTS.sum())


@pytest.fixture(scope="module")
def imbalanced() -> ArraySource:
    images, labels = load_digits_arrays()
    keep = np.concatenate([np.flatnonzero(labels == c)[:k] for c, k in enumerate(COUNTS)])
    rng = np.random.default_rng(0)
    keep = rng.permutation(keep)
    source = ArraySource(images[keep], labels[keep])
    assert np.array_equal(np.bincount(source.labels, minlength=C), COUNTS)
    return source


def test_class_weights_are_n_over_c_times_count(imbalanced):
    weights = class_weights(imbalanced.labels, C)
    expected = torch.tensor(N / (C * COUNTS), dtype=torch.float32)
    torch.testing.assert_close(weights, expected)
    assert weights[9].item() == pytest.approx(N / (C * 5))  # 10.8: the rarest class
    assert weights[0].item() == pytest.approx(N / (C * 160))  # 0.3375: the commonest
    # every class then carries the same total weight, N / C
    per_class = np.bincount(imbalanced.labels, weights=weights[imbalanced.labels].numpy(), minlength=C)
    np.testing.assert_allclose(per_class, N / C, rtol=1e-5)
    # a balanced dataset gets all ones
    torch.testing.assert_close(class_weights(np.repeat(np.arange(C), 7), C), torch.ones(C))


def test_weighted_loss_stops_pulling_towards_the_majority(imbalanced):
    """At uniform predictions the gradient on the logits' bias is (1/C - class share): zero
    for every class once the loss is weighted, towards the common classes without weights."""
    labels = torch.from_numpy(imbalanced.labels)
    weights = class_weights(imbalanced.labels, C)
    bias = torch.zeros(C, requires_grad=True)
    logits = bias.expand(N, C)
    (grad_weighted,) = torch.autograd.grad(F.cross_entropy(logits, labels, weight=weights), bias)
    (grad_plain,) = torch.autograd.grad(F.cross_entropy(logits, labels), bias)
    torch.testing.assert_close(grad_weighted, torch.zeros(C), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_plain, torch.tensor(1 / C - COUNTS / N, dtype=torch.float32))


def drawn_counts(sampler: EpochSampler, labels: np.ndarray, epochs: int) -> np.ndarray:
    counts = np.zeros(C, dtype=np.int64)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        indices = [i for i, _seed in sampler]
        assert len(indices) == len(labels)  # an epoch is still N draws
        counts += np.bincount(labels[indices], minlength=C)
    return counts


def test_balanced_sampler_draws_classes_about_equally(imbalanced):
    labels = imbalanced.labels
    weights = class_weights(labels, C)[torch.from_numpy(labels)]
    counts = drawn_counts(EpochSampler(N, seed=0, weights=weights), labels, epochs=20)
    expected = 20 * N / C  # 1,070 per class
    assert chisquare(counts).pvalue > 1e-3, counts
    assert np.abs(counts / expected - 1).max() < 0.12, counts  # > 3.5 binomial sd
    # without weights an epoch is a permutation: the imbalance stays
    plain = drawn_counts(EpochSampler(N, seed=0), labels, epochs=2)
    np.testing.assert_array_equal(plain, 2 * COUNTS)


def test_balanced_sampler_oversamples_the_rare_class_with_replacement(imbalanced):
    labels = imbalanced.labels
    weights = class_weights(labels, C)[torch.from_numpy(labels)]
    sampler = EpochSampler(N, seed=1, weights=weights)
    indices = np.array([i for i, _ in sampler])
    rare = indices[labels[indices] == 9]
    assert len(rare) > 5 * 5  # ~54 draws of the 5 images of class 9
    assert set(rare) == set(np.flatnonzero(labels == 9))  # all of them, each many times
    common = indices[labels[indices] == 0]
    assert len(set(common)) < 160  # while some images of class 0 are left out this epoch
    # the same seed and epoch give the same draws (resume replays them)
    again = EpochSampler(N, seed=1, weights=weights)
    assert [i for i, _ in again] == indices.tolist()


@pytest.mark.parametrize("kind", ["workers", "device"])
def test_balanced_loader_batches_are_balanced(imbalanced, kind):
    labels = imbalanced.labels
    weights = class_weights(labels, C)[torch.from_numpy(labels)]
    if kind == "workers":
        loader = WorkerLoader(imbalanced, build_pipeline([], "augmentation.train"), batch_size=64, seed=0, train=True,
                              workers=0, pin_memory=False, weights=weights)
    else:
        loader = DeviceLoader(imbalanced, [], batch_size=64, seed=0, train=True, device=torch.device("cpu"), weights=weights)
    counts = np.zeros(C, dtype=np.int64)
    for epoch in range(4):
        loader.set_epoch(epoch)
        for images, batch_labels in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (1, 8, 8)
            counts += np.bincount(batch_labels.numpy(), minlength=C)
    assert counts.sum() == 4 * N
    assert chisquare(counts).pvalue > 1e-3, counts


@pytest.mark.parametrize("loader", ["workers", "device"])
def test_dataset_config_wires_loss_weights_and_the_sampler(loader):
    overrides = ["dataset.class_weights=auto", "dataset.balanced_sampler=true", "dataset.workers=0", f"dataset.loader={loader}"]
    cfg = compose_config(*overrides)
    data = build_data(cfg, torch.device("cpu"))
    assert data.loader_kind == loader
    train_labels = data.splits.train.labels
    counts = np.bincount(train_labels, minlength=C)
    torch.testing.assert_close(data.loss_weights, torch.tensor(len(train_labels) / (C * counts), dtype=torch.float32))
    torch.testing.assert_close(data.train.sampler.weights, data.loss_weights[torch.from_numpy(train_labels)])
    plain = compose_config("dataset.workers=0")
    plain_data = build_data(plain, torch.device("cpu"))
    assert plain_data.loss_weights is None and plain_data.train.sampler.weights is None
