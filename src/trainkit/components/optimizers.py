"""Optimizers from config: torch.optim partials given the model's parameter groups.

A wrapper (lookahead, ranger) is a config with a `base` sub-node, itself an optimizer
partial: Hydra instantiates it as a nested partial, and the wrapper's target
(`trainkit.components.lookahead.lookahead`) gives it the parameter groups and wraps the result.

Weight decay is set in one place, here, as timm does: the optimizer's own `weight_decay`
(or `regularization.l2` with coupling=optimizer in its stead) goes to a group of the
weights (the rule of components/weight_decay.py, which the loss penalties share), and biases,
normalization weights, PReLU slopes and weight norm's gains get a second group without decay.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from trainkit.errors import UserError
from trainkit.components.lookahead import Lookahead
from trainkit.components.muon import MuonWithAdamW
from trainkit.components.weight_decay import decayed_parameters, split_by_decay

DECOUPLED = (torch.optim.AdamW, MuonWithAdamW)  # optimizers whose weight_decay is decoupled from the gradient


@dataclass
class WeightDecay:
    """How the run decays weights: the rate, what it applies to, and in which form."""

    rate: float
    exclude_bias_and_norm: bool
    source: str  # the config key the rate comes from
    in_loss: float = 0.0  # regularization.l2.coupling=loss: the lambda of the loss's lambda/2 * sum(w^2)

    def describe(self, optimizer_class: type, groups: list[dict], penalised: int = 0) -> str:
        """The line the run prints; `penalised`: how many weight tensors the loss's L2 term covers."""
        if self.in_loss:
            return (f"weight decay: in the loss (regularization.l2.coupling=loss, {self.in_loss:g} * ||w||^2 / 2 "
                    f"on {penalised} weight tensors); the optimizer's own decay is off")
        if not self.rate:
            return f"weight decay: none ({self.source}=0)"
        form = "decoupled, w <- w - lr * wd * w" if optimizer_class in DECOUPLED else "coupled L2, wd * w added to the gradient"
        decayed = sum(len(g["params"]) for g in groups if g.get("weight_decay"))
        exempt = sum(len(g["params"]) for g in groups if not g.get("weight_decay"))
        return (f"weight decay: {self.rate:g} ({self.source}; {form}) on {decayed} weight tensors"
                + (f", {exempt} bias/norm tensors exempt" if exempt else ""))


