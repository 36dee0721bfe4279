"""Monitors: how gradients and activations flow, logged every `log_every_n_steps` under diagnostics/.

The lectures' "babysitting" quantities, per layer: the gradient norm, the weight norm and the
update-to-weight ratio ||dw|| / ||w|| (about 1e-3 is healthy: CS231n), the share of dead ReLU
units (zero over a whole batch) and of saturated sigmoid/tanh outputs. Verdicts go to the log the
first time they trip, each with the overrides to try.

Nothing is read back per step: between log steps the callback does nothing (the activation hooks
return at once); on the step before a log step it copies the weights on the device, and on the
log step it computes every figure on the device and reads them all with one transfer. Neither torch
nor TensorBoard has such a monitor, so this is own code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from rich.markup import escape
from torch import nn

from trainkit.console import report
from trainkit.engine.callbacks.base import Callback

# An output counts as saturated where the activation's slope is under a tenth of its peak:
# sigmoid' = s(1 - s) < 0.025 and tanh' = 1 - t^2 < 0.1.
SIGMOID_SATURATED = (1 - math.sqrt(1 - 0.1)) / 2  # 0.0257: outputs below it or above 1 - it
TANH_SATURATED = math.sqrt(1 - 0.1)  # 0.949: |t| above it
HEALTHY_UPDATE_RATIO = 1e-3  # the rule of thumb (CS231n, "Babysitting the learning process")


@dataclass
class Thresholds:
    vanishing_ratio: float = 1e-2  # first layer's gradient norm under this share of the last's
    exploding_growth: float = 1e2  # the global gradient norm over this many times its first logged value
    dead_fraction: float = 0.5  # more than this share of a layer's ReLU units dead
    update_ratio_low: float = 1e-5  # median ||dw||/||w|| over the layers under this ...
    update_ratio_high: float = 1e-1  # ... or over this


@dataclass
class Verdict:
    name: str  # vanishing, exploding, dead_units, update_ratio
    step: int
    figures: str
    remedies: list[str]

    def line(self) -> str:
        return f"diagnostics: {self.name.replace('_', ' ')} at step {self.step}: {self.figures}; try {', '.join(self.remedies)}"


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layers' weight matrices and kernels, input to output (biases and norm gains left out)."""
    return [(name.removesuffix(".weight").replace(".parametrizations", "").removesuffix(".original"), p)
            for name, p in model.named_parameters() if p.ndim > 1 and p.requires_grad]


