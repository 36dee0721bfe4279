"""regularization=[ema]: an exponential moving average of the weights, validated beside them.

torch.optim.swa_utils does the averaging (AveragedModel, get_ema_multi_avg_fn); the decay and its
warmup follow timm's ModelEmaV3: decay_t = min(decay, 1 - (1 + t / warmup_gamma) ** -warmup_power)
(not below min_decay), so early on, when the weights move fast, the average forgets them quickly.
Every epoch the EMA weights are validated too (val/acc_ema, val/loss_ema), and best.pt takes
whichever weights, raw or EMA, score better; the run's test adds test/acc_ema for the last EMA.
With several processes (DDP) every rank keeps the average of the same weights and validates its
share of the split with it (rank 0's BatchNorm statistics); rank 0 saves it.
"""

from __future__ import annotations

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainkit.engine import distributed
from trainkit.engine.callbacks.base import Callback
from trainkit.engine.loop import evaluate

SUFFIX = "ema"


class EMA(Callback):
    # Before TensorBoard (20) logs the epoch and BestCheckpoint (30) picks best.pt: both see val/*_ema.
    order, state_key = 5, "ema"

    def __init__(self, decay: float = 0.9998, warmup: bool = True, warmup_gamma: float = 1.0,
                 warmup_power: float = 0.75, min_decay: float = 0.0, update_after_step: int = 0):
        self.decay, self.warmup, self.min_decay = float(decay), bool(warmup), float(min_decay)
        self.warmup_gamma, self.warmup_power = float(warmup_gamma), float(warmup_power)
        self.update_after_step = int(update_after_step)
        self.average: AveragedModel | None = None
        self._state: dict | None = None

    def decay_at(self, step: int) -> float:
        """timm ModelEmaV3.get_decay: 0 (a copy) up to update_after_step + 1, then warmed up to `decay`."""
        step = max(0, step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if not self.warmup:
            return self.decay
        return max(min(1 - (1 + step / self.warmup_gamma) ** -self.warmup_power, self.decay), self.min_decay)

    def on_fit_start(self, trainer) -> None:
        # Buffers too (use_buffers): the BN statistics are averaged with the weights, as in timm.
        self.average = AveragedModel(trainer.model, use_buffers=True)
        if self._state is not None:
            self.average.load_state_dict(self._state)
            self._state = None
        trainer.averaged[SUFFIX] = self.average.module

    def on_step_end(self, trainer, loss) -> None:
        self.average.multi_avg_fn = get_ema_multi_avg_fn(self.decay_at(trainer.global_step))
        self.average.update_parameters(trainer.model)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        distributed.share_buffers_of_rank_zero(self.average.module)
        val = evaluate(self.average.module, trainer.data.val, trainer.data.to_device, trainer.device, trainer.amp_dtype,
                       "val", trainer.limit_val_batches)
        metrics.update({f"{k}_{SUFFIX}": v for k, v in val.items()})

    def on_test_end(self, trainer, results: dict) -> None:
        distributed.share_buffers_of_rank_zero(self.average.module)
        test = evaluate(self.average.module, trainer.data.test, trainer.data.to_device, trainer.device, trainer.amp_dtype,
                        "test", trainer.limit_test_batches)
        results.update({f"{k}_{SUFFIX}": v for k, v in test.items()})

    def state_dict(self) -> dict:
        return self.average.state_dict() if self.average is not None else (self._state or {})

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state)
