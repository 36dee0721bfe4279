"""Regularizers chosen in the `regularization` list group, as the loop's small hooks.

torch provides dropout (nn.Dropout), label smoothing (CrossEntropyLoss(label_smoothing=)),
L2 through the optimizer's weight_decay and gradient clipping (nn.utils.clip_grad_*_); those
are used as they are. torch has no L1/elastic-net penalty, so that is written here; mixup and
cutmix are torchvision's (transforms.v2.MixUp, CutMix and RandomChoice to switch between
them). Early stopping is a loop callback: trainkit.engine.callbacks.early_stopping.EarlyStopping.
"""

from __future__ import annotations

import torch
from torch import nn

from trainkit.components.weight_decay import decayed_parameters
from trainkit.config.rules import validated
from trainkit.config.schema import REGULARIZATION
from trainkit.errors import allowed


class Regularizers:
    """What the selected regularizers add to the loop: a dropout rate for the model, a loss
    penalty, a batch transform (mixup/cutmix), label smoothing and gradient clipping.

    `num_classes` is needed for the soft targets of mixup and cutmix."""

    def __init__(self, cfg, num_classes: int | None = None):
        self.cfg = cfg or {}
        for name, node in self.cfg.items():  # the rules of config/schema.py, for nodes not composed by Hydra
            if name not in REGULARIZATION:
                raise allowed("regularization", name, ", ".join(REGULARIZATION))
            validated(REGULARIZATION[name], node or {}, f"regularization.{name}")
        self.num_classes = num_classes

        dropout, smoothing = self.cfg.get("dropout"), self.cfg.get("label_smoothing")
        self.dropout = float(dropout.p) if dropout else 0.0
        self.label_smoothing = float(smoothing.epsilon) if smoothing else 0.0
        l2 = self.cfg.get("l2")
        self.l2_in_loss = float(l2.weight_decay) if l2 is not None and l2.coupling == "loss" else 0.0
        l1, enet = self.cfg.get("l1"), self.cfg.get("elastic_net")
        self.l1 = float(l1.weight) if l1 else 0.0
        self.elastic_l1, self.elastic_beta = (float(enet.l1), float(enet.beta)) if enet else (0.0, 0.0)

        mixup, cutmix = self.cfg.get("mixup"), self.cfg.get("cutmix")
        self.mixup_alpha = float(mixup.alpha) if mixup else 0.0
        self.cutmix_alpha = float(cutmix.alpha) if cutmix else 0.0
        self.switch_prob = float(cutmix.get("switch_prob", 0.5)) if cutmix else 0.0
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
        """L2 (coupling: loss), L1 and elastic net on the weights the optimizer would decay
        (components/weight_decay.py); own code: torch has no penalty terms, only L2 as an
        optimizer's weight_decay."""
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
            return by, float(node.max_norm), float(node.get("norm_type", 2.0))
        return by, float(node.value), None
