"""Pretrained weights for a new run: torchvision's (model.weights), a file (model.weights_path) or
another trainkit run (model.from_run). Every source gives the body; the head stays the new one,
sized for this dataset's classes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainkit.components.transfer import adapt_input_channels, head_name
from trainkit.config.check import OWN_KEYS
from trainkit.errors import UserError, allowed

# The keys of a model config that name where its starting weights come from, read here.
SOURCE_KEYS = OWN_KEYS["model"]
# Auxiliary heads that only training on ImageNet uses (inception_v3, googlenet); not built here.
AUX_HEADS = ("AuxLogits.", "aux1.", "aux2.")


def given_sources(model_cfg) -> dict:
    """The source keys `model_cfg` sets (none: random weights), with their values."""
    return {k: model_cfg.get(k) for k in SOURCE_KEYS if model_cfg.get(k) not in (None, "")}


def pretrained_source(model_cfg) -> str | None:
    """`model.<key>=<value>` for the source of starting weights the config names, else None (random weights)."""
    return ", ".join(f"model.{k}={v}" for k, v in given_sources(model_cfg).items()) or None


def load_pretrained(model: nn.Module, model_cfg) -> str | None:
    """Load the source `model_cfg` names into `model`; a line for the log, or None without one."""
    given = given_sources(model_cfg)
    if len(given) > 1:
        raise UserError(f"{' and '.join(f'model.{k}' for k in given)} are all set: give one source of pretrained weights")
    if not given:
        return None
    key, value = next(iter(given.items()))
    if key == "weights":
        from trainkit.components.torchvision_models import imagenet_state

        state, what = imagenet_state(model_cfg.name, value), f"torchvision's {model_cfg.name} {value}"
    elif key == "weights_path":
        state, what = read_state(Path(str(value)).expanduser()), str(value)
    else:
        state, what = run_state(Path(str(value)).expanduser())
    loaded = load_body(model, state, f"model.{key}={value}")
    return f"pretrained: {loaded} tensors from {what}; new head {head_name(model)}"


def read_state(path: Path) -> dict:
    """A state dict from a .pt/.pth file: bare, or under 'model' or 'state_dict' (a checkpoint)."""
    if not path.is_file():
        raise allowed("model.weights_path", str(path), "a file of weights (a state dict saved with torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, damaged, or pickled code that weights_only refuses
        raise allowed("model.weights_path", str(path), f"a file of weights torch.load reads with weights_only=True "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise allowed("model.weights_path", str(path), "a state dict: a dict of tensor names to tensors")
    return state


def run_state(folder: Path) -> tuple[dict, str]:
    """The weights of a trainkit run: its best.pt (or last.pt), and a description of where they come from."""
    candidates = [folder] if folder.is_file() else [folder / "checkpoints" / "best.pt", folder / "checkpoints" / "last.pt"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise allowed("model.from_run", str(folder), "the folder of a trainkit run with a checkpoint "
                      f"(checkpoints/best.pt or last.pt); {folder} has none")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise allowed("model.from_run", str(folder), f"a run whose checkpoint loads ({path}: {type(e).__name__})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise allowed("model.from_run", str(folder), f"a run whose checkpoint holds a model ({path} has no 'model')")
    config = payload.get("config") or {}
    dataset = (config.get("dataset") or {}).get("name", "?")
    return payload["model"], f"{path} (trained on {dataset}, epoch {payload.get('epoch', '?')})"


def load_body(model: nn.Module, state: dict, source: str) -> int:
    """Copy every tensor of `state` into `model` except the head's; the stem conv is fitted to the
    model's input channels. Anything else that does not fit is one UserError naming the tensors."""
    own = model.state_dict()
    head = head_name(model) + "."
    stem = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)) + "."
    state = {k: v for k, v in state.items() if not k.startswith(AUX_HEADS)}
    body, mismatched = {}, []
    for key, mine in own.items():
        if key.startswith(head) or key not in state:
            continue
        theirs = state[key]
        if theirs.shape != mine.shape and key.startswith(stem) and theirs.ndim == 4 and mine.ndim == 4 \
                and theirs.shape[0] == mine.shape[0] and theirs.shape[2:] == mine.shape[2:]:
            theirs = adapt_input_channels(theirs, mine.shape[1])
        if theirs.shape != mine.shape:
            mismatched.append(f"{key} {tuple(theirs.shape)} vs model {tuple(mine.shape)}")
        body[key] = theirs
    missing = [k for k in own if not k.startswith(head) and k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith(head)]
    problems = misfit(mismatched, missing, unexpected)
    if problems:
        raise UserError(f"{source}: the weights are of another architecture than this model: {problems}")
    model.load_state_dict({**own, **body})
    return len(body)


def misfit(mismatched: list[str], missing: list[str], unexpected: list[str]) -> str:
    """What keeps a state dict from fitting a model, in a few words ('' when it fits)."""
    parts = []
    if mismatched:
        parts.append(f"shape mismatch in {len(mismatched)} tensors: {'; '.join(mismatched[:4])}")
    if missing:
        parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors the model does not have (e.g. {', '.join(unexpected[:3])})")
    return "; ".join(parts)
