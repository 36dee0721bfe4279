"""The 'device' data path: the dataset as uint8 on the training device, augmented in whole batches.

No worker processes and no per-image Python: each batch is one index into the resident
uint8 tensor and a few tensor ops (flip, pad, random crop, cutout), the way airbench feeds
a GPU. The ops read their parameters from the same albumentations transforms the workers
path runs, so both paths draw from the same distribution (not the same numbers).
"""

from __future__ import annotations

import hashlib

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from trainkit.data.augmentation import user_transforms
from trainkit.data.sources import ArraySource
from trainkit.errors import UserError
from trainkit.data.loaders import EpochSampler, GlobalBatches

BATCHED = "HorizontalFlip, VerticalFlip, Pad, PadIfNeeded, RandomCrop, CenterCrop, CoarseDropout, NoOp"
# cv2 border modes that torch.nn.functional.pad can reproduce.
TORCH_PAD_MODES = {cv2.BORDER_CONSTANT: "constant", cv2.BORDER_REFLECT_101: "reflect", cv2.BORDER_REPLICATE: "replicate"}


class NotBatchable(Exception):
    """A transform that has no batched equivalent here; the message says which and why."""


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of one batch's augmentation draws: a function of (seed, epoch, batch) only,
    so resuming mid-epoch replays exactly and looking at one batch never shifts another."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{batch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


# -- batched ops: uint8 NCHW batch + CPU generator -> uint8 NCHW batch ---------------------------------
# Random numbers are drawn on the CPU generator (a few per image) and moved to the batch's
# device, so a batch is the same on CPU and GPU.

class Flip:
    def __init__(self, dim: int, p: float):
        self.dim, self.p = dim, float(p)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = (torch.rand(x.shape[0], generator=g) < self.p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(self.dim), x)


class Pad:
    def __init__(self, top: int, bottom: int, left: int, right: int, mode: str, fill: float):
        self.pads, self.mode, self.fill = (left, right, top, bottom), mode, fill

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.mode == "constant":
            return F.pad(x, self.pads, value=self.fill)
        return F.pad(x, self.pads, mode=self.mode)


