"""A finished run as a model you can call: trainkit.load_run(run_dir).

    run = trainkit.load_run("outputs/runs/2026-11-30_12-00-00-000000_train")
    probs = run.model(run.preprocess(["cat.png", "dog.png"])).softmax(1)
    print([run.class_names[i] for i in probs.argmax(1)])

Everything comes from the checkpoint itself (its config, data spec and preprocessing state),
so a run folder that was moved, or a lone best.pt, loads the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from trainkit.data.sources import DataSpec
from trainkit.errors import UserError

CHECKPOINT_NAMES = ("best.pt", "last.pt")


@dataclass
class LoadedRun:
    """The model (best weights, eval mode), the run's input pipeline and its class names."""

    model: torch.nn.Module
    preprocess: "ImagePreprocess"
    class_names: list[str]
    spec: DataSpec
    config: dict  # the run's composed config, as recorded in the checkpoint
    checkpoint: Path
    run_dir: Path | None  # None for a loose .pt file
    epoch: int
    global_step: int
    metrics: dict = field(default_factory=dict)  # what the checkpoint's epoch measured (val/acc ...)

    @property
    def dataset_name(self) -> str:
        return str((self.config.get("dataset") or {}).get("name"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def predict(self, images, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """[(class name, probability)] x top_k for each image, most probable first."""
        probs = self.model(self.preprocess(images)).float().softmax(1)
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [[(self.class_names[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values.tolist(), indices.tolist())]


def resolve_checkpoint(target: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) for a run folder or a .pt file."""
    path = Path(target).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate, path
        raise UserError(f"{target}: no checkpoint in this run folder (looked for checkpoints/best.pt and "
                        "checkpoints/last.pt); give a trained run's folder or a .pt file")
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        return path, run_dir
    raise UserError(f"{target}: no such run folder or checkpoint file")


def load_run(target: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The run in `target` (a run folder: its best.pt; or a checkpoint file), ready to predict."""
    from trainkit.engine.checkpoints import load_checkpoint, load_model_state

    checkpoint, run_dir = resolve_checkpoint(target)
    payload = load_checkpoint(checkpoint, map_location="cpu")
    spec = DataSpec(**payload["data_spec"])
    config = payload["config"]
    model = build_model_for(config, spec)
    load_model_state(model, payload["model"], checkpoint)
    model.to(device).eval()
    preprocess = ImagePreprocess(config, spec, payload["preprocess"], torch.device(device))
    return LoadedRun(model=model, preprocess=preprocess, class_names=list(spec.class_names), spec=spec, config=config,
                     checkpoint=checkpoint, run_dir=run_dir, epoch=int(payload["epoch"]),
                     global_step=int(payload["global_step"]), metrics=dict(payload.get("metrics") or {}))


def build_model_for(config: dict, spec: DataSpec) -> torch.nn.Module:
    """The run's architecture with fresh weights: the checkpoint's state replaces them."""
    from trainkit.components.assembly import build_model
    from trainkit.config.targets import current_targets

    cfg = OmegaConf.create(current_targets(config))
    dropout = (cfg.get("regularization") or {}).get("dropout")
    # Weights a model config would fetch or read when built (pretrained ones) are not needed:
    # the checkpoint holds the trained weights.
    for key in ("weights", "weights_path", "from_run"):
        if key in cfg.model:
            cfg.model[key] = None
    return build_model(cfg, spec, float(dropout.p) if dropout else 0.0)


class ImagePreprocess:
    """Images -> the model's input batch, exactly as the run fed its test images.

    Takes image files, PIL images, uint8 arrays (H,W,C or N,H,W,C) or a uint8 tensor N,C,H,W.
    Files and PIL images are brought to the run's channels and size the way dataset=imagefolder
    reads them (dataset.resize: center_crop or stretch); then the run's eval augmentation and
    its normalization (mean/std, or its fitted ZCA) on `device`."""

    def __init__(self, config: dict, spec: DataSpec, state: dict, device: torch.device):
        from trainkit.data.augmentation import build_pipeline
        from trainkit.data.preprocess import Preprocess

        dataset = config.get("dataset") or {}
        self.spec, self.device = spec, device
        self.resize = dataset.get("resize") or "center_crop"
        self.pipeline = build_pipeline(OmegaConf.create((config.get("augmentation") or {}).get("eval") or []),
                                       "augmentation.eval")
        self.normalize = Preprocess.from_state(dataset.get("preprocess", "standardize"), spec.mean, spec.std, state).to(device)

    def __call__(self, images) -> torch.Tensor:
        return self.normalize(self.pixels(images).to(self.device))

    def pixels(self, images) -> torch.Tensor:
        """uint8 N,C,H,W: the images at the run's size and channels, through its eval augmentation."""
        from trainkit.data.augmentation import augment

        if isinstance(images, torch.Tensor):
            return images
        arrays = [self.array(image) for image in ([images] if _single(images) else list(images))]
        return torch.stack([augment(self.pipeline, a, seed=0) for a in arrays])

    def array(self, image) -> np.ndarray:
        from trainkit.data.image_files import read_image_file, to_run_array

        if isinstance(image, (str, Path)):
            return read_image_file(Path(image), self.spec.image_size, self.spec.in_channels, self.resize)
        return to_run_array(image, self.spec.image_size, self.spec.in_channels, self.resize)


def _single(images) -> bool:
    return isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim <= 3) or hasattr(images, "getpixel")
