"""Everything the loop needs from the data side: loaders, the on-device preprocessing, the spec."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from trainkit.data.augmentation import augment, build_pipeline
from trainkit.data.datasets import build_splits, shuffle_train_labels
from trainkit.data.sources import DataSpec, Splits
from trainkit.data.device_loader import BATCHED, DeviceLoader, NotBatchable, batched_ops
from trainkit.config.rules import require, rule_of
from trainkit.config.schema import DatasetConfig
from trainkit.errors import UserError
from trainkit.data.loaders import WorkerLoader, class_weights, default_workers
from trainkit.memory import available_memory, format_bytes
from trainkit.data.overfit import fixed_subset
from trainkit.data.split import subset_of_train
from trainkit.data.preprocess import Preprocess

DEVICE_MEMORY_SHARE = 0.5  # the resident dataset may take at most this share of free memory; the rest is for the model


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
    memory_format: torch.memory_format = torch.contiguous_format  # trainer.channels_last: torch.channels_last

    def close(self) -> None:
        for loader in (self.train, self.val, self.test):
            getattr(loader, "close", lambda: None)()

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # non_blocking: from pinned memory (workers loader on CUDA) the copy overlaps the loop's work.
        images = self.preprocess(images.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    def train_sample(self, n: int = 5000) -> torch.Tensor:
        """The first n training images as the model sees them: preprocessed, not augmented."""
        images = torch.from_numpy(self.splits.train.images[:n]).permute(0, 3, 1, 2)
        return self.to_device(images, torch.zeros(0, dtype=torch.long))[0]

    def sample_train_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n augmented training images (uint8 NCHW, on the CPU) with labels, by the path that trains.

        Drawn with their own fixed seeds, so looking does not change the run's random stream."""
        n = min(n, len(self.splits.train))
        idx = np.sort(np.random.default_rng(0).choice(len(self.splits.train), size=n, replace=False))
        if isinstance(self.train, DeviceLoader):
            images, labels = self.train.augment(idx, seed=0)
            return images.cpu(), labels.cpu()
        images, labels = [], []
        for k, i in enumerate(idx):
            image, label = self.splits.train[int(i)]
            images.append(augment(self.train_pipeline, image, seed=k))
            labels.append(label)
        return torch.stack(images), torch.tensor(labels)