class RandomCrop:
    """A uniformly placed height x width window per image, as albumentations.RandomCrop."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        top = torch.randint(0, h - self.height + 1, (n,), generator=g).to(x.device)
        left = torch.randint(0, w - self.width + 1, (n,), generator=g).to(x.device)
        # Every window as a strided view (no copy), then one gather of each image's window:
        # about 4x faster on the CPU than indexing rows and columns.
        windows = x.unfold(2, self.height, 1).unfold(3, self.width, 1)  # n, c, h', w', height, width
        return windows[torch.arange(n, device=x.device), :, top, left]


class CenterCrop:
    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        top, left = (h - self.height) // 2, (w - self.width) // 2
        return x[:, :, top:top + self.height, left:left + self.width]


class Cutout:
    """albumentations.CoarseDropout's draws, for a whole batch: hole count, sizes, then places."""

    def __init__(self, num_holes_range, height_range, width_range, fill, p: float):
        self.num_holes_range, self.height_range, self.width_range = num_holes_range, height_range, width_range
        self.fill, self.p = fill, float(p)

    def _sizes(self, n: int, k: int, size: int, size_range, as_pixels: bool, g) -> torch.Tensor:
        lo, hi = size_range
        if as_pixels:  # the same rule as CoarseDropout: a range whose top is >= 1 counts in pixels
            return torch.randint(int(lo), int(min(hi, size)) + 1, (n, k), generator=g)
        return (size * (lo + (hi - lo) * torch.rand(n, k, generator=g, dtype=torch.float64))).long()

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        k = int(self.num_holes_range[1])
        as_pixels = self.height_range[1] >= 1
        applied = torch.rand(n, generator=g) < self.p
        count = torch.randint(int(self.num_holes_range[0]), k + 1, (n,), generator=g)
        hole_h = self._sizes(n, k, h, self.height_range, as_pixels, g)
        hole_w = self._sizes(n, k, w, self.width_range, as_pixels, g)
        top = (torch.rand(n, k, generator=g, dtype=torch.float64) * (h - hole_h + 1)).long()
        left = (torch.rand(n, k, generator=g, dtype=torch.float64) * (w - hole_w + 1)).long()
        active = (torch.arange(k)[None, :] < count[:, None]) & applied[:, None]
        dev = x.device
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        top, left, hole_h, hole_w, active = (t.to(dev) for t in (top, left, hole_h, hole_w, active))
        in_rows = (ys >= top[..., None]) & (ys < (top + hole_h)[..., None])  # n, k, h
        in_cols = (xs >= left[..., None]) & (xs < (left + hole_w)[..., None])  # n, k, w
        hole = (in_rows[..., :, None] & in_cols[..., None, :] & active[..., None, None]).any(1)  # n, h, w
        fill = torch.as_tensor(self.fill, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
        return torch.where(hole[:, None], fill, x)


# -- from albumentations transforms to batched ops --------------------------------------------------------

def _scalar_fill(fill, name: str):
    if isinstance(fill, (int, float)):
        return fill
    raise NotBatchable(f"{name} with fill={fill!r} (only a single number is batched)")


def _always(t, name: str) -> None:
    if t.p < 1:
        raise NotBatchable(f"{name} with p={t.p} (it changes the image size, so only p=1 is batched)")


def batched_ops(pipeline: A.Compose, image_shape: tuple[int, int, int], key: str) -> list:
    """The batched equivalent of each transform in `pipeline`, for (C, H, W) input images.

    Raises NotBatchable naming the first transform that has none.
    """
    c, h, w = image_shape
    ops = []
    for i, t in enumerate(user_transforms(pipeline)):
        name = f"{key}[{i}] ({type(t).__name__})"
        kind = type(t)  # the exact class: a subclass may draw differently
        if kind in (A.HorizontalFlip, A.VerticalFlip):
            ops.append(Flip(3 if kind is A.HorizontalFlip else 2, t.p))
        elif kind in (A.Pad, A.PadIfNeeded):
            _always(t, name)
            if kind is A.PadIfNeeded and t.position != "center":
                raise NotBatchable(f"{name} with position={t.position!r} (only center is batched)")
            if t.border_mode not in TORCH_PAD_MODES:
                raise NotBatchable(f"{name} with border_mode={t.border_mode} (batched: 0 constant, 1 replicate, 4 reflect_101)")
            pads = t.get_params_dependent_on_data({"shape": (h, w, c)}, {})
            top, bottom, left, right = (int(pads[k]) for k in ("pad_top", "pad_bottom", "pad_left", "pad_right"))
            mode = TORCH_PAD_MODES[t.border_mode]
            if mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
                raise NotBatchable(f"{name}: reflect padding as wide as the image")
            ops.append(Pad(top, bottom, left, right, mode, _scalar_fill(t.fill, name) if mode == "constant" else 0))
            h, w = h + top + bottom, w + left + right
        elif kind in (A.RandomCrop, A.CenterCrop):
            _always(t, name)
            if t.pad_if_needed:
                raise NotBatchable(f"{name} with pad_if_needed=true (use Pad or PadIfNeeded before it)")
            if t.height > h or t.width > w:
                raise UserError(f"{name}: a {t.height}x{t.width} crop does not fit the {h}x{w} image; pad first")
            ops.append((RandomCrop if kind is A.RandomCrop else CenterCrop)(t.height, t.width))
            h, w = t.height, t.width
        elif kind is A.CoarseDropout:
            if isinstance(t.fill, str):
                raise NotBatchable(f"{name} with fill={t.fill!r} (only a number or one number per channel is batched)")
            fill = t.fill
            if not isinstance(fill, (int, float)) and len(fill) not in (1, c):
                raise NotBatchable(f"{name} with {len(fill)} fill values for {c} channels")
            ops.append(Cutout(t.num_holes_range, t.hole_height_range, t.hole_width_range, fill, t.p))
        elif kind is A.NoOp:
            continue
        else:
            raise NotBatchable(f"{name} has no batched equivalent")
    return ops


def apply_ops(ops: list, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    for op in ops:
        images = op(images, g)
    return images.contiguous()


class DeviceLoader:
    """Batches of uint8 NCHW images and labels, resident on `device` and augmented there.

    The same interface as WorkerLoader (set_epoch, skip_batches, __iter__, __len__) and the
    same per-epoch order (EpochSampler); every batch's draws come from (seed, epoch, batch).
    """

    def __init__(self, source: ArraySource, ops: list, batch_size: int, seed: int, train: bool,
                 device: torch.device, weights: torch.Tensor | None = None, rank: int = 0, world: int = 1):
        # NCHW once, up front: per batch there is then only the index and the augmentation.
        self.images = torch.from_numpy(source.images).to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(source.labels).to(device)
        self.sampler = EpochSampler(len(source), seed, shuffle=train, weights=weights)
        self.batches = GlobalBatches(self.sampler, batch_size, train, rank, world)
        self.ops, self.batch_size, self.seed, self.device = ops, batch_size, seed, device

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.batches.start = 0

    def skip_batches(self, batches: int) -> None:
        self.batches.start = batches

    def __len__(self) -> int:
        return len(self.batches)

    def batch_total(self, b: int) -> int:
        return self.batches.total(b)

    def __iter__(self):
        indices, _ = self.sampler.order()
        indices = indices.to(self.device)
        epoch, batches = self.sampler.epoch, self.batches
        for b in range(batches.start, len(batches)):
            share = batches.positions(b)
            if not len(share):
                continue
            g = batch_generator(self.seed, epoch, b)
            if batches.world == 1 or not self.ops:
                idx = indices[share.start:share.stop:share.step]
                yield apply_ops(self.ops, self.images[idx], g), self.labels[idx]
                continue
            # Several processes: the whole global batch is augmented with its draws, and this rank keeps its
            # rows, so each image gets the draws it gets in one process (batched ops cost little beside the model).
            whole = indices[b * self.batch_size:b * self.batch_size + batches.total(b)]
            rows = slice(batches.rank, None, batches.world)
            yield apply_ops(self.ops, self.images[whole], g)[rows].contiguous(), self.labels[whole][rows]

    def augment(self, indices, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The given images augmented with draws from `seed` (for looking at them)."""
        idx = torch.as_tensor(indices, device=self.device)
        return apply_ops(self.ops, self.images[idx], torch.Generator().manual_seed(seed)), self.labels[idx]
