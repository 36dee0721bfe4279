"""Regularizers chosen in the `regularization` list group, as the loop's small hooks.

torch provides dropout (nn.Dropout), label smoothing (CrossEntropyLoss(label_smoothing=)),
L2 through the optimizer's weight_decay and gradient clipping (nn.utils.clip_grad_*_); those
are used as they are. torch has no L1/elastic-net penalty, so that is written here; mixup and
cutmix are torchvision's (transforms.v2.MixUp, CutMix and RandomChoice to switch between
them). Early stopping is a loop callback: trainkit.engine.callbacks.early_stopping.EarlyStopping.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainkit.errors import allowed

# The knobs of each regularization/<name>.yaml; a misspelt knob fails before training starts.
KNOBS = {
    "l2": {"weight_decay", "coupling"},
    "l1": {"weight"},
    "elastic_net": {"l1", "beta"},
    "dropout": {"p"},
    "label_smoothing": {"epsilon"},
    "mixup": {"alpha"},
    "cutmix": {"alpha", "switch_prob"},
    "early_stopping": {"monitor", "mode", "patience", "min_delta"},
    "grad_clip": {"by", "max_norm", "norm_type", "value"},
    "ema": {"decay", "warmup", "warmup_gamma", "warmup_power", "min_decay", "update_after_step"},
    "swa": {"start", "lr", "anneal_epochs", "anneal_strategy"},
}


class Regularizers:
    """What the selected regularizers add to the loop: a dropout rate for the model, a loss
    penalty, a batch transform (mixup/cutmix), label smoothing and gradient clipping.

    `num_classes` is needed for the soft targets of mixup and cutmix."""

    def __init__(self, cfg, num_classes: int | None = None):
        self.cfg = cfg or {}
        for name, node in self.cfg.items():
            if name not in KNOBS:
                raise allowed("regularization", name, ", ".join(KNOBS))
            unknown = set(node or {}) - KNOBS[name]
            if unknown:
                raise allowed(f"regularization.{name}", sorted(unknown), f"the knobs are {', '.join(sorted(KNOBS[name]))}")
        self.num_classes = num_classes

        dropout = self.cfg.get("dropout")
        self.dropout = _number(dropout.p, "regularization.dropout.p", 0.0, 1.0, hi_open=True) if dropout else 0.0
        smoothing = self.cfg.get("label_smoothing")
        self.label_smoothing = (_number(smoothing.epsilon, "regularization.label_smoothing.epsilon", 0.0, 1.0, hi_open=True)
                                if smoothing else 0.0)

        l2 = self.cfg.get("l2")
        if l2 is not None and l2.coupling not in ("optimizer", "loss"):
            raise allowed("regularization.l2.coupling", l2.coupling, "optimizer or loss")
        self.l2_in_loss = float(l2.weight_decay) if l2 is not None and l2.coupling == "loss" else 0.0
        l1 = self.cfg.get("l1")
        self.l1 = _number(l1.weight, "regularization.l1.weight", 0.0) if l1 else 0.0
        enet = self.cfg.get("elastic_net")
        self.elastic_l1 = _number(enet.l1, "regularization.elastic_net.l1", 0.0) if enet else 0.0
        self.elastic_beta = _number(enet.beta, "regularization.elastic_net.beta", 0.0) if enet else 0.0

        self.mixup_alpha = self._mix_alpha("mixup")
        self.cutmix_alpha = self._mix_alpha("cutmix")
        cutmix = self.cfg.get("cutmix")
        self.switch_prob = (_number(cutmix.get("switch_prob", 0.5), "regularization.cutmix.switch_prob", 0.0, 1.0)
                            if cutmix else 0.0)
        if (self.mixup_alpha or self.cutmix_alpha) and not num_classes:
            raise ValueError("mixup/cutmix build soft targets: pass Regularizers(cfg, num_classes=...)")
        self.batch_mix = None  # torchvision's MixUp or CutMix, or a RandomChoice of the two
        if self.mixup_alpha or self.cutmix_alpha:
            from torchvision.transforms import v2  # imported here: ~1 s of startup, paid only by runs that mix
            mixup_op = v2.MixUp(alpha=self.mixup_alpha, num_classes=num_classes) if self.mixup_alpha else None
            cutmix_op = v2.CutMix(alpha=self.cutmix_alpha, num_classes=num_classes) if self.cutmix_alpha else None
            if mixup_op is not None and cutmix_op is not None:  # one draw per batch: cutmix w.p. switch_prob
                self.batch_mix = v2.RandomChoice([cutmix_op, mixup_op], p=[self.switch_prob, 1.0 - self.switch_prob])
            else:
                self.batch_mix = mixup_op if mixup_op is not None else cutmix_op

        self._clip = self._clip_settings(self.cfg.get("grad_clip"))
        self.last_grad_norm: torch.Tensor | None = None

    # -- loss penalty ---------------------------------------------------------------------------
    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """L2 (coupling: loss), L1 and elastic net on conv/linear weights (own code: torch has
        no penalty terms; it only has L2 as an optimizer's weight_decay)."""
        l2 = self.l2_in_loss + self.elastic_beta  # both use the lambda/2 * sum(w^2) form
        l1 = self.l1 + self.elastic_l1
        if not (l1 or l2):
            return 0.0
        total = 0.0
        for w in decayed_parameters(model):
            if l2:
                total = total + 0.5 * l2 * w.pow(2).sum()
            if l1:
                total = total + l1 * w.abs().sum()
        return total

    # -- mixup / cutmix ---------------------------------------------------------------------------
    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or cutmix of a float NCHW batch with int64 labels: the mixed images and float soft
        targets (N, num_classes); without either, the batch passes through.

        torchvision's v2.MixUp / v2.CutMix; configs/regularization/{mixup,cutmix}.yaml give the
        definitions. Their draws (torch.multinomial, Beta via torch._sample_dirichlet,
        torch.randint) all come from torch's global CPU generator, which the run seeds and
        checkpoints, so a resumed run mixes the same way. The batch stays on its device: only
        lam and the box, Python scalars, come from the CPU."""
        # torchvision pairs sample i with sample i - 1 (roll(1, 0)), not with a random permutation:
        # the same here, because the training loader reshuffles every epoch (or samples with
        # replacement, with the balanced sampler), so each sample meets a uniformly random other.
        if self.batch_mix is None:
            return images, labels
        return self.batch_mix(images, labels)

    def _mix_alpha(self, name: str) -> float:
        node = self.cfg.get(name)
        if not node:
            return 0.0
        alpha = float(node.alpha)
        if not alpha > 0:
            raise allowed(f"regularization.{name}.alpha", node.alpha, "a number > 0 (Beta(alpha, alpha) draws the mixing weight)")
        return alpha

    # -- gradient clipping -------------------------------------------------------------------------
    def clip_gradients(self, model: nn.Module) -> None:
        """torch's clip_grad_norm_ / clip_grad_value_, when grad_clip is selected."""
        if self._clip is None:
            return None
        by, limit, norm_type = self._clip
        if by == "norm":
            self.last_grad_norm = nn.utils.clip_grad_norm_(model.parameters(), limit, norm_type=norm_type)
        else:
            nn.utils.clip_grad_value_(model.parameters(), limit)
        return None

    @staticmethod
    def _clip_settings(node):
        if not node:
            return None
        by = node.get("by", "norm")
        if by == "norm":
            # norm_type inf (the largest |g|) comes as a float from the command line and as 'inf' from YAML.
            norm_type = _number(node.get("norm_type", 2.0), "regularization.grad_clip.norm_type", 0.0, positive=True)
            return by, _number(node.max_norm, "regularization.grad_clip.max_norm", 0.0, positive=True), norm_type
        if by == "value":
            return by, _number(node.value, "regularization.grad_clip.value", 0.0, positive=True), None
        raise allowed("regularization.grad_clip.by", by, "norm or value")


def decayed_parameters(model: nn.Module):
    """Weights of conv and linear layers: the parameters a weight penalty applies to (not
    biases, normalization weights or PReLU slopes). With weight/spectral norm this is the
    effective weight the layer uses."""
    for module in model.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module.weight.requires_grad:  # not frozen ones
            yield module.weight


def _number(value, key: str, lo: float, hi: float | None = None, hi_open: bool = False, positive: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise allowed(key, value, "a number") from None
    if math.isnan(x) or x < lo or (positive and x <= lo) or (hi is not None and (x >= hi if hi_open else x > hi)):
        bounds = f"> {lo}" if positive else f">= {lo}"
        if hi is not None:
            bounds += f" and {'<' if hi_open else '<='} {hi}"
        raise allowed(key, value, f"a number {bounds}")
    return x
