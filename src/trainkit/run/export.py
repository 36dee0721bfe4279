"""A run's model as a file that loads without trainkit: TorchScript, or ONNX (pip install 'trainkit[onnx]').

The exported graph takes what a user has, uint8 images N x C x H x W at the run's size, and
returns logits: the run's normalization (mean/std or its fitted ZCA) is inside it. A JSON file
beside it records the class names and the input it expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainkit.atomic import atomic_write_bytes, atomic_write_text
from trainkit.errors import UserError, allowed
from trainkit.run.load import LoadedRun

FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}


class WithPreprocessing(torch.nn.Module):
    """uint8 images -> logits: the run's preprocessing, then its model."""

    def __init__(self, preprocess: torch.nn.Module, model: torch.nn.Module):
        super().__init__()
        self.preprocess, self.model = preprocess, model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))


def export(loaded: LoadedRun, fmt: str, out: Path | None = None) -> tuple[Path, Path]:
    """(model file, its JSON description), written atomically."""
    if fmt not in FORMATS:
        raise allowed("--format", fmt, ", ".join(FORMATS))
    base = out or ((loaded.run_dir or loaded.checkpoint.parent) / "export" / "model")
    path = Path(str(base).removesuffix(FORMATS[fmt]) + FORMATS[fmt])
    wrapped = WithPreprocessing(loaded.preprocess.normalize.cpu(), loaded.model.cpu()).eval()
    spec = loaded.spec
    example = torch.randint(0, 256, (2, spec.in_channels, spec.image_size, spec.image_size), dtype=torch.uint8)
    data = torchscript_bytes(wrapped, example) if fmt == "torchscript" else onnx_bytes(wrapped, example)
    atomic_write_bytes(path, data)
    info = path.with_name(path.name + ".json")
    atomic_write_text(info, json.dumps({
        "format": fmt, "file": path.name, "checkpoint": str(loaded.checkpoint), "epoch": loaded.epoch,
        "input": {"dtype": "uint8", "layout": "NCHW", "shape": [None, spec.in_channels, spec.image_size, spec.image_size],
                  "range": "0..255, at the run's size and channels; normalization is inside the model"},
        "output": "logits (softmax for probabilities)", "class_names": loaded.class_names,
    }, indent=1))
    return path, info


def torchscript_bytes(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    import io
    import warnings

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.9+ calls TorchScript deprecated in favour of torch.export; it is still what
        # C++ (libtorch) and older deployments load, and torch.jit.load reads it with torch alone.
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(module, example), buffer)
    return buffer.getvalue()


def onnx_bytes(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    import importlib.util
    import io

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs the package(s) {', '.join(missing)}: pip install 'trainkit[onnx]'")
    import contextlib
    import tempfile

    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        path = Path(folder) / "model.onnx"
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(module, (example,), input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
        program.save(str(path))
        return path.read_bytes()
