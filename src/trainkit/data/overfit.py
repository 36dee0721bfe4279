"""The overfit check (`debug=overfit`): can the model memorise a few fixed batches?

A model, loss and data pipeline that work drive the training loss on a handful of images, the
same ones every epoch, to about 0 and get every one of them right; if they cannot, something is
broken (or the model has too little capacity), and a full run would only hide it. Lightning's
`overfit_batches` does the same; trainkit has no Lightning, so this is own code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainkit import metrics as M
from trainkit.data.sources import Splits

# "Near 0": a loss this low, with every image right, is memorised (chance on 10 classes is ln 10 = 2.3).
MEMORISED_LOSS = 0.05


def fixed_subset(splits: Splits, batches: int, batch_size: int, seed: int) -> Splits:
    """`batches` batches' worth of training images, drawn once from `seed`: the training set of
    every epoch, and the validation set too, so validation shows the same images in eval mode."""
    n = min(len(splits.train), batches * batch_size)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(splits.train))[:n])
    subset = splits.train.subset(chosen)
    return Splits(train=subset, val=subset, test=splits.test, spec=splits.spec)


@dataclass
class MemorisationVerdict:
    passed: bool
    train_acc: float
    train_loss: float
    images: int
    epochs: int

    def __str__(self) -> str:
        figures = f"train/acc {self.train_acc:.4f}, train/loss {self.train_loss:.4f}"
        if self.passed:
            return (f"overfit check: passed: the model memorised the {self.images} images in {self.epochs} epochs "
                    f"({figures}: accuracy 1 and loss <= {MEMORISED_LOSS:g})")
        return (f"overfit check: FAILED: after {self.epochs} epochs on the same {self.images} images, {figures} "
                f"(memorised needs accuracy 1 and loss <= {MEMORISED_LOSS:g}): the model cannot memorise them; "
                "look for a bug in the model, the loss or the data, or give the model more capacity or epochs")

    def as_record(self) -> dict:
        return {"passed": self.passed, M.TRAIN_ACC: self.train_acc, M.TRAIN_LOSS: self.train_loss,
                "images": self.images, "epochs": self.epochs, "max_loss": MEMORISED_LOSS}


def memorisation_verdict(last_epoch: dict, images: int, epochs: int) -> MemorisationVerdict:
    """Passed when the last epoch's training metrics show every image right and the loss near 0."""
    acc, loss = float(last_epoch.get(M.TRAIN_ACC, float("nan"))), float(last_epoch.get(M.TRAIN_LOSS, float("nan")))
    return MemorisationVerdict(passed=acc == 1.0 and loss <= MEMORISED_LOSS, train_acc=acc, train_loss=loss,
                               images=images, epochs=epochs)
