"""Start-of-run sanity checks (the lectures' "double check the loss at the beginning"): the
initial loss against ln C, the inputs after preprocessing, the label distribution.

They change nothing the run uses: the loss is computed on a copy of the model (so batch-norm
statistics stay as they were) under a forked RNG (so dropout draws nothing from the run's stream),
on images drawn with their own fixed seeds (`Data.sample_train_batch`), never from the training
loader. Own code: no library does these checks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainkit.engine.devices import autocast


@dataclass
class Check:
    name: str  # initial_loss, inputs, labels
    ok: bool
    figures: dict
    message: str

    def line(self) -> str:
        return f"sanity: {self.name.replace('_', ' ')}: {'ok' if self.ok else 'WARNING'}: {self.message}"

    def as_record(self) -> dict:
        return {"ok": self.ok, **self.figures, "message": self.message}


def sample_batch(data, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`images` training images as the model sees them (augmented, preprocessed, on the device)."""
    x, y = data.sample_train_batch(images)
    return data.to_device(x, y)


@torch.no_grad()
def data_loss(model, images: torch.Tensor, labels: torch.Tensor, device, amp_dtype=None, batch: int = 256) -> float:
    """Plain cross-entropy (no penalty, smoothing, class weights or dropout) of a copy of `model` in
    training mode, as the first step sees it; the model, its buffers and the RNG are left as they were."""
    probe = copy.deepcopy(model).train()
    for module in probe.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()  # the data loss alone: regularization off
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        total = torch.zeros((), device=images.device)
        for i in range(0, len(labels), batch):
            with autocast(device, amp_dtype):
                logits = probe(images[i:i + batch])
            total += F.cross_entropy(logits.float(), labels[i:i + batch], reduction="sum")
    return float(total) / len(labels)


@torch.no_grad()
def training_loss(model, criterion, regularizers, optimizer, images, labels, device, amp_dtype=None) -> float:
    """The loss the first step minimises, regularization on: mixing, dropout, label smoothing, class
    weights and loss penalties, plus the optimizer's coupled weight decay as the lambda/2 ||w||^2 it
    adds to the objective. On a copy of the model, under a forked RNG."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        mixed, targets = regularizers.mix(images, labels)
        with autocast(device, amp_dtype):
            logits = probe(mixed)
        loss = criterion(logits.float(), targets) + regularizers.penalty(probe)
    ids = {id(p): p for p in model.parameters()}
    decay = sum(float(group.get("weight_decay", 0.0)) / 2 * sum(float(ids[id(p)].detach().float().pow(2).sum())
                                                               for p in group["params"] if id(p) in ids)
                for group in optimizer.param_groups)
    return float(loss) + decay


def initial_loss_check(loss: float, num_classes: int, tolerance: float, pretrained: str | None = None) -> Check:
    """ln C is the loss of random weights; from `pretrained` weights (the source, e.g. model.from_run=...)
    the figure is reported, not judged: the body's features already separate the classes."""
    chance = math.log(num_classes)
    figures = {"loss": round(loss, 4), "ln_c": round(chance, 4), "excess": round(loss - chance, 4), "tolerance": tolerance}
    if not math.isfinite(loss):
        return Check("initial_loss", False, figures, f"the data loss at init is {loss}: look for NaN/Inf inputs or a broken init")
    if pretrained:
        return Check("initial_loss", True, {**figures, "judged": False},
                     f"{loss:.3f} vs ln({num_classes}) = {chance:.3f}: not judged, the model starts from pretrained weights "
                     f"({pretrained}) and ln C is the loss of random ones")
    if abs(loss - chance) <= tolerance:
        return Check("initial_loss", True, figures, f"{loss:.3f} vs ln({num_classes}) = {chance:.3f} (within {tolerance:g})")
    if loss > chance:
        return Check("initial_loss", False, figures,
                     f"{loss:.3f} vs ln({num_classes}) = {chance:.3f}: {loss - chance:.2f} over (more than {tolerance:g}); the "
                     "network starts confidently wrong: weights too large for their layers (try init=default or "
                     "init=kaiming, or a smaller init.std), inputs not normalized (dataset.preprocess=standardize), "
                     "or a classifier layer too large at init")
    return Check("initial_loss", False, figures,
                 f"{loss:.3f} vs ln({num_classes}) = {chance:.3f}: {chance - loss:.2f} under (more than {tolerance:g}); the "
                 "untrained network already beats chance: are labels leaking into the inputs, or are these not random weights?")


def inputs_check(images: torch.Tensor) -> Check:
    """Per-channel mean and std after preprocessing, and any NaN/Inf."""
    x = images.float().transpose(0, 1).reshape(images.shape[1], -1)
    finite = torch.isfinite(x)
    bad = int((~finite).sum())
    x = torch.where(finite, x, torch.zeros_like(x))
    mean, std = x.mean(1).tolist(), x.std(1).tolist()
    figures = {"mean": [round(m, 4) for m in mean], "std": [round(s, 4) for s in std], "non_finite": bad}
    shown = f"per-channel mean {fmt_list(mean)}, std {fmt_list(std)}"
    if bad:
        return Check("inputs", False, figures, f"{bad} NaN/Inf values after preprocessing; {shown}")
    if any(abs(m) > 1.0 for m in mean) or any(s > 3.0 or s < 0.1 for s in std):
        return Check("inputs", False, figures, f"{shown}: far from zero mean and unit std; check dataset.mean/std "
                                               "(recompute them for your data) and dataset.preprocess=standardize")
    return Check("inputs", True, figures, f"{shown}; no NaN/Inf")


def labels_check(labels: np.ndarray, num_classes: int, imbalance: float, weighted: bool) -> Check:
    counts = np.bincount(labels, minlength=num_classes)
    largest, smallest = int(counts.max()), int(counts.min())
    ratio = largest / smallest if smallest else math.inf
    figures = {"counts": counts.tolist(), "imbalance": round(ratio, 3) if math.isfinite(ratio) else None}
    if smallest == 0:
        missing = [int(i) for i in np.flatnonzero(counts == 0)]
        return Check("labels", False, figures, f"class(es) {missing} have no training images (of {num_classes} classes)")
    text = f"{num_classes} classes, {smallest} to {largest} training images each (largest/smallest {ratio:.2f})"
    if ratio > imbalance and not weighted:
        return Check("labels", False, figures, f"{text}, over {imbalance:g}: try dataset.class_weights=auto "
                                               "(or dataset.balanced_sampler=true)")
    return Check("labels", True, figures, text)


def fmt_list(values) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
