"""Transfer learning: a model's blocks counted from the head, and which of them a fine-tune trains.

torch and torchvision have no notion of a network's blocks (timm keeps a hand-written matcher per
architecture), so this is our own: walking down through the containers (Sequential, ModuleList,
ModuleDict), every other module that holds parameters is one block, and a normalization layer
that follows a block joins it (a conv and its BN are one unit). The last block is the head.
For trainkit's models and torchvision's CNNs this gives the units one would name by hand
(resnet18: conv1, layer1.0 ... layer4.1, fc); for a ViT the whole encoder is one block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trainkit.errors import allowed

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
MODES = ("linear_probe", "last_n", "full")


@dataclass
class Block:
    name: str
    modules: list[nn.Module] = field(default_factory=list)
    own_parameters: bool = False  # the root's or a container's direct parameters (a ViT's class token)

    def parameters(self):
        for module in self.modules:
            yield from (module.parameters(recurse=False) if self.own_parameters else module.parameters())


def blocks(model: nn.Module) -> list[Block]:
    """The model's blocks in order, input side first; the last one is the head."""
    found: list[Block] = []

    def walk(module: nn.Module, prefix: str) -> None:
        if any(True for _ in module.parameters(recurse=False)):
            found.append(Block(prefix or "(root)", [module], own_parameters=True))
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if not any(True for _ in child.parameters()):
                continue
            if isinstance(child, CONTAINERS):
                walk(child, path)
            elif isinstance(child, NORMS) and found and not found[-1].own_parameters:
                found[-1].modules.append(child)
            else:
                found.append(Block(path, [child]))

    walk(model, "")
    return found


def head_name(model: nn.Module) -> str:
    return blocks(model)[-1].name


@dataclass
class FineTune:
    """What a fine-tune trains: the blocks from the head down, each with its LR factor."""

    mode: str
    trained: list[Block]  # head first
    frozen: list[Block]
    lr_scales: dict[nn.Parameter, float]
    frozen_bn: int

    def describe(self) -> str:
        factors = sorted({round(s, 6) for s in self.lr_scales.values()}, reverse=True)
        lrs = "" if factors == [1.0] else f"; LR x{factors[0]:g} at the head down to x{factors[-1]:g}"
        frozen = (f"; frozen: {len(self.frozen)} blocks ({', '.join(b.name for b in self.frozen[:3])}"
                  f"{', ...' if len(self.frozen) > 3 else ''})" if self.frozen else "")
        bn = f"; {self.frozen_bn} BatchNorm layers keep their running statistics" if self.frozen_bn else ""
        return (f"finetune: {self.mode}, training {len(self.trained)} blocks "
                f"({', '.join(b.name for b in self.trained[:3])}{', ...' if len(self.trained) > 3 else ''}){lrs}{frozen}{bn}")


def apply_finetune(model: nn.Module, mode: str, n: int = 1, lr_decay: float = 1.0, freeze_bn: bool = False) -> FineTune:
    """Freeze what `mode` leaves out; give each trained block `lr_decay` ** (its depth below the head)
    as an LR factor (discriminative fine-tuning, Howard & Ruder 2018)."""
    found = blocks(model)
    head, body = found[-1], found[:-1]
    if mode == "linear_probe":
        below = 0
    elif mode == "last_n":
        if not body or not 1 <= n <= len(body):
            raise allowed("finetune.n", n, f"a whole number from 1 to {len(body)}: the model has {len(body)} blocks below "
                          f"its head ({head.name}), from {body[0].name if body else '-'} to {body[-1].name if body else '-'}")
        below = n
    else:
        below = len(body)
    trained = [head] + body[len(body) - below:][::-1]
    frozen = body[:len(body) - below]
    for block in frozen:
        for p in block.parameters():
            p.requires_grad_(False)
    scales = {p: lr_decay ** depth for depth, block in enumerate(trained) for p in block.parameters()}
    still = [m for block in frozen for module in block.modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if freeze_bn:
        still += [m for block in trained for module in block.modules for m in module.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in still:
        bn.register_forward_pre_hook(use_running_statistics)
    return FineTune(mode, trained, frozen, scales, len(still))


def use_running_statistics(module: nn.Module, args) -> None:
    """A frozen BatchNorm normalises with its stored statistics and leaves them as they are, also
    while the rest of the model trains (the loop's model.train() would switch it back)."""
    module.training = False


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A stem conv's weight for another number of input channels (timm's adapt_input_conv rule):
    summed to one channel, or repeated and rescaled so the response to a grey image is unchanged."""
    source = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-channels // source)
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (source / channels)