def parameter_groups(model: nn.Module, decay: WeightDecay) -> list[dict]:
    """One group with the decay, and (when excluding) one without it for biases and norm weights."""
    if not decay.rate:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]
    decayed, exempt = split_by_decay(model)  # components/weight_decay.py: the rule the loss penalties use too
    if not decay.exclude_bias_and_norm:
        decayed, exempt = decayed + exempt, []
    groups = [{"params": decayed, "weight_decay": decay.rate}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return groups


def scaled_groups(groups: list[dict], lr_scales: dict, base_lr: float) -> list[dict]:
    """Each group split by the LR factor of its parameters (layer-wise LR decay), the full-LR groups
    first, so the LR the logs show (group 0's) is the head's."""
    split: dict[tuple[float, int], dict] = {}
    for index, group in enumerate(groups):
        for p in group["params"]:
            scale = float(lr_scales.get(p, 1.0))
            entry = split.setdefault((scale, index), {**group, "params": []})
            entry["params"].append(p)
            if scale != 1.0:
                entry["lr"] = base_lr * scale
    return [split[key] for key in sorted(split, key=lambda k: (-k[0], k[1]))]


def build_optimizer(optimizer_cfg, model: nn.Module, regularization, lr_scales: dict | None = None) -> torch.optim.Optimizer:
    """The configured optimizer, with the run's weight decay in its parameter groups; frozen parameters
    (requires_grad false: a fine-tune's) are left out, so they get no state and no decay. `lr_scales`:
    an LR factor per parameter (finetune.lr_decay)."""
    settings = OmegaConf.to_container(optimizer_cfg, resolve=True) if OmegaConf.is_config(optimizer_cfg) else dict(optimizer_cfg)
    exclude = pop_own_keys(settings)
    factory = instantiate(settings, _convert_="all")  # plain lists (betas): checkpoints load with weights_only
    optimizer_class = innermost(factory)
    decay = weight_decay(factory, regularization, exclude)
    groups = parameter_groups(model, decay)
    if lr_scales and any(scale != 1.0 for scale in lr_scales.values()):
        groups = scaled_groups(groups, lr_scales, base_lr(factory))
    if not takes_weight_decay(factory):  # L-BFGS: no weight_decay, and one parameter group only
        groups = [{"params": [p for g in groups for p in g["params"]]}]
    try:
        optimizer = factory(groups)
    except (ValueError, TypeError, RuntimeError) as e:  # torch's own argument checks: nesterov without momentum, fused with foreach
        raise UserError(f"optimizer ({settings.get('_target_')}): {e}") from None
    optimizer.weight_decay_summary = decay.describe(optimizer_class, groups, sum(1 for _ in decayed_parameters(model)))
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    if frozen:
        optimizer.weight_decay_summary += f"; {frozen} frozen tensors left out (no optimizer state, no decay)"
    return optimizer


def pop_own_keys(settings: dict) -> bool:
    """Remove trainkit's own keys from an optimizer config (and its wrapped base); returns the
    exclusion setting, the innermost optimizer's (where weight_decay lives) winning."""
    exclude = settings.pop("exclude_bias_and_norm", True)
    if isinstance(settings.get("base"), dict):
        inner = settings["base"].get("exclude_bias_and_norm", exclude)
        pop_own_keys(settings["base"])
        exclude = inner
    return bool(exclude)


def weight_decay(factory, regularization, exclude: bool) -> WeightDecay:
    """The decay rate: regularization.l2's when it is coupled through the optimizer, none when
    l2 is added to the loss (so decay is not applied twice), else the optimizer's own."""
    l2 = regularization.get("l2") if regularization else None
    if l2 is not None and l2.coupling == "optimizer":
        if not takes_weight_decay(factory):
            raise UserError(f"regularization.l2.coupling='optimizer' is not allowed with {innermost(factory).__name__}, "
                            "which has no weight decay: use regularization.l2.coupling=loss")
        return WeightDecay(float(l2.weight_decay), exclude, "regularization.l2.weight_decay")
    if l2 is not None:
        return WeightDecay(0.0, exclude, "regularization.l2.weight_decay", in_loss=float(l2.weight_decay))
    return WeightDecay(own_weight_decay(factory), exclude, "optimizer.weight_decay")


def own_weight_decay(factory) -> float:
    """The weight_decay the (innermost) optimizer would use: its config's, else torch's default."""
    factory = innermost_partial(factory)
    if "weight_decay" in getattr(factory, "keywords", {}):
        return float(factory.keywords["weight_decay"])
    parameter = inspect.signature(innermost(factory)).parameters.get("weight_decay")
    return float(parameter.default) if parameter is not None and parameter.default is not inspect.Parameter.empty else 0.0


def base_lr(factory) -> float:
    """The lr the (innermost) optimizer is configured with, else torch's default."""
    factory = innermost_partial(factory)
    if "lr" in getattr(factory, "keywords", {}):
        return float(factory.keywords["lr"])
    return float(inspect.signature(innermost(factory)).parameters["lr"].default)


def needs_closure(optimizer) -> bool:
    """L-BFGS re-evaluates the loss several times per step, so it takes a closure (also when wrapped)."""
    if isinstance(optimizer, Lookahead):
        return needs_closure(optimizer.base)
    return isinstance(optimizer, torch.optim.LBFGS)


def innermost_partial(factory):
    """The partial of the optimizer a wrapper (lookahead) wraps; the factory itself otherwise."""
    while "base" in getattr(factory, "keywords", {}):
        factory = factory.keywords["base"]
    return factory


def innermost(factory):
    """The optimizer class a (possibly wrapped) partial ends up calling."""
    factory = innermost_partial(factory)
    return getattr(factory, "func", factory)


def takes_weight_decay(factory) -> bool:
    return "weight_decay" in inspect.signature(innermost(factory)).parameters
