"""regularization=[swa]: stochastic weight averaging (Izmailov et al. 2018), on torch.optim.swa_utils.

From epoch `start` on, the weights at the end of every epoch go into an equal-weight average
(AveragedModel), and SWALR takes over the learning rate from the schedule, annealing it to the
SWA learning rate. At the last epoch update_bn recomputes the averaged model's BatchNorm
statistics on the training data, the averaged weights are validated (val/acc_swa) and compete
for best.pt, and they are saved as checkpoints/swa.pt; the run's test adds test/acc_swa.
With several processes (DDP) every rank keeps the same average and the same SWA learning rate;
update_bn runs on each rank's share of the training set and the statistics are averaged over the
ranks; rank 0 saves swa.pt.
"""

from __future__ import annotations

from pathlib import Path

from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from trainkit.engine import distributed
from trainkit.engine.callbacks.base import Callback
from trainkit.engine.checkpoints import save_checkpoint
from trainkit.engine.loop import evaluate

SUFFIX = "swa"


def start_epoch(start: float, epochs: int) -> int:
    """`start` as the epoch whose end is averaged first: a whole number of epochs, or a fraction of the run."""
    return int(start) if isinstance(start, int) else max(1, int(round(start * epochs)))


class HeldSchedule:
    """The run's schedule once SWALR drives the LR: kept (and checkpointed) as it was, no longer stepped."""

    def __init__(self, schedule):
        self.schedule = schedule

    @property
    def lr(self) -> float:
        return self.schedule.lr

    def step_batch(self) -> None: ...

    def step_epoch(self, metric) -> None: ...

    def state_dict(self) -> dict:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state)


class SWA(Callback):
    # After EarlyStopping (10), which decides whether this epoch is the last; before TensorBoard (20)
    # and BestCheckpoint (30), which log and weigh val/*_swa.
    order, state_key = 15, "swa"

    def __init__(self, checkpoint_dir: Path, start: float = 0.75, lr: float | None = None, anneal_epochs: int = 2,
                 anneal_strategy: str = "cos"):
        self.path = Path(checkpoint_dir) / "swa.pt"
        self.start, self.lr, self.anneal_epochs, self.anneal_strategy = start, lr, int(anneal_epochs), anneal_strategy
        self.average: AveragedModel | None = None
        self.annealing: SWALR | None = None
        self._state: dict | None = None

    def on_fit_start(self, trainer) -> None:
        self.first = start_epoch(self.start, trainer.epochs)
        self.average = AveragedModel(trainer.model)
        if self._state is not None:
            self.average.load_state_dict(self._state["average"])
            if self._state.get("annealing") is not None:
                self.take_over_lr(trainer)
                self.annealing.load_state_dict(self._state["annealing"])
            self._state = None

    def take_over_lr(self, trainer) -> None:
        groups = trainer.optimizer.param_groups
        base = [g.get("initial_lr", g["lr"]) for g in groups]
        # Each group keeps its share of the LR (layer-wise decay); null: half the optimizer's LR.
        swa_lrs = [b * (0.5 if self.lr is None else self.lr / base[0]) for b in base]
        self.annealing = SWALR(trainer.optimizer, swa_lr=swa_lrs, anneal_epochs=self.anneal_epochs,
                               anneal_strategy=self.anneal_strategy)
        trainer.schedule = HeldSchedule(trainer.schedule)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        if trainer.epoch < self.first:
            return
        self.average.update_parameters(trainer.model)
        if self.annealing is None:
            self.take_over_lr(trainer)
        self.annealing.step()
        if trainer.epoch >= trainer.epochs or trainer.should_stop:
            self.finish(trainer, metrics)

    def finish(self, trainer, metrics: dict) -> None:
        """BN statistics for the averaged weights, then their validation: they compete for best.pt."""
        trainer.data.train.set_epoch(trainer.epoch)
        update_bn((trainer.data.to_device(images, labels)[0] for images, labels in trainer.data.train), self.average.module)
        distributed.average_batch_norm_statistics(self.average.module)
        val = evaluate(self.average.module, trainer.data.val, trainer.data.to_device, trainer.device, trainer.amp_dtype,
                       "val", trainer.limit_val_batches)
        metrics.update({f"{k}_{SUFFIX}": v for k, v in val.items()})
        trainer.averaged[SUFFIX] = self.average.module
        if not distributed.is_rank_zero():
            return
        payload = trainer.checkpoint_payload(metrics)
        payload.update(model=self.average.module.state_dict(), weights=SUFFIX)
        save_checkpoint(self.path, payload)

    def on_test_end(self, trainer, results: dict) -> None:
        if SUFFIX not in trainer.averaged:
            return
        test = evaluate(self.average.module, trainer.data.test, trainer.data.to_device, trainer.device, trainer.amp_dtype,
                        "test", trainer.limit_test_batches)
        results.update({f"{k}_{SUFFIX}": v for k, v in test.items()})

    def state_dict(self) -> dict:
        if self.average is None:
            return self._state or {}
        annealing = None
        if self.annealing is not None:  # its anneal_func is a function: left out, so checkpoints load with weights_only
            annealing = {k: v for k, v in self.annealing.state_dict().items() if k != "anneal_func"}
        return {"average": self.average.state_dict(), "annealing": annealing}

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state)
