"""TensorBoardLogger: scalars, an image grid and the HParams record of a run."""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from trainkit import metrics as M
from trainkit.engine.callbacks.base import Callback
from trainkit.status import Status

# The HParams tab's session status for each way a run ends (an interrupted run may be resumed:
# TensorBoard has no 'paused', so it stays unknown).
SESSION_STATUS = {Status.COMPLETED: "STATUS_SUCCESS", Status.INTERRUPTED: "STATUS_UNKNOWN", Status.DIVERGED: "STATUS_FAILURE",
                  Status.CRASHED: "STATUS_FAILURE"}


class TensorBoardLogger(Callback):
    """Writes the run's curves; its hyperparameters go in at the start, so the HParams tab lists
    every run of a sweep (unfinished ones too), and the session's end status at the end."""

    order, state_key = 20, "tensorboard"  # before the checkpoints: see base.Callback.order

    def __init__(self, log_dir: Path, log_every_n_steps: int, image_grid: int = 0, hparams: dict | None = None):
        self.log_dir = Path(log_dir)
        self.every = max(1, int(log_every_n_steps))
        self.image_grid = int(image_grid)
        self.hparams = hparams or {}
        self.status = Status.CRASHED  # until the loop says how the fit ended
        self.writer: SummaryWriter | None = None

    def on_fit_start(self, trainer) -> None:
        # purge_step drops anything a killed run logged after the checkpoint it resumes from,
        # so resumed curves have neither gaps nor duplicated steps.
        purge = trainer.global_step + 1 if trainer.global_step > 0 else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)
        if trainer.global_step == 0:
            self.log_hparams()
            if self.image_grid:
                self.log_image_grid(trainer)

    def log_hparams(self) -> None:
        """Only the session's start record, no experiment summary: TensorBoard then builds the
        HParams table from all runs together (the union of their columns). An experiment summary
        in each run would make it take one run's columns at random and hide the others'."""
        if self.hparams:
            _, session_start, _ = hparams_summary(self.hparams, {})
            self.writer.file_writer.add_summary(session_start)

    def log_image_grid(self, trainer) -> None:
        from trainkit.data.image_grid import make_grid_with_labels

        images, labels = trainer.data.sample_train_batch(self.image_grid)
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

    def on_test_end(self, trainer, results: dict) -> None:
        """Test metrics and the best monitored value as scalars: the HParams tab's metric columns
        show each scalar's last value, so these (and the last val/train values) are compared."""
        for name, value in results.items():
            self.writer.add_scalar(name, value, trainer.global_step)
        self.writer.flush()

    def on_fit_end(self, trainer, status: Status) -> None:
        self.status = status
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.file_writer.add_summary(session_end(self.status))
        self.writer.close()
        self.writer = None


def session_end(status: Status):
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    info = SessionEndInfo(status=Status.Value(SESSION_STATUS.get(status, "STATUS_UNKNOWN")))
    content = HParamsPluginData(session_end_info=info, version=PLUGIN_DATA_VERSION).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])


# Settings that say where things are or how they are shown, not what is trained.
NOT_HPARAMS = {"dataset.data_dir", "dataset.cache_dir", "dataset.class_names", "dataset.download", "dataset.workers",
               "trainer.progress", "trainer.log_every_n_steps", "trainer.device"}


def flat_hparams(cfg, groups: dict[str, str]) -> dict:
    """The chosen option of each group and every setting below it, for the HParams tab: a sweep
    over any knob (regularization.dropout.p included) shows up as a column."""
    from omegaconf import OmegaConf

    out: dict = dict(groups)
    container = OmegaConf.to_container(cfg, resolve=True)
    for group in ("dataset", "augmentation", "model", "norm", "activation", "init", "optimizer", "schedule",
                  "regularization", "trainer"):
        for key, value in _flatten(container.get(group) or {}, group):
            if key in NOT_HPARAMS or key.endswith(("._target_", "._partial_")):
                continue
            out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    if not container.get("regularization"):
        out["regularization"] = "none"
    else:
        out["regularization"] = ",".join(container["regularization"])
    return out


def _flatten(node, prefix):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):  # an augmentation pipeline
        yield prefix, ",".join(str(v.get("_target_", "?")).rsplit(".", 1)[-1] for v in node)
    else:
        yield prefix, node
