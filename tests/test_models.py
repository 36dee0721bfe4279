"""Architecture knobs applied by every model: norm x model trains, init stds match their
formulas, every activation composes from its YAML."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm

from conftest import compose_config
from trainkit.data.datasets import load_digits_arrays
from trainkit.errors import UserError
from trainkit.components.initialization import KaimingInit, TruncatedNormalInit, XavierInit
from trainkit.components.normalization import Normalization

MODELS = ("mlp", "cnn", "resnet")
NORMS = ("batch", "layer", "instance", "group", "none", "weight", "spectral")
LAYERS = (nn.Conv2d, nn.Linear)


def compose_train(*overrides: str):
    return compose_config(*overrides, checked=True)


def build(cfg) -> nn.Module:
    model = instantiate(cfg.model)(in_channels=1, image_size=8, num_classes=10, norm=instantiate(cfg.norm),
                                   activation=instantiate(cfg.activation), dropout=0.0)
    return instantiate(cfg.init)(model)


@pytest.fixture(scope="module")
def digits_batch():
    images, labels = load_digits_arrays()
    x = torch.tensor(images[:64], dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - 0.3053) / 0.3759, torch.tensor(labels[:64])


def model_overrides(model: str) -> list[str]:
    # small widths keep the 21 combinations fast; 8 groups still divide every width
    return [f"model={model}"] + {"mlp": ["model.hidden=[64,32]"], "cnn": ["model.channels=[16,32]"],
                                 "resnet": ["model.depth=8", "model.width=8"]}[model]


# Which layer each norm puts after a conv (cnn, resnet) and after a hidden linear layer (mlp).
EXPECTED_CONV = {"batch": nn.BatchNorm2d, "layer": nn.GroupNorm, "instance": nn.InstanceNorm2d, "group": nn.GroupNorm}
EXPECTED_FLAT = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "instance": nn.LayerNorm, "group": nn.GroupNorm}
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_model_with_every_norm_has_its_modules_and_trains(model_name, norm, digits_batch):
    torch.manual_seed(0)
    cfg = compose_train(*model_overrides(model_name), f"norm={norm}")
    model = build(cfg)
    layers = [m for m in model.modules() if isinstance(m, LAYERS)]
    norms = [m for m in model.modules() if isinstance(m, NORM_LAYERS)]
    classifier = model.classifier
    if norm in EXPECTED_CONV:
        expected = (EXPECTED_FLAT if model_name == "mlp" else EXPECTED_CONV)[norm]
        # one normalization layer after every conv/linear layer but the classifier
        assert len(norms) == len(layers) - 1 and all(type(m) is expected for m in norms)
        if isinstance(norms[0], nn.GroupNorm):
            assert {m.num_groups for m in norms} == {1 if norm == "layer" else 8}
        assert all(m.bias is None for m in layers if m is not classifier)  # redundant before a mean subtraction
        assert not any(parametrize.is_parametrized(m) for m in layers)
    else:
        assert norms == []
        assert all(m.bias is not None for m in layers)
        kind = {"weight": _WeightNorm, "spectral": _SpectralNorm}.get(norm)
        for m in layers:
            if kind is None:
                assert not parametrize.is_parametrized(m)
            else:
                assert [type(p) for p in m.parametrizations.weight] == [kind]

    x, y = digits_batch
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[1:]) < losses[0], losses

    # The state_dict is plain tensors: it loads with weights_only=True into a fresh model.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(cfg)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_weight_norm_keeps_the_function_and_splits_length_and_direction():
    layer = nn.Linear(6, 4)
    weight = layer.weight.detach().clone()
    wrapped = Normalization("weight").wrap(layer)
    g, v = wrapped.parametrizations.weight.original0, wrapped.parametrizations.weight.original1
    torch.testing.assert_close(g.squeeze(1), weight.norm(dim=1))
    torch.testing.assert_close(wrapped.weight, g * v / v.norm(dim=1, keepdim=True))
    torch.testing.assert_close(wrapped.weight, weight)


def test_spectral_norm_bounds_the_largest_singular_value():
    torch.manual_seed(0)
    layer = Normalization("spectral").wrap(nn.Linear(32, 16))
    layer.train()
    x = torch.randn(4, 32)
    for _ in range(20):  # one power iteration per training forward
        layer(x)
    assert torch.linalg.matrix_norm(layer.weight.detach(), 2).item() == pytest.approx(1.0, abs=1e-3)


def test_group_norm_width_that_does_not_divide_is_a_user_error():
    with pytest.raises(UserError, match="num_groups"):
        Normalization("group", num_groups=7).conv(32)
    with pytest.raises(UserError, match="norm.kind"):
        Normalization("batchnorm")


# -- init --------------------------------------------------------------------------------------------

FAN_IN, FAN_OUT = 1000, 500  # nn.Linear(1000, 500): weight is [500, 1000]

INIT_CASES = {
    "gaussian": ([], 0.01),
    "gaussian_small": (["init.std=0.001"], 0.001),
    "truncated_normal": ([], TruncatedNormalInit.truncated_std(0.02, 2.0)),
    "truncated_normal_3": (["init.truncation=3.0"], TruncatedNormalInit.truncated_std(0.02, 3.0)),
    "xavier_uniform": (["init.distribution=uniform"], math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "xavier_normal": (["init.distribution=normal"], math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "kaiming_fan_in": (["init.mode=fan_in"], math.sqrt(2 / FAN_IN)),
    "kaiming_fan_out": (["init.mode=fan_out"], math.sqrt(2 / FAN_OUT)),
    "kaiming_uniform": (["init.distribution=uniform"], math.sqrt(2 / FAN_IN)),
    "kaiming_leaky": (["init.nonlinearity=leaky_relu", "init.negative_slope=0.2"], math.sqrt(2 / (1 + 0.04) / FAN_IN)),
    "kaiming_tanh": (["init.nonlinearity=tanh"], 5 / 3 / math.sqrt(FAN_IN)),
}


def scheme(case: str) -> str:
    return next(s for s in ("gaussian", "truncated_normal", "xavier", "kaiming") if case.startswith(s))


@pytest.mark.parametrize("case", INIT_CASES)
def test_init_std_of_a_large_layer_matches_the_formula(case):
    overrides, expected_std = INIT_CASES[case]
    torch.manual_seed(0)
    cfg = compose_train(f"init={scheme(case)}", *overrides)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    instantiate(cfg.init)(layer)
    w = layer.weight.detach()
    assert w.std().item() == pytest.approx(expected_std, rel=0.03)
    assert abs(w.mean().item()) < 0.01 * expected_std  # 7 standard errors at 500k weights
    assert torch.count_nonzero(layer.bias) == 0
    if case.startswith("truncated_normal"):
        cut = cfg.init.truncation * cfg.init.std
        assert w.abs().max().item() <= cut
        assert w.abs().max().item() > 0.98 * cut  # truncated at +- truncation * std, not wider
    if case.endswith("uniform"):
        bound = expected_std * math.sqrt(3)
        assert bound * 0.99 < w.abs().max().item() <= bound


def test_kaiming_on_a_conv_uses_channels_times_kernel_area():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    KaimingInit(mode="fan_in")(conv)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    XavierInit("normal")(conv)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9 + 128 * 9)), rel=0.03)


def test_init_leaves_norm_layers_and_prelu_alone_and_reaches_parametrised_layers():
    torch.manual_seed(0)
    cfg = compose_train("model=mlp", "model.hidden=[1000]", "norm=batch", "activation=prelu", "init=gaussian")
    model = build(cfg)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert torch.equal(bn.weight, torch.ones(1000)) and torch.equal(bn.bias, torch.zeros(1000))
    prelu = next(m for m in model.modules() if isinstance(m, nn.PReLU))
    assert prelu.weight.item() == 0.25
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)

    # weight norm: the effective weight gets the scheme's distribution
    wn = build(compose_train("model=mlp", "model.hidden=[1000]", "norm=weight", "init=kaiming"))
    first = wn.features[1]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.03)
    assert torch.count_nonzero(first.bias) == 0
    # spectral norm: the new weight is still normalised to a largest singular value of ~1
    sn = build(compose_train("model=mlp", "model.hidden=[64]", "norm=spectral", "init=xavier"))
    sn.eval()
    assert torch.linalg.matrix_norm(sn.features[1].weight.detach(), 2).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("knob, value", [("mode", "fan_avg"), ("distribution", "laplace"), ("nonlinearity", "gelu")])
def test_bad_init_knobs_are_user_errors(knob, value):
    with pytest.raises(UserError, match=f"init.{knob}"):
        (XavierInit if knob == "distribution" else KaimingInit)(**{knob: value})


# -- activation --------------------------------------------------------------------------------------

X = torch.tensor([-2.0, -0.5, 0.0, 1.5])
ACTIVATIONS = {
    "relu": (nn.ReLU, X.clamp(min=0)),
    "leaky_relu": (nn.LeakyReLU, torch.where(X > 0, X, 0.01 * X)),
    "prelu": (nn.PReLU, torch.where(X > 0, X, 0.25 * X)),
    "elu": (nn.ELU, torch.where(X > 0, X, torch.exp(X) - 1)),
    "gelu": (nn.GELU, X * 0.5 * (1 + torch.erf(X / math.sqrt(2)))),
    "tanh": (nn.Tanh, torch.tanh(X)),
    "sigmoid": (nn.Sigmoid, 1 / (1 + torch.exp(-X))),
    "silu": (nn.SiLU, X / (1 + torch.exp(-X))),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_composes_instantiates_and_computes_its_formula(name, digits_batch):
    cls, expected = ACTIVATIONS[name]
    cfg = compose_train(f"activation={name}", "model=cnn", "model.channels=[8]")
    make = instantiate(cfg.activation)
    a, b = make(), make()
    assert type(a) is cls and a is not b  # one module per layer
    torch.testing.assert_close(a(X), expected)
    model = build(cfg)
    assert sum(isinstance(m, cls) for m in model.modules()) == 2
    assert torch.isfinite(model(digits_batch[0])).all()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("norm", NORMS)
def test_one_decay_rule_for_the_optimizer_and_the_loss_penalty(model_name, norm):
    """The optimizer's decayed group and the weights the L1/L2 penalty reaches are one set: every
    conv/linear kernel (weight norm's direction, spectral norm's raw W), and no bias, norm
    parameter, PReLU slope or weight-norm gain."""
    from omegaconf import OmegaConf

    from trainkit.components.optimizers import build_optimizer
    from trainkit.components.regularization import Regularizers

    cfg = compose_train(*model_overrides(model_name), f"norm={norm}", "activation=prelu", "regularization=[l2]")
    model = build(cfg)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    in_optimizer = {id(p) for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    Regularizers(OmegaConf.create({"l1": {"weight": 1.0}})).penalty(model).backward()
    penalised = {id(p) for p in model.parameters() if p.grad is not None}
    assert in_optimizer == penalised
    names = {id(p): name for name, p in model.named_parameters()}
    kernels = {names[id(p)] for p in model.parameters() if id(p) in penalised}
    assert kernels and all(p.ndim > 1 for p in model.parameters() if id(p) in penalised)
    for layer in (m for m in model.modules() if isinstance(m, LAYERS)):
        raw = layer.parametrizations.weight if parametrize.is_parametrized(layer) else None
        kernel = (raw.original1 if norm == "weight" else raw.original) if raw is not None else layer.weight
        assert id(kernel) in penalised
        if norm == "weight":
            assert id(raw.original0) not in penalised  # the gain g is a per-unit scale
        if layer.bias is not None:
            assert id(layer.bias) not in penalised
