"""Everything the loop needs from the data side: loaders, the on-device preprocessing, the spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainkit.augmentation import build_pipeline
from trainkit.datasets import DataSpec, Splits, build_splits
from trainkit.errors import allowed
from trainkit.loaders import WorkerLoader, class_weights, default_workers
from trainkit.preprocess import Preprocess


@dataclass
class Data:
    spec: DataSpec
    splits: Splits
    train: object  # WorkerLoader or DeviceLoader: set_epoch, skip_batches, __iter__, __len__
    val: object
    test: object
    preprocess: Preprocess
    device: torch.device
    loader_kind: str
    loader_reason: str
    train_pipeline: object
    loss_weights: torch.Tensor | None

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        return self.preprocess(images), labels.to(self.device, non_blocking=True)

    def sample_train_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n augmented training images (uint8 NCHW) with labels, for a look at what the model sees.

        Drawn with their own fixed seeds, so looking does not change the run's random stream."""
        n = min(n, len(self.splits.train))
        idx = np.random.default_rng(0).choice(len(self.splits.train), size=n, replace=False)
        images, labels = [], []
        for k, i in enumerate(idx):
            image, label = self.splits.train[int(i)]
            self.train_pipeline.set_random_seed(k)
            images.append(self.train_pipeline(image=image)["image"])
            labels.append(label)
        return torch.stack(images), torch.tensor(labels)


def resolve_workers(value) -> int:
    if value == "auto":
        return default_workers()
    if isinstance(value, int) and value >= 0:
        return value
    raise allowed("dataset.workers", value, "auto or a whole number >= 0")


def build_data(cfg, device: torch.device) -> Data:
    seed = int(cfg.trainer.seed)
    splits = build_splits(cfg.dataset, seed)
    spec = splits.spec
    train_pipeline = build_pipeline(cfg.augmentation.train, "augmentation.train")
    eval_pipeline = build_pipeline(cfg.augmentation.eval, "augmentation.eval")
    counts_weights = class_weights(splits.train.labels, spec.num_classes)
    sampler_weights = counts_weights[torch.from_numpy(splits.train.labels)] if cfg.dataset.balanced_sampler else None
    loss_weights = _loss_weights(cfg.dataset.class_weights, counts_weights)
    workers = resolve_workers(cfg.dataset.workers)
    pin = device.type == "cuda"
    kind = cfg.dataset.loader
    if kind not in ("auto", "workers", "device"):
        raise allowed("dataset.loader", kind, "auto, device or workers")
    reason = "dataset.loader=workers"
    train = WorkerLoader(splits.train, train_pipeline, int(cfg.trainer.batch_size), seed, train=True,
                         workers=workers, pin_memory=pin, weights=sampler_weights)
    eval_workers = workers if len(cfg.augmentation.eval or []) else 0
    val = WorkerLoader(splits.val, eval_pipeline, int(cfg.trainer.eval_batch_size), seed, train=False, workers=eval_workers, pin_memory=pin)
    test = WorkerLoader(splits.test, eval_pipeline, int(cfg.trainer.eval_batch_size), seed, train=False, workers=eval_workers, pin_memory=pin)
    preprocess = Preprocess(cfg.dataset.preprocess, spec.mean, spec.std).to(device)
    return Data(spec, splits, train, val, test, preprocess, device, "workers", reason, train_pipeline, loss_weights)


def _loss_weights(setting, weights: torch.Tensor) -> torch.Tensor | None:
    if setting in (None, False, "none"):
        return None
    if setting == "auto":
        return weights
    raise allowed("dataset.class_weights", setting, "null or auto (inverse class frequency)")
