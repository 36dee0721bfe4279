"""dataset.preprocess: standardize, center, none and ZCA whitening, on real training images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, require_shared, compose_config as config
from trainkit.data.build import build_data
from trainkit.data.datasets import build_splits
from trainkit.errors import UserError
from trainkit.data.preprocess import Preprocess, fit_zca


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    return flat.mean(1), flat.std(1)


@pytest.fixture(scope="module")
def mnist_train():
    require_shared("MNIST")
    cfg = config("dataset=mnist", f"dataset.data_dir={SHARED_DATA}", "dataset.download=false")
    return build_splits(cfg.dataset, 0)


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory):
    """The CIFAR-10 subset at 8x8: 192 values per image from 4,576 images, a full-rank covariance."""
    root = require_shared("cifar10-subset")
    cfg = config("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8",
                 f"dataset.cache_dir={tmp_path_factory.mktemp('cache')}")
    return build_splits(cfg.dataset, 0)


def test_standardize_gives_zero_mean_unit_std_on_mnist(mnist_train):
    spec = mnist_train.spec
    x = Preprocess("standardize", spec.mean, spec.std)(as_batch(mnist_train.train.images))
    mean, std = channel_moments(x)
    assert mean.abs().max() < 0.01 and (std - 1).abs().max() < 0.01


def test_standardize_per_channel_on_rgb_with_computed_stats(cifar_small):
    spec = cifar_small.spec
    x = Preprocess("standardize", spec.mean, spec.std)(as_batch(cifar_small.train.images))
    mean, std = channel_moments(x)
    assert mean.shape == (3,)
    assert mean.abs().max() < 1e-3 and (std - 1).abs().max() < 1e-3  # stats computed from exactly these images


def test_center_and_none():
    splits = build_splits(config("dataset=digits").dataset, 0)
    images = as_batch(splits.train.images)
    centered = Preprocess("center", splits.spec.mean, splits.spec.std)(images)
    plain = Preprocess("none", splits.spec.mean, splits.spec.std)(images)
    assert abs(centered.mean().item()) < 0.01
    assert torch.allclose(centered.std(), plain.std())  # only shifted
    assert plain.min() >= 0 and plain.max() <= 1


def test_zca_makes_the_training_covariance_the_identity(cifar_small):
    images = cifar_small.train.images
    zca = Preprocess("zca", [0.0] * 3, [1.0] * 3, train_images=images, zca_epsilon=1e-7)  # below the smallest eigenvalue, 9e-6
    x = zca(as_batch(images)).reshape(len(images), -1).double()
    assert x.mean(0).abs().max() < 1e-3
    cov = torch.cov(x.T, correction=0)
    assert (cov - torch.eye(cov.shape[0], dtype=cov.dtype)).abs().max() < 0.01
    # ZCA, not just any whitening: the symmetric matrix keeps images looking like images.
    assert torch.allclose(zca.whitening, zca.whitening.T, atol=1e-4)


def test_zca_epsilon_caps_low_variance_directions():
    splits = build_splits(config("dataset=digits").dataset, 0)
    images = splits.train.images  # some border pixels never vary: a rank-deficient covariance
    zca = Preprocess("zca", [0.0], [1.0], train_images=images, zca_epsilon=1e-2)
    x = zca(as_batch(images)).reshape(len(images), -1).double()
    eigenvalues = torch.linalg.eigvalsh(torch.cov(x.T, correction=0))
    assert eigenvalues.max() < 1.0 + 1e-3  # S / (S + eps) <= 1
    assert eigenvalues[-10:].min() > 0.9  # the strong directions are whitened
    assert torch.linalg.eigvalsh(zca.whitening.double()).max() <= 1 / np.sqrt(1e-2) + 1e-3


def test_zca_through_build_data_runs_on_both_paths():
    for loader in ("device", "workers"):
        data = build_data(config("dataset=digits", "dataset.preprocess=zca", f"dataset.loader={loader}",
                                 "augmentation=flip_crop", "dataset.workers=0"), torch.device("cpu"))
        images, labels = next(iter(data.train))
        x, _ = data.to_device(images, labels)
        assert x.shape == images.shape and torch.isfinite(x).all()


def test_zca_refuses_huge_images():
    with pytest.raises(UserError, match="standardize or a smaller dataset.image_size"):
        fit_zca(np.zeros((4, 96, 96, 3), dtype=np.uint8), 1e-2)


def test_unknown_preprocess_is_refused():
    with pytest.raises(UserError, match="dataset.preprocess='whiten'"):
        Preprocess("whiten", [0.5], [0.5])