def check_pipeline_output(pipeline, image: np.ndarray, spec: DataSpec, key: str) -> None:
    """The model is built for uint8 image_size x image_size x in_channels (preprocess scales the
    pixels on the device): a pipeline must keep both the size and the dtype."""
    try:
        out = augment(pipeline, image, seed=0)
    except Exception as e:  # a transform that cannot handle these images (size, channels)
        raise UserError(f"{key} fails on a {'x'.join(map(str, image.shape))} training image: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if out.dtype != torch.uint8:
        raise UserError(f"{key} turns uint8 images into {str(out.dtype).removeprefix('torch.')}; it must leave them uint8 "
                        "(0..255): trainkit converts and normalizes them itself (dataset.preprocess)")
    want = (spec.in_channels, spec.image_size, spec.image_size)
    if tuple(out.shape) != want:
        raise UserError(f"{key} turns {spec.image_size}x{spec.image_size}x{spec.in_channels} images into "
                        f"{out.shape[1]}x{out.shape[2]}x{out.shape[0]}; the model is built for dataset.image_size="
                        f"{spec.image_size}: end the pipeline at that size (e.g. a Resize or RandomCrop to it)")


def resolve_workers(value) -> int:
    require(rule_of(DatasetConfig, "workers"), "dataset.workers", value)
    return default_workers() if value == "auto" else value


def free_memory(device: torch.device) -> int:
    """Bytes that a resident dataset could use on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_memory()


def choose_loader(kind: str, splits: Splits, train_pipeline, eval_pipeline, device: torch.device):
    """(kind, reason, train ops, eval ops): which path feeds the loop, and why."""
    require(rule_of(DatasetConfig, "loader"), "dataset.loader", kind)
    if kind == "workers":
        return "workers", "dataset.loader=workers", None, None
    shape = splits.train.images.shape
    chw = (shape[3], shape[1], shape[2])
    try:
        train_ops = batched_ops(train_pipeline, chw, "augmentation.train")
        eval_ops = batched_ops(eval_pipeline, chw, "augmentation.eval")
    except NotBatchable as e:
        if kind == "device":
            raise UserError(f"dataset.loader=device: {e} (batched: {BATCHED}); use dataset.loader=workers (or auto)") from None
        return "workers", str(e), None, None
    need = sum(s.images.nbytes + s.labels.nbytes for s in (splits.train, splits.val, splits.test))
    available = free_memory(device)
    if need > DEVICE_MEMORY_SHARE * available:
        why = f"the dataset ({format_bytes(need)}) is more than {DEVICE_MEMORY_SHARE:.0%} of the {format_bytes(available)} free on {device}"
        if kind == "device":
            raise UserError(f"dataset.loader=device: {why}; use dataset.loader=workers (or auto)")
        return "workers", why, None, None
    if kind == "device":
        return "device", "dataset.loader=device", train_ops, eval_ops
    n_ops = len(train_ops) + len(eval_ops)
    why = (f"all {n_ops} augmentation op(s) are batched" if n_ops else "no augmentation") + \
          f" and the data ({format_bytes(need)}) fits on {device}"
    return "device", why, train_ops, eval_ops


def build_data(cfg, device: torch.device, rank: int = 0, world: int = 1) -> Data:
    """The run's data; with several processes (DDP), each loader yields this rank's share of every
    global batch (trainer.batch_size and eval_batch_size stay global)."""
    seed = int(cfg.trainer.seed)  # the data order and the augmentation draws
    splits = build_splits(cfg.dataset, int(cfg.dataset.get("split_seed", 0)))  # which images are held out
    if cfg.dataset.get("train_subset"):  # little-data experiments: the same n training images every run
        chosen = subset_of_train(splits.train.labels, int(cfg.dataset.train_subset), int(cfg.dataset.get("split_seed", 0)))
        splits = replace(splits, train=splits.train.subset(chosen))
    if cfg.dataset.get("shuffle_labels"):
        splits = shuffle_train_labels(splits, seed)
    if cfg.trainer.get("overfit_batches"):  # debug=overfit: the same few images every epoch
        splits = fixed_subset(splits, int(cfg.trainer.overfit_batches), int(cfg.trainer.batch_size), seed)
    spec = splits.spec
    train_pipeline = build_pipeline(cfg.augmentation.train, "augmentation.train")
    eval_pipeline = build_pipeline(cfg.augmentation.eval, "augmentation.eval")
    for key, pipeline in (("augmentation.train", train_pipeline), ("augmentation.eval", eval_pipeline)):
        check_pipeline_output(pipeline, splits.train.images[0], spec, key)
    counts_weights = class_weights(splits.train.labels, spec.num_classes)
    sampler_weights = counts_weights[torch.from_numpy(splits.train.labels)] if cfg.dataset.balanced_sampler else None
    loss_weights = _loss_weights(cfg.dataset.class_weights, counts_weights)
    workers = resolve_workers(cfg.dataset.workers)
    batch, eval_batch = int(cfg.trainer.batch_size), int(cfg.trainer.eval_batch_size)
    kind, reason, train_ops, eval_ops = choose_loader(cfg.dataset.loader, splits, train_pipeline, eval_pipeline, device)
    if kind == "device":
        shard = {"rank": rank, "world": world}
        train = DeviceLoader(splits.train, train_ops, batch, seed, train=True, device=device, weights=sampler_weights, **shard)
        val = DeviceLoader(splits.val, eval_ops, eval_batch, seed, train=False, device=device, **shard)
        test = DeviceLoader(splits.test, eval_ops, eval_batch, seed, train=False, device=device, **shard)
    else:
        pin = pinned_memory(cfg.trainer.pin_memory, device)
        shard = {"rank": rank, "world": world}
        train = WorkerLoader(splits.train, train_pipeline, batch, seed, train=True,
                             workers=workers, pin_memory=pin, weights=sampler_weights, **shard)
        # An empty eval pipeline is only a tensor conversion: not worth worker processes.
        eval_workers = workers if len(cfg.augmentation.eval or []) else 0
        val = WorkerLoader(splits.val, eval_pipeline, eval_batch, seed, train=False, workers=eval_workers, pin_memory=pin,
                           **shard)
        test = WorkerLoader(splits.test, eval_pipeline, eval_batch, seed, train=False, workers=eval_workers, pin_memory=pin,
                            persistent=False, **shard)  # used once, at the end
        reason = f"{reason}; {workers} worker process(es)"
    from trainkit.console import report

    report(f"data loader: {kind} ({reason})")
    preprocess = Preprocess(cfg.dataset.preprocess, spec.mean, spec.std,
                            train_images=splits.train.images if cfg.dataset.preprocess == "zca" else None,
                            zca_epsilon=float(cfg.dataset.get("zca_epsilon", 1e-2))).to(device)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    return Data(spec, splits, train, val, test, preprocess, device, kind, reason, train_pipeline, loss_weights, memory_format)


def pinned_memory(setting, device: torch.device) -> bool:
    """trainer.pin_memory: page-locked batches only help a copy to a GPU (auto and true alike)."""
    return setting in ("auto", True) and device.type == "cuda"


def _loss_weights(setting, weights: torch.Tensor) -> torch.Tensor | None:
    require(rule_of(DatasetConfig, "class_weights"), "dataset.class_weights", setting)
    return weights if setting == "auto" else None
