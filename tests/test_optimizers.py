"""Optimizers: each config's first steps against its update rule written out by hand,
Lookahead's slow weights, L-BFGS on a full-batch convex problem, parameter groups, checkpoints."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainkit.configs
from trainkit.errors import UserError
from trainkit.components.lookahead import Lookahead
from trainkit.components.optimizers import build_optimizer, needs_closure
from trainkit.components.schedules import build_schedule

CONFIGS = Path(trainkit.configs.__file__).parent
OPTIMIZERS = sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml"))
BASES = sorted(p.stem for p in (CONFIGS / "optimizer" / "base").glob("*.yaml"))
WRAPPERS = ("lookahead", "ranger")

W0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
GRADS = [torch.tensor(g, dtype=torch.float64) for g in
         ([0.1, -0.3, 0.2], [-0.2, 0.4, 0.05], [0.3, 0.1, -0.1], [0.05, -0.05, 0.2],
          [-0.1, -0.2, 0.3], [0.2, 0.2, -0.2], [0.1, -0.4, 0.1], [-0.3, 0.1, 0.0])]


pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(W0.clone())


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 8),
                         nn.LayerNorm(8), nn.Linear(8, 3))


# -- update rules, written from each method's definition ---------------------------------------------

def reference_trajectory(name: str, h, grads) -> list[torch.Tensor]:
    """The weights after each step, for the hyperparameters h of the composed config."""
    w = W0.clone()
    lr = h.lr
    out, m, v, total_sq = [], torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), None
    mu_product = 1.0
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            w = w - lr * g
        elif name in ("momentum", "nesterov"):
            rho = h.momentum
            v = g.clone() if t == 1 else rho * v + g  # torch starts the velocity at the first gradient
            w = w - lr * (g + rho * v if name == "nesterov" else v)
        elif name == "adagrad":
            total_sq = (torch.full((3,), h.initial_accumulator_value, dtype=torch.float64) if total_sq is None else total_sq) + g * g
            w = w - lr * g / (total_sq.sqrt() + h.eps)
        elif name == "rmsprop":
            rho = h.alpha  # the decay rate
            v = rho * v + (1 - rho) * g * g
            w = w - lr * g / (v.sqrt() + h.eps)
        elif name in ("adam", "adamw"):
            b1, b2 = h.betas
            if name == "adamw":
                w = w * (1 - lr * h.weight_decay)  # decoupled: before and apart from the adaptive step
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            w = w - lr * m_hat / (v_hat.sqrt() + h.eps)
        elif name == "nadam":
            b1, b2 = h.betas
            psi = h.momentum_decay
            mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
            mu_product *= mu_t
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            denom = (v / (1 - b2 ** t)).sqrt() + h.eps
            w = w - lr * (1 - mu_t) / (1 - mu_product) * g / denom - lr * mu_next / (1 - mu_product * mu_next) * m / denom
        elif name == "radam":
            b1, b2 = h.betas
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1 ** t)
            rho_inf = 2 / (1 - b2) - 1
            rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
            if rho_t > 5:  # the variance of the adaptive step is tractable: rectify it
                r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                w = w - lr * m_hat * r * math.sqrt(1 - b2 ** t) / (v.sqrt() + h.eps)
            else:  # early steps: momentum SGD on the bias-corrected average
                w = w - lr * m_hat
        else:
            raise AssertionError(name)
        out.append(w.clone())
    return out


def run_steps(optimizer, param, grads) -> list[torch.Tensor]:
    out = []
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
        out.append(param.detach().clone())
    return out


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam"])
def test_first_steps_follow_the_update_rule(compose_train, name):
    cfg = compose_train(f"optimizer={name}")
    model = Tiny()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    steps = 8 if name == "radam" else 3  # RAdam rectifies from step 6 on (rho_t > 5 with b2 = 0.999)
    got = run_steps(optimizer, model.w, GRADS[:steps])
    want = reference_trajectory(name, cfg.optimizer, GRADS[:steps])
    # The very first step, in numbers, for the simplest cases.
    if name in ("sgd", "momentum", "nesterov"):
        rho = cfg.optimizer.get("momentum", 0.0)
        first = W0 - cfg.optimizer.lr * GRADS[0] * (1 + rho if name == "nesterov" else 1)
        torch.testing.assert_close(got[0], first, rtol=0, atol=1e-15)
    for step, (g, w) in enumerate(zip(got, want), start=1):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=f"{name}, step {step}")
    assert not torch.equal(got[-1], W0)


def test_radam_first_step_is_a_plain_sgd_step(compose_train):
    cfg = compose_train("optimizer=radam")
    model = Tiny()
    got = run_steps(build_optimizer(cfg.optimizer, model, cfg.regularization), model.w, GRADS[:1])
    torch.testing.assert_close(got[0], W0 - cfg.optimizer.lr * GRADS[0], rtol=0, atol=1e-15)


def test_lbfgs_first_step_without_line_search_is_a_scaled_gradient_step(compose_train):
    # The first direction is -g; its length is lr * min(1, 1 / sum|g|) (torch's conservative start).
    cfg = compose_train("optimizer=lbfgs", "optimizer.line_search_fn=null", "optimizer.max_iter=1", "optimizer.lr=0.5")
    model = Tiny()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    target = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    def closure():
        optimizer.zero_grad()
        loss = 0.5 * ((model.w - target) ** 2).sum()
        loss.backward()
        return loss

    g = W0 - target
    optimizer.step(closure)
    torch.testing.assert_close(model.w.detach(), W0 - 0.5 * min(1.0, 1.0 / g.abs().sum().item()) * g)


# -- Lookahead --------------------------------------------------------------------------------------------

def test_lookahead_slow_weights_follow_the_rule_every_k_steps(compose_train):
    k, alpha, lr = 3, 0.4, 0.1
    cfg = compose_train("optimizer=lookahead", "optimizer/base=sgd", f"optimizer.k={k}", f"optimizer.alpha={alpha}",
                        f"optimizer.base.lr={lr}")
    model = Tiny()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.base, torch.optim.SGD)
    curvature = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)  # f(w) = 1/2 sum(c w^2), grad c * w

    slow, fast = W0.clone(), W0.clone()
    for t in range(1, 3 * k + 2):
        model.w.grad = curvature * model.w.detach()
        optimizer.step()
        fast = fast - lr * curvature * fast
        if t % k == 0:
            slow = slow + alpha * (fast - slow)
            fast = slow.clone()
            torch.testing.assert_close(optimizer.slow[0], slow, rtol=0, atol=1e-15)
        torch.testing.assert_close(model.w.detach(), fast, rtol=0, atol=1e-15, msg=f"step {t}")
    # Between syncs the slow weights stay where the last sync left them.
    torch.testing.assert_close(optimizer.slow[0], slow, rtol=0, atol=1e-15)
    assert optimizer.fast_steps == 3 * k + 1


def test_lookahead_shares_its_parameter_groups_with_the_base_so_schedules_reach_it(compose_train):
    cfg = compose_train("optimizer=ranger", "schedule=cosine")
    model = small_model()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    assert isinstance(optimizer.base, torch.optim.RAdam) and optimizer.k == 6
    schedule = build_schedule(cfg.schedule, optimizer, steps_per_epoch=4, epochs=2)
    optimizer.load_state_dict(optimizer.state_dict())  # the base swaps its group dicts on load
    for _ in range(3):
        one_training_step(optimizer, model)
        schedule.step_batch()
    assert optimizer.param_groups is optimizer.base.param_groups
    expected = cfg.optimizer.base.lr / 2 * (1 + math.cos(math.pi * 3 / 8))
    assert optimizer.base.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)


def saved_and_loaded(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_lookahead_state_round_trips_through_a_weights_only_checkpoint(compose_train):
    cfg = compose_train("optimizer=lookahead", "optimizer/base=adam", "optimizer.k=4")
    x, y = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3

    def train(model, optimizer, steps):
        model.train()
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    torch.manual_seed(0)
    model = small_model()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    train(model, optimizer, 6)  # mid-way between syncs, so both fast and slow weights matter
    checkpoint = saved_and_loaded({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    train(model, optimizer, 7)

    resumed = small_model()
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = build_optimizer(cfg.optimizer, resumed, cfg.regularization)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert resumed_optimizer.fast_steps == 6
    train(resumed, resumed_optimizer, 7)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.slow, resumed_optimizer.slow):
        assert torch.equal(a, b)


@pytest.mark.parametrize("key,value", [("k", 0), ("k", 2.5), ("alpha", 0.0), ("alpha", 1.5)])
def test_lookahead_rejects_impossible_values(compose_train, key, value):
    cfg = compose_train("optimizer=lookahead", f"optimizer.{key}={value}")
    with pytest.raises(UserError, match=rf"optimizer\.{key}={value!r}"):
        build_optimizer(cfg.optimizer, small_model(), cfg.regularization)


# -- L-BFGS -------------------------------------------------------------------------------------------------

def digits_full_batch():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(digits.target)


def test_lbfgs_20_iterations_beat_sgd_20_epochs_on_full_batch_softmax_regression(compose_train):
    x, y = digits_full_batch()
    torch.manual_seed(0)
    lbfgs_model = nn.Linear(64, 10)
    sgd_model = nn.Linear(64, 10)
    sgd_model.load_state_dict(lbfgs_model.state_dict())
    start = F.cross_entropy(lbfgs_model(x), y).item()

    cfg = compose_train("optimizer=lbfgs")
    assert cfg.optimizer.max_iter == 20  # one optimizer step is 20 L-BFGS iterations
    lbfgs = build_optimizer(cfg.optimizer, lbfgs_model, cfg.regularization)
    assert needs_closure(lbfgs)

    def closure():
        lbfgs.zero_grad()
        loss = F.cross_entropy(lbfgs_model(x), y)
        loss.backward()
        return loss

    lbfgs.step(closure)
    assert lbfgs.state[lbfgs_model.weight]["n_iter"] <= 20

    cfg = compose_train("optimizer=sgd")
    sgd = build_optimizer(cfg.optimizer, sgd_model, cfg.regularization)
    order = torch.Generator().manual_seed(0)
    for _ in range(20):
        for idx in torch.randperm(len(x), generator=order).split(64):
            sgd.zero_grad()
            F.cross_entropy(sgd_model(x[idx]), y[idx]).backward()
            sgd.step()

    with torch.no_grad():
        lbfgs_loss = F.cross_entropy(lbfgs_model(x), y).item()
        sgd_loss = F.cross_entropy(sgd_model(x), y).item()
    assert sgd_loss < start / 5  # SGD did learn
    assert lbfgs_loss < sgd_loss / 10, (lbfgs_loss, sgd_loss)


def test_lbfgs_preset_is_full_batch_constant_lr_and_keeps_its_knobs_under_optimizer(compose_train):
    # train.yaml lists trainer and schedule before optimizer, so that optimizer/lbfgs.yaml can set them.
    cfg = compose_train("optimizer=lbfgs")
    assert cfg.trainer.batch_size >= 100_000
    assert cfg.schedule._target_ == "trainkit.components.schedules.constant"
    assert cfg.optimizer._target_ == "torch.optim.LBFGS" and cfg.optimizer.lr == 1.0
    assert cfg.optimizer.line_search_fn == "strong_wolfe"
    assert cfg.augmentation.train in (None, [], {}) or len(cfg.augmentation.train) == 0
    assert compose_train("optimizer=lbfgs", "schedule=cosine").schedule._target_ == "trainkit.components.schedules.cosine"


def test_lbfgs_refuses_optimizer_coupled_weight_decay(compose_train):
    cfg = compose_train("optimizer=lbfgs", "regularization=l2")
    with pytest.raises(UserError, match="coupling"):
        build_optimizer(cfg.optimizer, small_model(), cfg.regularization)
    cfg = compose_train("optimizer=lbfgs", "regularization=l2", "regularization.l2.coupling=loss")
    assert len(build_optimizer(cfg.optimizer, small_model(), cfg.regularization).param_groups) == 1


# -- parameter groups ------------------------------------------------------------------------------------

def decay_of(optimizer, model) -> dict[str, float]:
    by_id = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lookahead"])
def test_biases_and_norm_weights_get_no_weight_decay(compose_train, name):
    cfg = compose_train(f"optimizer={name}", "regularization=l2", "regularization.l2.weight_decay=0.003")
    model = small_model()
    decay = decay_of(build_optimizer(cfg.optimizer, model, cfg.regularization), model)
    assert decay == {
        "0.weight": 0.003, "0.bias": 0.0,   # conv
        "1.weight": 0.0, "1.bias": 0.0,     # batch norm
        "3.weight": 0.003, "3.bias": 0.0,   # linear
        "4.weight": 0.0, "4.bias": 0.0,     # layer norm
        "5.weight": 0.003, "5.bias": 0.0,   # linear
    }


def test_without_the_exclusion_every_parameter_decays(compose_train):
    cfg = compose_train("optimizer=momentum", "regularization=l2", "optimizer.exclude_bias_and_norm=false")
    model = small_model()
    decay = decay_of(build_optimizer(cfg.optimizer, model, cfg.regularization), model)
    assert set(decay.values()) == {0.0005}


def test_the_optimizers_own_weight_decay_also_spares_biases_and_norm_weights(compose_train):
    # AdamW decays by default (torch's 0.01): the exclusion does not depend on regularization=l2.
    model = small_model()
    optimizer = build_optimizer(compose_train("optimizer=adamw").optimizer, model, {})
    decay = decay_of(optimizer, model)
    assert {n: d for n, d in decay.items() if d} == {"0.weight": 0.01, "3.weight": 0.01, "5.weight": 0.01}
    assert optimizer.weight_decay_summary == ("weight decay: 0.01 (optimizer.weight_decay; decoupled, w <- w - lr * wd * w) "
                                              "on 3 weight tensors, 7 bias/norm tensors exempt")
    cfg = compose_train("optimizer=lookahead", "optimizer/base=adamw", "optimizer.base.exclude_bias_and_norm=false")
    assert set(decay_of(build_optimizer(cfg.optimizer, model, cfg.regularization), model).values()) == {0.01}


def test_l2_in_the_loss_turns_the_optimizers_decay_off(compose_train):
    # Otherwise AdamW's own 0.01 would decay the weights a second time.
    cfg = compose_train("optimizer=adamw", "regularization=l2", "regularization.l2.coupling=loss")
    model = small_model()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    assert set(decay_of(optimizer, model).values()) == {0.0}
    assert optimizer.weight_decay_summary == ("weight decay: in the loss (regularization.l2.coupling=loss, 0.0005 * ||w||^2 / 2 "
                                              "on 3 weight tensors); the optimizer's own decay is off")


def test_weight_norm_gains_are_exempt_like_norm_weights(compose_train):
    from trainkit.components.normalization import Normalization

    model = nn.Sequential(Normalization("weight").wrap(nn.Linear(6, 4)))
    cfg = compose_train("optimizer=sgd", "regularization=l2", "regularization.l2.weight_decay=0.1")
    decay = decay_of(build_optimizer(cfg.optimizer, model, cfg.regularization), model)
    assert decay == {"0.bias": 0.0, "0.parametrizations.weight.original0": 0.0,  # g, a per-unit gain
                     "0.parametrizations.weight.original1": 0.1}  # v, the direction


# -- every config composes and trains ------------------------------------------------------------------

def one_training_step(optimizer, model) -> None:
    x, y = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    if needs_closure(optimizer):
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


@pytest.mark.parametrize("overrides", [[f"optimizer={n}"] for n in OPTIMIZERS]
                         + [["optimizer=lookahead", f"optimizer/base={b}"] for b in BASES])
def test_every_optimizer_config_composes_builds_and_steps(compose_train, overrides):
    cfg = compose_train(*overrides)
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    assert isinstance(optimizer, torch.optim.Optimizer)
    one_training_step(optimizer, model)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    saved_and_loaded(optimizer.state_dict())  # checkpointable with weights_only=True


def test_catalogue_is_complete():
    expected = {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam", "lbfgs"}
    assert set(OPTIMIZERS) == expected | set(WRAPPERS) | {"muon"}
    assert set(BASES) == expected  # every optimizer but the wrappers (and muon, two optimizers in one) can be a base


def test_closure_is_needed_for_lbfgs_also_when_wrapped(compose_train):
    cfg = compose_train("optimizer=lookahead", "optimizer/base=lbfgs")
    assert needs_closure(build_optimizer(cfg.optimizer, small_model(), cfg.regularization))
    cfg = compose_train("optimizer=ranger")
    assert not needs_closure(build_optimizer(cfg.optimizer, small_model(), cfg.regularization))
