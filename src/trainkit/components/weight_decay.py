"""The one rule for which parameters weight decay reaches, shared by the optimizer's parameter
groups (components/optimizers.py) and the loss penalties (components/regularization.py: l2 with
coupling=loss, l1, elastic_net), so that "decayed" means the same to both.

Weights decay; biases, normalization scales and shifts and PReLU slopes do not (He et al. 2015
train the slopes without decay), nor weight norm's gain g (w = g v / ||v||), a per-unit scale;
its direction v decays. With spectral norm the raw kernel W decays (the layer uses W / sigma_max(W)).
Frozen parameters are skipped. For trainkit's models this is timm's `p.ndim > 1` rule; it is
written by kind so that a vector a model trains as a weight (not a bias) is still decayed.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn
from torch.nn.utils.parametrize import ParametrizationList


def is_weight_norm_gain(module: nn.Module, name: str) -> bool:
    """Weight norm's g (w = g v / ||v||) is a per-unit scale, like a normalization weight."""
    from torch.nn.utils.parametrizations import _WeightNorm

    return isinstance(module, ParametrizationList) and name == "original0" and any(isinstance(p, _WeightNorm) for p in module)


NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
EXEMPT_MODULES = NORM_TYPES + (nn.PReLU,)


def decays(module: nn.Module, name: str, p: nn.Parameter) -> bool:
    """Whether `module`'s own parameter `name` is decayed."""
    return (p.requires_grad and name != "bias" and not isinstance(module, EXEMPT_MODULES)
            and not is_weight_norm_gain(module, name))


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
