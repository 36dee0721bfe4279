"""Weight initialization schemes, applied to every conv and linear layer of a model.

The non-default schemes fill each conv/linear weight with torch's own `nn.init` function and
zero its bias; normalization layers (and PReLU slopes) are left as torch made them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from trainkit.errors import allowed

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class DefaultInit:
    """Keep PyTorch's own per-layer initialization."""

    def __call__(self, model: nn.Module) -> nn.Module:
        return model


class LayerInit:
    """Base of the schemes: `fill` one weight tensor in place; biases become zero."""

    def fill(self, weight: torch.Tensor) -> None:
        raise NotImplementedError

    def __call__(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if isinstance(module, LAYER_TYPES):
                self._init_layer(module)
        return model

    @torch.no_grad()
    def _init_layer(self, module: nn.Module) -> None:
        if parametrize.is_parametrized(module, "weight"):
            # Weight/spectral norm: fill a tensor of the weight's shape and assign it, which
            # sets the underlying parameters through the parametrisation's right_inverse.
            weight = torch.empty_like(module.weight)
            self.fill(weight)
            module.weight = weight
            _refresh_spectral_estimate(module)
        else:
            self.fill(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _refresh_spectral_estimate(module: nn.Module) -> None:
    # The power-iteration vectors u, v were estimated for the old weight; run the 15 warm-up
    # iterations torch's spectral_norm runs when it is applied, now for the new weight.
    parametrization_list = module.parametrizations.weight
    for p in parametrization_list:
        if hasattr(p, "_power_method"):
            p._power_method(p._reshape_weight_to_matrix(parametrization_list.original), 15)


class GaussianInit(LayerInit):
    """w ~ N(mean, std^2): a fixed std (e.g. 0.01, as in AlexNet/VGG) ignores the layer size."""

    def __init__(self, std: float = 0.01, mean: float = 0.0):
        if not std > 0:
            raise allowed("init.std", std, "a number > 0")
        self.std, self.mean = float(std), float(mean)

    def fill(self, weight: torch.Tensor) -> None:
        nn.init.normal_(weight, mean=self.mean, std=self.std)


class TruncatedNormalInit(GaussianInit):
    """w ~ N(mean, std^2) redrawn outside mean +- truncation * std.

    `truncation` is in units of std. (torch's trunc_normal_ takes absolute bounds a, b,
    which is why timm's std=0.02, a=-2, b=2 truncates nothing.) The resulting std is
    smaller than `std`: 0.880 * std at truncation 2 (see `truncated_std`)."""

    def __init__(self, std: float = 0.02, mean: float = 0.0, truncation: float = 2.0):
        super().__init__(std, mean)
        if not truncation > 0:
            raise allowed("init.truncation", truncation, "a number > 0 (in units of std)")
        self.truncation = float(truncation)

    def fill(self, weight: torch.Tensor) -> None:
        bound = self.truncation * self.std
        nn.init.trunc_normal_(weight, mean=self.mean, std=self.std, a=self.mean - bound, b=self.mean + bound)

    @staticmethod
    def truncated_std(std: float, truncation: float) -> float:
        """The std of N(0, std^2) truncated symmetrically at +- truncation * std."""
        pdf = math.exp(-truncation**2 / 2) / math.sqrt(2 * math.pi)
        mass = math.erf(truncation / math.sqrt(2))
        return std * math.sqrt(1 - 2 * truncation * pdf / mass)


class XavierInit(LayerInit):
    """Glorot & Bengio 2010: Var(w) = gain^2 * 2 / (fan_in + fan_out); uniform or normal."""

    def __init__(self, distribution: str = "uniform", gain: float = 1.0):
        if distribution not in ("uniform", "normal"):
            raise allowed("init.distribution", distribution, "uniform or normal")
        self.distribution, self.gain = distribution, float(gain)

    def fill(self, weight: torch.Tensor) -> None:
        if self.distribution == "uniform":
            nn.init.xavier_uniform_(weight, gain=self.gain)
        else:
            nn.init.xavier_normal_(weight, gain=self.gain)


class KaimingInit(LayerInit):
    """He et al. 2015: Var(w) = gain^2 / fan, gain = sqrt(2) for ReLU; uniform or normal."""

    NONLINEARITIES = ("relu", "leaky_relu", "linear", "tanh", "sigmoid", "selu")

    def __init__(self, mode: str = "fan_in", nonlinearity: str = "relu", distribution: str = "normal",
                 negative_slope: float = 0.01):
        if mode not in ("fan_in", "fan_out"):
            raise allowed("init.mode", mode, "fan_in or fan_out")
        if nonlinearity not in self.NONLINEARITIES:
            raise allowed("init.nonlinearity", nonlinearity, ", ".join(self.NONLINEARITIES))
        if distribution not in ("uniform", "normal"):
            raise allowed("init.distribution", distribution, "uniform or normal")
        self.mode, self.nonlinearity, self.distribution = mode, nonlinearity, distribution
        self.negative_slope = float(negative_slope)

    def fill(self, weight: torch.Tensor) -> None:
        init = nn.init.kaiming_uniform_ if self.distribution == "uniform" else nn.init.kaiming_normal_
        init(weight, a=self.negative_slope if self.nonlinearity == "leaky_relu" else 0.0,
             mode=self.mode, nonlinearity=self.nonlinearity)
