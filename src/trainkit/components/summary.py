"""The model summary printed at the start of every run: each block's output shape and parameters.

torch has no summary of its own (torchinfo is not a dependency), so this is written here: one
forward pass of a blank batch of one, in eval mode (no BatchNorm statistic or RNG is touched),
with a hook on the last module of each block. The blocks are the units finetune.n counts.
"""

from __future__ import annotations

import torch
from torch import nn

from trainkit.components.transfer import blocks


def model_summary(model: nn.Module, in_channels: int, image_size: int) -> dict:
    """{input, output, parameters, trainable, layers: [{name, type, output, parameters, trainable}]}."""
    found = blocks(model)
    shapes: dict[str, list[int]] = {}
    hooks = []
    for block in found:
        if block.own_parameters:
            continue
        hooks.append(block.modules[-1].register_forward_hook(record_shape(shapes, block.name)))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    layers = []
    for block in found:
        params = list(block.parameters())
        layers.append({"name": block.name, "type": "+".join(type(m).__name__ for m in block.modules),
                       "output": shapes.get(block.name), "parameters": sum(p.numel() for p in params),
                       "trainable": sum(p.numel() for p in params if p.requires_grad)})
    everything = list(model.parameters())
    return {"input": [in_channels, image_size, image_size], "output": list(output.shape[1:]),
            "parameters": sum(p.numel() for p in everything),
            "trainable": sum(p.numel() for p in everything if p.requires_grad), "layers": layers}


def record_shape(shapes: dict, name: str):
    def hook(module, args, out) -> None:  # returns None: a forward hook's return value would replace the output
        if isinstance(out, torch.Tensor):
            shapes.setdefault(name, list(out.shape[1:]))
    return hook


def summary_lines(name: str, summary: dict) -> list[str]:
    """The summary as the log shows it: a header, one line per block, the totals."""
    width = max(len(layer["name"]) for layer in summary["layers"])
    lines = [f"model: {name}, input {shape(summary['input'])} -> output {shape(summary['output'])}"]
    for layer in summary["layers"]:
        frozen = "" if layer["trainable"] == layer["parameters"] else f"  ({layer['parameters'] - layer['trainable']:,} frozen)"
        lines.append(f"  {layer['name']:<{width}}  {layer['type'][:40]:<40}  {shape(layer['output']):>12}  "
                     f"{layer['parameters']:>12,}{frozen}")
    lines.append(f"  {summary['parameters']:,} parameters, {summary['trainable']:,} trainable")
    return lines


def shape(dims) -> str:
    return "x".join(map(str, dims)) if dims else "-"
