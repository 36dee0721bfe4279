"""Optimizers from config: torch.optim partials given the model's parameter groups.

A wrapper (lookahead, ranger) is a config with a `base` sub-node, itself an optimizer
partial: Hydra instantiates it as a nested partial, and the wrapper's target
(`trainkit.lookahead.lookahead`) gives it the parameter groups and wraps the result.
"""

from __future__ import annotations

import inspect

import torch
from hydra.utils import instantiate
from torch import nn

from trainkit.errors import UserError
from trainkit.lookahead import Lookahead

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
# PReLU slopes are not decayed either (He et al. 2015 train them without weight decay).
NO_DECAY_MODULES = NORM_TYPES + (nn.PReLU,)


def parameter_groups(model: nn.Module, weight_decay: float | None, exclude_bias_and_norm: bool) -> list[dict]:
    """One group with decay, and (optionally) one without for biases and norm weights."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            exempt = exclude_bias_and_norm and (name == "bias" or isinstance(module, NO_DECAY_MODULES))
            (no_decay if exempt else decay).append(p)
    main = {"params": decay} if weight_decay is None else {"params": decay, "weight_decay": float(weight_decay)}
    groups = [main]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(optimizer_cfg, model: nn.Module, regularization) -> torch.optim.Optimizer:
    """The configured optimizer; `regularization.l2` with coupling=optimizer sets its weight decay."""
    factory = instantiate(optimizer_cfg, _convert_="all")  # plain lists (betas): checkpoints load with weights_only
    l2 = regularization.get("l2") if regularization else None
    if l2 is not None and l2.coupling == "optimizer":
        if not _takes_weight_decay(factory):
            # L-BFGS has no weight_decay and allows one parameter group only.
            raise UserError(f"regularization.l2.coupling='optimizer' is not allowed with {_innermost(factory).__name__}, "
                            "which has no weight decay: use regularization.l2.coupling=loss")
        groups = parameter_groups(model, l2.weight_decay, l2.exclude_bias_and_norm)
    else:
        groups = parameter_groups(model, None, exclude_bias_and_norm=False)
    try:
        return factory(groups)
    except (ValueError, TypeError) as e:  # torch's own argument checks, e.g. nesterov without momentum
        raise UserError(f"optimizer ({optimizer_cfg.get('_target_')}): {e}") from None


def needs_closure(optimizer) -> bool:
    """L-BFGS re-evaluates the loss several times per step, so it takes a closure (also when wrapped)."""
    if isinstance(optimizer, Lookahead):
        return needs_closure(optimizer.base)
    return isinstance(optimizer, torch.optim.LBFGS)


def _innermost(factory):
    """The optimizer class a (possibly wrapped) partial ends up calling."""
    while "base" in getattr(factory, "keywords", {}):
        factory = factory.keywords["base"]
    return getattr(factory, "func", factory)


def _takes_weight_decay(factory) -> bool:
    return "weight_decay" in inspect.signature(_innermost(factory)).parameters
