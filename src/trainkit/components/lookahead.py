"""Lookahead (Zhang et al. 2019): k fast steps of any optimizer, then pull the slow weights

    slow <- slow + alpha * (fast - slow);   fast <- slow

torch.optim has no Lookahead, so it is written here. Ranger is Lookahead over RAdam.
The wrapper owns no parameter groups of its own: `param_groups`, `defaults` and `state` are
the base optimizer's, so LR schedulers, GradScaler and the loop drive it like any optimizer.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from trainkit.errors import allowed


class Lookahead(Optimizer):
    # Optimizer.__init__ is not called on purpose: it would copy the base's groups into a
    # list of its own, and the base replaces its list on load_state_dict. Delegating keeps
    # one source of truth for the learning rates the schedulers write.

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Lookahead wraps a torch optimizer, got {type(optimizer).__name__}")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise allowed("optimizer.k", k, "a whole number >= 1 (fast steps between slow-weight updates)")
        if not 0.0 < float(alpha) <= 1.0:
            raise allowed("optimizer.alpha", alpha, "a number in (0, 1] (the slow weights' step size)")
        self.base = optimizer
        self.k, self.alpha = int(k), float(alpha)
        self.fast_steps = 0
        self.slow = [p.detach().clone() for p in self._params()]

    # -- the optimizer interface, delegated to the base ------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        self.base.param_groups = groups

    @property
    def defaults(self) -> dict:
        return self.base.defaults

    @property
    def state(self):
        return self.base.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.base.add_param_group(param_group)
        self.slow.extend(p.detach().clone() for p in self.base.param_groups[-1]["params"])

    def _params(self):
        return [p for group in self.base.param_groups for p in group["params"]]

    def step(self, closure=None):
        loss = self.base.step(closure) if closure is not None else self.base.step()
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            with torch.no_grad():
                for slow, fast in zip(self.slow, self._params(), strict=True):
                    slow.add_(fast - slow, alpha=self.alpha)
                    fast.copy_(slow)
        return loss

    # -- checkpoints: plain tensors and numbers, so torch.load(weights_only=True) reads them -------
    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "slow": [s.clone() for s in self.slow],
                "fast_steps": self.fast_steps, "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict["base"])
        if len(state_dict["slow"]) != len(self.slow):
            raise ValueError(f"the checkpoint has {len(state_dict['slow'])} slow tensors, this model {len(self.slow)}")
        for slow, saved in zip(self.slow, state_dict["slow"]):
            slow.copy_(saved)
        self.fast_steps = int(state_dict["fast_steps"])
        self.k, self.alpha = int(state_dict["k"]), float(state_dict["alpha"])

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, base={self.base!r})"


def lookahead(params, base, k: int = 5, alpha: float = 0.5) -> Lookahead:
    """The config's form: `base` is the inner optimizer's partial, given the parameter groups here."""
    return Lookahead(base(params), k=k, alpha=alpha)
