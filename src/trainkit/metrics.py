"""Metric names, defined once: the loop logs them, checkpoints and summaries look them up."""

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TRAIN_LOSS_STEP = "train/loss_step"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
GRAD_NORM = "train/grad_norm"  # before clipping; logged when regularization=grad_clip clips by norm
LR = "lr"
EPOCH = "epoch"

MONITORABLE = (VAL_ACC, VAL_LOSS, TRAIN_ACC, TRAIN_LOSS)
MODES = ("auto", "max", "min")


def natural_mode(monitor: str) -> str:
    """Which way a metric improves: accuracy up, loss down."""
    return "min" if monitor.endswith("loss") else "max"


def resolve_mode(monitor: str, mode: str) -> str:
    """'max' or 'min' for `monitor`; 'auto' reads it off the metric's name."""
    return natural_mode(monitor) if mode == "auto" else mode
