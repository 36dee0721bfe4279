"""The one rule for which parameters weight decay reaches, shared by the optimizer's parameter
groups (components/optimizers.py) and the loss penalties (components/regularization.py: l2 with
coupling=loss, l1, elastic_net), so that "decayed" means the same to both.

Kernels and matrices decay; vectors do not: biases, normalization scales and shifts, PReLU
slopes (timm's rule, `p.ndim > 1`). Weight norm's gain g (w = g v / ||v||) is a per-unit scale
stored with the kernel's rank, so it is named here; its direction v decays. With spectral norm
the raw kernel W decays (the layer uses W / sigma_max(W)). Frozen parameters are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn
from torch.nn.utils.parametrize import ParametrizationList


def is_weight_norm_gain(module: nn.Module, name: str) -> bool:
    """Weight norm's g (w = g v / ||v||) is a per-unit scale, like a normalization weight."""
    from torch.nn.utils.parametrizations import _WeightNorm

    return isinstance(module, ParametrizationList) and name == "original0" and any(isinstance(p, _WeightNorm) for p in module)


def decays(module: nn.Module, name: str, p: nn.Parameter) -> bool:
    """Whether `module`'s own parameter `name` is decayed."""
    return p.requires_grad and p.ndim > 1 and not is_weight_norm_gain(module, name)


def split_by_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, exempt): the model's trainable parameters, each once, by the rule above."""
    decayed, exempt = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (decayed if decays(module, name, p) else exempt).append(p)
    return decayed, exempt


def decayed_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters a weight penalty and the optimizer's decay apply to."""
    yield from split_by_decay(model)[0]
