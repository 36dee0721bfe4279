"""optimizer=muon: torch.optim.Muon for the weight matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024) orthogonalises each weight matrix's momentum (Newton-Schulz iterations)
before the step. torch.optim.Muon takes 2-D parameters only, so a conv's (out, in, kh, kw) weight
is handed to it as a 2-D (out, in*kh*kw) alias of the same storage: Muon's in-place update of the
alias is the update of the conv weight, and before each step the alias's gradient is pointed at a
2-D view of the weight's gradient. The model is untouched (no parametrization), so state_dict keys,
init schemes and checkpoints are as with any other optimizer. Biases, normalization weights and
every other 0-/1-D parameter go to torch.optim.AdamW.

The two inner optimizers are one torch Optimizer to the run (like Lookahead): `param_groups` is
Muon's groups then AdamW's, so LR schedules scale both, and `state_dict` holds both states.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer

from trainkit.config.rules import beta_pair, one_of, positive, require, whole

ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral_unclamped")  # torch.optim.Muon's adjust_lr_fn


def matrix_order(weight: torch.Tensor) -> tuple[int, ...]:
    """The dimension order in which `weight`'s storage is contiguous: (0, 1, 2, 3) for NCHW,
    (0, 2, 3, 1) for a channels_last conv weight. Muon's result does not depend on the order of a
    matrix's columns (orthogonalisation commutes with permuting them), so any order will do."""
    if weight.ndim == 4 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
        return (0, 2, 3, 1)
    return tuple(range(weight.ndim))


def as_matrix(tensor: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """`tensor` as (rows, the rest) in `order`: a view of the same storage where the layout allows."""
    return tensor.permute(order).reshape(tensor.shape[0], -1)


class MuonWithAdamW(Optimizer):
    # Optimizer.__init__ is not called on purpose: the groups and state stay the inner optimizers'
    # own, so there is one source of truth for the learning rates the schedules write.

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.1, adjust_lr_fn: str | None = None, adamw_lr: float = 1e-3,
                 adamw_betas=(0.9, 0.95), adamw_eps: float = 1e-8):
        # lr, momentum and weight_decay have the rules of every optimizer's (config/check.py: TARGET_RULES).
        require(whole(1), "optimizer.ns_steps", ns_steps)
        require(one_of(*ADJUST_LR_FNS), "optimizer.adjust_lr_fn", adjust_lr_fn)
        require(positive, "optimizer.adamw_lr", adamw_lr)
        require(beta_pair, "optimizer.adamw_betas", adamw_betas)
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        matrix_groups, other_groups = [], []
        self.originals, self.aliases, self.orders = [], [], []
        for group in groups:
            options = {k: v for k, v in group.items() if k != "params"}
            matrices = [p for p in group["params"] if p.ndim >= 2]
            others = [p for p in group["params"] if p.ndim < 2]
            if matrices:
                orders = [matrix_order(p) for p in matrices]
                aliases = [nn.Parameter(as_matrix(p.detach(), o)) for p, o in zip(matrices, orders)]
                if any(a.data_ptr() != p.data_ptr() or not a.is_contiguous() for a, p in zip(aliases, matrices)):
                    raise ValueError("optimizer=muon: a weight whose layout has no 2-D view (neither contiguous nor channels_last)")
                self.orders += orders
                self.originals += matrices
                self.aliases += aliases
                matrix_groups.append({**options, "params": aliases})
            if others:
                other_groups.append({**options, "params": others})
        if not matrix_groups:
            raise ValueError("optimizer=muon: the model has no weight matrix (no parameter with 2 or more dimensions)")
        self.muon = torch.optim.Muon(matrix_groups, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                     weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn)
        # AdamW's groups keep their own weight_decay (0 for biases and norms), at AdamW's learning rate.
        for group in other_groups:
            group.setdefault("weight_decay", weight_decay)
        self.adamw = torch.optim.AdamW(other_groups or [{"params": []}], lr=adamw_lr, betas=tuple(adamw_betas),
                                       eps=adamw_eps, weight_decay=weight_decay) if other_groups else None
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}

    @property
    def inner(self) -> list[Optimizer]:
        return [self.muon] + ([self.adamw] if self.adamw is not None else [])

    @property
    def param_groups(self) -> list[dict]:
        # Whoever reads the groups next (GradScaler.unscale_, a finite check) sees the matrices' gradients.
        self._link_gradients()
        return [group for optimizer in self.inner for group in optimizer.param_groups]

    def _link_gradients(self) -> None:
        """Each alias's gradient is a 2-D view of its weight's (the same storage, no copy)."""
        for alias, weight, order in zip(self.aliases, self.originals, self.orders):
            alias.grad = None if weight.grad is None else as_matrix(weight.grad, order)

    @property
    def defaults(self) -> dict:
        return self.muon.defaults

    @property
    def state(self):
        return {k: v for optimizer in self.inner for k, v in optimizer.state.items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._link_gradients()
        for optimizer in self.inner:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for alias, weight in zip(self.aliases, self.originals):
            alias.grad = None
        for optimizer in self.inner:
            optimizer.zero_grad(set_to_none=set_to_none)
        for weight in self.originals:
            if weight.grad is not None:
                weight.grad = None if set_to_none else weight.grad.zero_()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])

    def __repr__(self) -> str:
        return f"MuonWithAdamW(muon={len(self.aliases)} matrices, adamw={sum(len(g['params']) for g in self.param_groups) - len(self.aliases)} tensors)"