class Monitors(Callback):
    order = 25  # after the TensorBoard logger, whose writer it writes with
    state_key = "monitors"  # the verdicts so far: a resumed run does not repeat them

    def __init__(self, every: int, thresholds: Thresholds, tensorboard=None, histograms: bool = False, publish=None):
        self.every = max(1, int(every))
        self.thresholds = thresholds
        self.tensorboard = tensorboard  # the TensorBoardLogger callback (its writer), or None
        self.histograms = histograms
        self.publish = publish  # publish(name, record): into metrics.json's diagnostics
        self.verdicts: list[Verdict] = []
        self.first_grad_norm: float | None = None
        self.update_ratios: list[float] = []  # the median over layers at each log step (for the diagnosis)
        self._layers: list[tuple[str, nn.Parameter]] = []
        self._before: list[torch.Tensor] | None = None
        self._capture = False
        self._activations: dict[str, list[torch.Tensor]] = {}
        self._hooks = []

    # -- hooks ------------------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        self._layers = weight_layers(trainer.model)
        for name, module in trainer.model.named_modules():
            kind = activation_kind(module)
            if kind:
                self._hooks.append(module.register_forward_hook(self._activation_hook(name, kind)))
        self._arm(trainer.global_step + 1)

    def _activation_hook(self, name: str, kind: str):
        def hook(module, inputs, output):
            if self._capture and module.training:
                self._activations[name] = [activation_figure(kind, output.detach()), kind]
        return hook

    def _arm(self, next_step: int) -> None:
        """Before a log step: copy the weights (for the update ratio) and let the hooks record."""
        if next_step % self.every == 0 or next_step == 1:
            self._before = [p.detach().clone() for _, p in self._layers]
            self._capture = True

    def on_step_end(self, trainer, loss) -> None:
        if self._capture and self._before is not None:
            self._log_step(trainer)
            self._capture, self._before, self._activations = False, None, {}
        self._arm(trainer.global_step + 1)

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        writer = self._writer()
        if self.histograms and writer is not None:
            for name, p in self._layers:
                writer.add_histogram(f"diagnostics/weights/{name}", p.detach(), trainer.global_step)
                if p.grad is not None:
                    writer.add_histogram(f"diagnostics/gradients/{name}", p.grad.detach(), trainer.global_step)

    def on_fit_end(self, trainer, status) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- figures ----------------------------------------------------------------------------
    def _log_step(self, trainer) -> None:
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self._layers]
            grad_norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            weight_norms = torch.stack([torch.linalg.vector_norm(p.detach().float()) for _, p in self._layers])
            updates = torch.stack([torch.linalg.vector_norm((p.detach() - b).float()) for (_, p), b in zip(self._layers, self._before)])
            before_norms = torch.stack([torch.linalg.vector_norm(b.float()) for b in self._before])
            ratios = updates / before_norms.clamp_min(1e-12)
            acts = [figure for figure, _ in self._activations.values()]
            packed = torch.cat([grad_norms, weight_norms, ratios, torch.stack(acts) if acts else grad_norms[:0]]).cpu().tolist()
        n = len(self._layers)
        figures = Figures(step=trainer.global_step, names=[name for name, _ in self._layers],
                          grad=packed[:n], weight=packed[n:2 * n], ratio=packed[2 * n:3 * n],
                          activations={name: (kind, value) for (name, (_, kind)), value in zip(self._activations.items(), packed[3 * n:])})
        self._write(figures)
        self._judge(figures, trainer)

    def _writer(self):
        return getattr(self.tensorboard, "writer", None)

    def _write(self, f: Figures) -> None:
        writer = self._writer()
        if writer is None:
            return
        for name, g, w, r in zip(f.names, f.grad, f.weight, f.ratio):
            writer.add_scalar(f"diagnostics/grad_norm/{name}", g, f.step)
            writer.add_scalar(f"diagnostics/weight_norm/{name}", w, f.step)
            writer.add_scalar(f"diagnostics/update_ratio/{name}", r, f.step)
        for name, (kind, value) in f.activations.items():
            writer.add_scalar(f"diagnostics/{'dead' if kind == 'relu' else 'saturated'}/{name}", value, f.step)

    def _judge(self, f: Figures, trainer) -> None:
        t, tripped = self.thresholds, {v.name for v in self.verdicts}
        lr = trainer.step_lr
        found: list[Verdict] = []
        total = math.sqrt(sum(g * g for g in f.grad))
        if not math.isfinite(total) and trainer.scaler.is_enabled():
            return  # fp16 loss scaling: an overflowing step is skipped and the scale lowered, as designed
        if self.first_grad_norm is None and math.isfinite(total) and total > 0:
            self.first_grad_norm = total
        if len(f.grad) >= 2 and f.grad[-1] > 0 and f.grad[0] / f.grad[-1] < t.vanishing_ratio:
            found.append(Verdict("vanishing", f.step, f"the first layer's gradient norm ({f.names[0]}: {f.grad[0]:.2e}) is "
                                 f"{f.grad[0] / f.grad[-1]:.1e} x the last's ({f.names[-1]}: {f.grad[-1]:.2e}), under "
                                 f"{t.vanishing_ratio:g}", ["norm=batch", "activation=relu", "init=kaiming"]))
        if not math.isfinite(total) or (self.first_grad_norm and total > t.exploding_growth * self.first_grad_norm):
            found.append(Verdict("exploding", f.step, f"the gradient norm is {total:.3g}, {total / (self.first_grad_norm or 1):.3g} x "
                                 f"its first logged value ({self.first_grad_norm or float('nan'):.3g})",
                                 [f"optimizer.lr={lr / 10:.3g}", "'regularization=[grad_clip]'", "norm=batch"]))
        for name, (kind, value) in f.activations.items():
            if kind == "relu" and value > t.dead_fraction:
                found.append(Verdict("dead_units", f.step, f"{value:.0%} of the ReLU units after {name} are zero on the whole batch",
                                     ["activation=leaky_relu", f"optimizer.lr={lr / 10:.3g}", "init=kaiming"]))
                break
        ratios = sorted(r for r in f.ratio if math.isfinite(r))
        if ratios:
            median = ratios[len(ratios) // 2]
            self.update_ratios.append(median)
            base_lr = max(float(g.get("initial_lr", g["lr"])) for g in trainer.optimizer.param_groups)
            judged = lr >= 0.5 * base_lr  # warmup and a decayed schedule lower the ratio on purpose
            if judged and (median > t.update_ratio_high or median < t.update_ratio_low):
                high = median > t.update_ratio_high
                if median > 0:  # the LR that would bring the ratio to about 1e-3
                    remedies = [f"optimizer.lr={lr * HEALTHY_UPDATE_RATIO / median:.2g}"]
                else:  # nothing moved: zero gradients (dead or saturated units), not a small LR
                    remedies = [f"optimizer.lr={lr / 10:.2g}", "activation=leaky_relu", "norm=batch"]
                found.append(Verdict(f"update_ratio_{'high' if high else 'low'}", f.step, f"the median update/weight ratio ||dw||/||w|| is {median:.1e} "
                                     f"({'over' if high else 'under'} {t.update_ratio_high if high else t.update_ratio_low:g}; "
                                     f"about {HEALTHY_UPDATE_RATIO:g} is healthy)",
                                     remedies + ["'regularization=[grad_clip]'"] if high else remedies))
        for verdict in found:
            if verdict.name not in tripped:
                tripped.add(verdict.name)
                self.verdicts.append(verdict)
                report(f"[yellow]{escape(verdict.line())}[/]")
                if self.publish is not None:
                    self.publish("monitor", [asdict(v) for v in self.verdicts])

    def state_dict(self) -> dict:
        return {"verdicts": [asdict(v) for v in self.verdicts], "first_grad_norm": self.first_grad_norm,
                "update_ratios": list(self.update_ratios)}

    def load_state_dict(self, state: dict) -> None:
        self.verdicts = [Verdict(**v) for v in state.get("verdicts", [])]
        self.first_grad_norm = state.get("first_grad_norm")
        self.update_ratios = list(state.get("update_ratios", []))


@dataclass
class Figures:
    step: int
    names: list[str]
    grad: list[float]
    weight: list[float]
    ratio: list[float]
    activations: dict


def activation_kind(module: nn.Module) -> str | None:
    if type(module) is nn.ReLU:
        return "relu"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.Tanh):
        return "tanh"
    return None


def activation_figure(kind: str, out: torch.Tensor) -> torch.Tensor:
    """relu: the share of units (features, or conv channels) zero on every image and position of
    the batch; sigmoid/tanh: the share of outputs in the flat tails."""
    if kind == "relu":
        per_unit = out.transpose(0, 1).reshape(out.shape[1], -1) if out.ndim > 1 else out[None]
        return (per_unit.amax(dim=1) <= 0).float().mean()
    if kind == "sigmoid":
        return ((out < SIGMOID_SATURATED) | (out > 1 - SIGMOID_SATURATED)).float().mean()
    return (out.abs() > TANH_SATURATED).float().mean()
