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
