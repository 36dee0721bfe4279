"""TensorBoardLogger: scalars, an image grid and the HParams record of a run."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from trainkit import metrics as M
from trainkit.callbacks import Callback


class TensorBoardLogger(Callback):
    def __init__(self, log_dir: Path, log_every_n_steps: int, image_grid: int = 0):
        self.log_dir = Path(log_dir)
        self.every = max(1, int(log_every_n_steps))
        self.image_grid = int(image_grid)
        self.writer: SummaryWriter | None = None

    def on_fit_start(self, trainer) -> None:
        # purge_step drops anything a killed run logged after the checkpoint it resumes from,
        # so resumed curves have neither gaps nor duplicated steps.
        purge = trainer.global_step + 1 if trainer.global_step > 0 else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)
        if self.image_grid and trainer.global_step == 0:
            images, labels = trainer.data.sample_train_batch(self.image_grid)
            from trainkit.image_grid import make_grid_with_labels

            self.writer.add_image("train/augmented_images", make_grid_with_labels(images, labels, trainer.data.spec.class_names), 0)

    def on_step_end(self, trainer, loss) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == 1:
            self.writer.add_scalar(M.LR, trainer.step_lr, step)
            self.writer.add_scalar(M.TRAIN_LOSS_STEP, float(loss), step)
            grad_norm = getattr(trainer.regularizers, "last_grad_norm", None)
            if grad_norm is not None:
                self.writer.add_scalar(M.GRAD_NORM, float(grad_norm), step)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, trainer.global_step)
        self.writer.add_scalar(M.EPOCH, trainer.epoch, trainer.global_step)
        self.writer.flush()

    def log_final(self, trainer, hparams: dict, final_metrics: dict) -> None:
        """Test metrics as scalars, and the run's hyperparameters for the HParams tab."""
        for name, value in final_metrics.items():
            self.writer.add_scalar(name, value, trainer.global_step)
        for summary in hparams_summary(hparams, {k: v for k, v in final_metrics.items()}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def on_fit_end(self, trainer, status: str) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def flat_hparams(cfg, groups: dict[str, str]) -> dict:
    """The chosen option of each group and its scalar settings, for the HParams tab."""
    from omegaconf import OmegaConf

    out: dict = dict(groups)
    container = OmegaConf.to_container(cfg, resolve=True)
    for group in ("optimizer", "schedule", "model", "trainer", "norm"):
        for key, value in _flatten(container.get(group, {}), group):
            if isinstance(value, (int, float, str, bool)) and not key.endswith("_target_") and not key.endswith("_partial_"):
                out[key] = value
    for name in (container.get("regularization") or {}):
        out[f"regularization.{name}"] = True
    return out


def _flatten(node, prefix):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        yield prefix, str(node)
    else:
        yield prefix, node
