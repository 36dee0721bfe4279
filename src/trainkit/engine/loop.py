"""The training loop: sample, forward, loss, backward, step; evaluate; callbacks for the rest."""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from trainkit import metrics as M
from trainkit.engine import distributed
from trainkit.engine.callbacks.base import CallbackList
from trainkit.engine.devices import autocast
from trainkit.components.optimizers import needs_closure
from trainkit.config.schema import TrainerConfig
from trainkit.engine.seeding import capture_rng_states, restore_rng_states
from trainkit.status import Status


def steps_per_epoch(train_loader, limit_train_batches: int | None) -> int:
    return min(len(train_loader), limit_train_batches or len(train_loader))


def epochs_to_run(epochs: int, fast_dev_run: bool) -> int:
    """trainer.fast_dev_run (debug=fast), like Lightning's: one epoch, whatever trainer.epochs says."""
    return 1 if fast_dev_run else epochs


class Diverged(Exception):
    """The loss became NaN or Inf."""


class Trainer:
    """`settings`: the trainer config (config/schema.py's TrainerConfig), typed."""

    def __init__(self, settings: TrainerConfig, *, model, optimizer, schedule, criterion, regularizers, data, device,
                 amp_dtype, callbacks: CallbackList, best=None, stop_request=None, config: dict | None = None):
        self.settings = settings
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.network = model  # what training steps call: the model, or DDP around it with several processes (fit)
        self.criterion, self.regularizers, self.data = criterion, regularizers, data
        self.device, self.amp_dtype = device, amp_dtype
        self.callbacks = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
        self.best = best  # engine.tracking.Best: the best monitored value so far, kept by BestCheckpoint
        self.averaged: dict = {}  # averaged copies of the model (ema, swa) by name, validated beside it
        self.epochs = epochs_to_run(settings.epochs, settings.fast_dev_run)
        self.monitor, self.on_nan = settings.monitor, settings.on_nan
        self.check_every = max(1, int(settings.log_every_n_steps))
        self.limit_val_batches, self.limit_test_batches = settings.limit_val_batches, settings.limit_test_batches
        self.steps_per_epoch = steps_per_epoch(data.train, settings.limit_train_batches)  # batches, not optimizer steps
        self.accumulate = settings.accumulate_grad_batches  # batches whose gradients make one optimizer step
        self.stop_request, self.config = stop_request, config or {}
        # Loss scaling keeps fp16 gradients from underflowing; bf16 and fp32 do not need it.
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.uses_closure = needs_closure(optimizer)
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.batch_in_epoch = 0
        self.should_stop = False
        self.last_metrics: dict = {}
        self.last_batch_size = 0
        self.step_lr = float(optimizer.param_groups[0]["lr"])  # the LR the latest step used (the logs show this)
        self.message: str | None = None
        self.skipped_steps = 0  # on_nan=skip: steps whose update was dropped
        self._stop_agreed = False  # several processes: a stop every rank knows of (_agree)
        self.epoch_phases: dict[str, float] = {}  # the last epoch's seconds of training and of validation (RunRecord keeps them)
        self._reset_running()

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> Status:
        """Train until `epochs`, early stopping, an interrupt or divergence; returns the status."""
        status = Status.COMPLETED
        self.network = distributed.wrap(self.model)
        self.callbacks.on_fit_start(self)
        try:
            while self.epoch < self.epochs and not self.should_stop:
                started = time.perf_counter()
                train_metrics = self.train_one_epoch()
                if self.interrupted and self.batch_in_epoch < self.steps_per_epoch:
                    status = Status.INTERRUPTED  # mid-epoch: last.pt records the step; a full epoch is validated first
                    break
                trained = time.perf_counter()
                val_metrics = self.evaluate(self.data.val, "val", self.limit_val_batches)
                self.epoch_phases = {"train": trained - started, "val": time.perf_counter() - trained}
                metrics = {**train_metrics, **val_metrics}
                self.schedule.step_epoch(metrics.get(self.monitor))
                self.epoch += 1
                self.batch_in_epoch = 0
                self.last_metrics = metrics
                self.callbacks.on_epoch_end(self, metrics)
                self._agree()
                if self.interrupted:
                    status = Status.INTERRUPTED
                    break
        except Diverged as e:
            status, self.message = Status.DIVERGED, str(e)
        except BaseException:
            status = Status.CRASHED
            raise
        finally:
            self.callbacks.on_fit_end(self, status)
        return status

    def train_one_epoch(self) -> dict:
        self.model.train()
        self.data.train.set_epoch(self.epoch)
        if self.batch_in_epoch:
            self.data.train.skip_batches(self.batch_in_epoch)
        else:
            self._reset_running()
        if self.batch_in_epoch >= self.steps_per_epoch:  # resumed after the epoch's last step: validation is left
            loss_avg, acc, _, _ = self._epoch_train_metrics()
            return {M.TRAIN_LOSS: loss_avg, M.TRAIN_ACC: acc}
        for batches in self.accumulation_windows():
            loss = self.training_step(batches)
            self.global_step += 1
            self.batch_in_epoch += len(batches)
            loss = self._agree(loss, self.last_batch_size)
            self.callbacks.on_step_end(self, loss)
            if self.interrupted or self.batch_in_epoch >= self.steps_per_epoch:
                break
        self._check_finite()
        self._agree()
        loss_avg, acc, counted, skipped = self._epoch_train_metrics()
        if counted == 0 and skipped:
            raise Diverged(f"every step of epoch {self.epoch + 1} had a non-finite loss ({skipped} skipped); "
                           "lower optimizer.lr or add regularization=[grad_clip]")
        return {M.TRAIN_LOSS: loss_avg, M.TRAIN_ACC: acc}

    def accumulation_windows(self):
        """The epoch's remaining batches, trainer.accumulate_grad_batches at a time (one list per
        optimizer step; the epoch's last list may be shorter). One batch each by default."""
        window = []
        for batch in self.data.train:
            window.append(batch)
            if len(window) == self.accumulate or self.batch_in_epoch + len(window) >= self.steps_per_epoch:
                yield window
                window = []
        if window:
            yield window

    def training_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One optimizer step on the summed gradients of `batches`; returns their mean loss.

        Each batch's loss is weighted by its share of the samples, so k batches of b give the
        gradient of one batch of k x b (BatchNorm statistics aside: they are per batch)."""
        self.step_lr = float(self.optimizer.param_groups[0]["lr"])  # before the schedule moves it on
        if self.uses_closure:
            images, labels = self.data.to_device(*batches[0])
            return self.closure_step(*self.regularizers.mix(images, labels), labels)
        total = self._samples_in_global_window(batches)
        local = sum(len(labels) for _, labels in batches)  # this process's images in the window
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=self.device)
        for i, (images, labels) in enumerate(batches):
            images, labels = self.data.to_device(images, labels)
            images, targets = self.regularizers.mix(images, labels)
            # DDP averages the gradients over the ranks at the window's last backward only.
            with self._no_gradient_sync() if i < len(batches) - 1 else contextlib.nullcontext():
                with autocast(self.device, self.amp_dtype):
                    logits = self.network(images)
                    loss = self.criterion(logits, targets) + self.regularizers.penalty(self.model)
                # A host sync per batch, only in this mode; with several processes all skip the step or none.
                if self.on_nan == "skip" and distributed.all_max([float(not torch.isfinite(loss))])[0]:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.schedule.step_batch()  # the schedule's clock stays with the step count
                    self.skipped_steps += 1
                    self._skipped_in_epoch += 1
                    return loss.detach()
                share = len(labels) * distributed.world() / total
                self.scaler.scale(loss * share if share != 1 else loss).backward()
            self._accumulate(loss.detach(), logits.detach(), labels)
            step_loss += loss.detach().float() * (len(labels) / local)
        self.last_batch_size = local
        self.scaler.unscale_(self.optimizer)
        self.regularizers.clip_gradients(self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step_batch()
        return step_loss

    def closure_step(self, images, targets, labels) -> torch.Tensor:
        """L-BFGS evaluates the loss several times per step through a closure."""
        first: dict = {}

        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(images)
            loss = self.criterion(logits, targets) + self.regularizers.penalty(self.model)
            loss.backward()
            self.regularizers.clip_gradients(self.model)
            first.setdefault("loss", loss.detach())
            first.setdefault("logits", logits.detach())
            return loss

        self.optimizer.step(closure)
        self.schedule.step_batch()
        self._accumulate(first["loss"], first["logits"], labels)
        return first["loss"]

    def _samples_in_global_window(self, batches: list) -> int:
        """The images of this optimizer step over all ranks. Each rank weights a batch's mean loss by
        local images x world / this; DDP then averages the ranks' gradients, which gives exactly the
        gradient of the global window's mean loss, also for an uneven last batch."""
        if distributed.world() == 1:
            return sum(len(labels) for _, labels in batches)
        return sum(self.data.train.batch_total(self.batch_in_epoch + i) for i in range(len(batches)))

    def _no_gradient_sync(self):
        """DDP's no_sync() for the accumulated batches before a window's last; nothing in one process."""
        no_sync = getattr(self.network, "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def evaluate(self, loader, prefix: str, limit: int | None = None) -> dict:
        distributed.share_buffers_of_rank_zero(self.model)  # the statistics rank 0 saves, on every rank
        return evaluate(self.model, loader, self.data.to_device, self.device, self.amp_dtype, prefix, limit)

    # -- bookkeeping ----------------------------------------------------------------------------
    @property
    def interrupted(self) -> bool:
        """A stop was asked for (Ctrl-C, SIGTERM); with several processes, one all of them have agreed on."""
        if distributed.world() > 1:
            return self._stop_agreed
        return self._signalled

    @property
    def _signalled(self) -> bool:
        return bool(self.stop_request and self.stop_request.requested)

    def _reset_running(self) -> None:
        self._loss_sum = torch.zeros((), dtype=torch.float64)
        self._correct = torch.zeros((), dtype=torch.long)
        self._count = 0
        self._skipped_in_epoch = 0
        self._pending_losses: list[torch.Tensor] = []
        self._pending_steps: list[int] = []
        self._diverged: Diverged | None = None

    def _accumulate(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        # Kept on the device and summed lazily: no host sync per step.
        n = labels.numel()
        self._pending_losses.append(loss.float() * n)
        self._pending_steps.append(self.global_step + 1)  # this step's number; global_step counts it after
        self._correct = self._correct.to(labels.device, non_blocking=True) + (logits.argmax(1) == labels).sum()
        self._count += n
        self.last_batch_size = n
        if len(self._pending_losses) >= self.check_every:
            self._check_finite()

    def _check_finite(self) -> None:
        """Stop on a NaN/Inf loss, naming the first bad step (checked every few steps). With several
        processes the rank that finds it stops with all others at the next step (`_agree`)."""
        if not self._pending_losses:
            return
        losses = torch.stack(self._pending_losses)
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            first_bad = int((~finite).nonzero()[0, 0])
            step = self._pending_steps[first_bad]
            self._pending_losses, self._pending_steps = [], []
            self._diverged = self._diverged or Diverged(
                f"the training loss became {float(losses[first_bad]):.4g} at step {step} (epoch {self.epoch + 1}); "
                "lower optimizer.lr, add regularization=[grad_clip], or set trainer.on_nan=skip")
            if distributed.world() == 1:
                raise self._diverged
            return
        self._loss_sum = self._loss_sum + losses.sum().double().cpu()
        self._pending_losses, self._pending_steps = [], []

    def _agree(self, loss: torch.Tensor | None = None, samples: int = 0) -> torch.Tensor | None:
        """With several processes: what one rank learnt, all learn at this same step, so all stop together
        and nothing waits for a rank that has left: a stop signal, a non-finite loss, early stopping. At
        the steps that are logged, `loss` becomes the mean over the whole global batch. One small
        all-reduce (about 0.15 ms with gloo); nothing at all in one process."""
        if distributed.world() == 1:
            return loss
        logged = loss is not None and self.global_step % self.check_every == 0
        flags = [float(self._signalled), float(self._diverged is not None), float(self.should_stop)]
        if logged:
            flags += [float(loss) * samples, float(samples)]
        stop, bad, should_stop, *loss_sum_and_count = distributed.all_sum(flags)
        self._stop_agreed = self._stop_agreed or bool(stop)
        self.should_stop = bool(should_stop)
        if bad:
            raise self._diverged or Diverged("the training loss became non-finite in another process of this run; "
                                             "lower optimizer.lr, add regularization=[grad_clip], or set trainer.on_nan=skip")
        if logged:
            loss_sum, count = loss_sum_and_count
            return torch.tensor(loss_sum / count)
        return loss

    def _epoch_train_metrics(self) -> tuple[float, float, int, int]:
        """The epoch's mean training loss and accuracy, images counted and steps skipped, over every rank.
        With several processes the sums then stay on rank 0 alone, so that its checkpoint holds the whole
        epoch's and a resume counts no rank twice."""
        loss_avg, acc = self.running_train_metrics()
        if distributed.world() == 1:
            return loss_avg, acc, self._count, self._skipped_in_epoch
        loss_sum, correct, count, skipped = distributed.all_sum(
            [float(self._loss_sum), float(self._correct), float(self._count), float(self._skipped_in_epoch)])
        self._set_running(loss_sum, int(correct), int(count), int(skipped))
        if not distributed.is_rank_zero():
            self._set_running(0.0, 0, 0, 0)
        if not count:
            return float("nan"), float("nan"), 0, int(skipped)
        return loss_sum / count, correct / count, int(count), int(skipped)

    def _set_running(self, loss_sum: float, correct: int, count: int, skipped: int) -> None:
        self._loss_sum = torch.tensor(loss_sum, dtype=torch.float64)
        self._correct = torch.tensor(correct, dtype=torch.long)
        self._count, self._skipped_in_epoch = count, skipped

    def running_train_metrics(self) -> tuple[float, float]:
        """Mean loss and accuracy of the epoch's steps so far (nan before any step counted)."""
        self._check_finite()
        if not self._count:
            return float("nan"), float("nan")
        return float(self._loss_sum) / self._count, float(self._correct) / self._count

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_payload(self, metrics: dict) -> dict:
        self._check_finite()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_in_epoch": self.batch_in_epoch,
            "running": {"loss_sum": float(self._loss_sum), "correct": int(self._correct), "count": self._count,
                        "skipped_in_epoch": self._skipped_in_epoch},
            "skipped_steps": self.skipped_steps,
            "callbacks": self.callbacks.state_dict(),
            "rng": capture_rng_states(self.device),
            "should_stop": self.should_stop,
            "metrics": dict(metrics),
            "config": self.config,
            "data_spec": asdict(self.data.spec),  # the model's sizes, so a resume can check the fit up front
            "preprocess": self.data.preprocess.state_dict(),  # the input transform (e.g. a fitted ZCA matrix)
        }

    def restore(self, payload: dict) -> None:
        """Continue exactly where `payload` (from checkpoint_payload) left off."""
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        if payload["scaler"]:  # empty when the run had no loss scaling (fp32, bf16)
            self.scaler.load_state_dict(payload["scaler"])
        self.epoch, self.global_step = payload["epoch"], payload["global_step"]
        self.batch_in_epoch = payload["batch_in_epoch"]
        self.last_metrics = payload.get("metrics", {})
        running = payload["running"]
        self._set_running(running["loss_sum"], running["correct"], running["count"], running.get("skipped_in_epoch", 0))
        if not distributed.is_rank_zero():  # rank 0's checkpoint holds every rank's sums (_epoch_train_metrics)
            self._set_running(0.0, 0, 0, 0)
        self.skipped_steps = payload.get("skipped_steps", 0)
        self.callbacks.load_state_dict(payload["callbacks"])
        self.should_stop = payload.get("should_stop", False)
        restore_rng_states(payload["rng"], self.device)


@torch.no_grad()
def evaluate(model, loader, to_device, device, amp_dtype=None, prefix: str = "val", limit: int | None = None) -> dict:
    """Mean cross-entropy and accuracy of `model` over `loader` (plain CE: no smoothing or class weights)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for images, labels in itertools.islice(loader, limit):
        images, labels = to_device(images, labels)
        with autocast(device, amp_dtype):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += labels.numel()
    # With several processes each evaluated its own share of the split: every image once, none padded.
    loss_sum, correct, count = distributed.all_sum([loss_sum.item(), correct.item(), count])
    return {f"{prefix}/loss": loss_sum / max(1, count), f"{prefix}/acc": correct / max(1, count)}
