"""Schedules: the LR at every step equals the closed form, with and without warmup;
plateau's patience; checkpoints that load with weights_only; impossible values."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import trainkit.configs
from trainkit.errors import UserError
from trainkit.components.schedules import build_schedule

CONFIGS = Path(trainkit.configs.__file__).parent
SCHEDULES = sorted(p.stem for p in (CONFIGS / "schedule").glob("*.yaml"))

A0 = 0.1          # the optimizer's lr
SPE = 10          # steps per epoch
EPOCHS = 6
TOTAL = SPE * EPOCHS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def schedule_cfg(compose_train):
    return lambda name, *knobs: compose_train(f"schedule={name}", *knobs).schedule


def sgd(lr: float = A0, momentum: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=momentum)


def lr_curve(schedule, optimizer, steps: int, metrics=None, start: int = 0) -> list[float]:
    """The LR each optimizer step used, stepping like the loop: per step, then per epoch."""
    lrs = []
    for t in range(start, start + steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step_batch()
        if (t + 1) % SPE == 0:
            schedule.step_epoch(metrics[(t + 1) // SPE - 1] if metrics else 0.5)
    return lrs


# -- closed forms: main(u, T) is the LR u steps after warmup ended, T the steps after warmup -------------

def cos_anneal(start, end, pct):
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def restarts(u, first_cycle, mult, eta_min=0.0):
    length = first_cycle
    while u >= length:
        u -= length
        length *= mult
    return cos_anneal(A0, eta_min, u / length)


def onecycle(u, T, pct_start=0.3, div=25.0, final_div=1e4):
    initial, low = A0 / div, A0 / div / final_div
    rise_end = pct_start * T - 1
    if u <= rise_end:
        return cos_anneal(initial, A0, u / rise_end)
    return cos_anneal(A0, low, (u - rise_end) / (T - 1 - rise_end))


CASES = {
    # name: (knob overrides, closed form main(u, T))
    "constant": ([], lambda u, T: A0),
    "step": (["schedule.step_epochs=2", "schedule.gamma=0.5"], lambda u, T: A0 * 0.5 ** (u // (2 * SPE))),
    "multistep": (["schedule.milestones=[1.5,4]", "schedule.gamma=0.1"],
                  lambda u, T: A0 * 0.1 ** sum(u >= m * SPE for m in (1.5, 4))),
    "exponential": (["schedule.gamma=0.8"], lambda u, T: A0 * 0.8 ** (u / SPE)),
    "inverse_time": (["schedule.k=0.5"], lambda u, T: A0 / (1 + 0.5 * u / SPE)),
    "inverse_sqrt": ([], lambda u, T: A0 / math.sqrt(max(u / SPE, 1.0))),
    "linear": (["schedule.end_factor=0.0"], lambda u, T: A0 * (1 - u / T)),
    "cosine": (["schedule.eta_min=0.001"], lambda u, T: 0.001 + (A0 - 0.001) / 2 * (1 + math.cos(math.pi * u / T))),
    "cosine_restarts": (["schedule.cycle_epochs=1", "schedule.cycle_mult=2", "schedule.eta_min=0.0"],
                        lambda u, T: restarts(u, SPE, 2)),
    "onecycle": (["schedule.pct_start=0.3", "schedule.div_factor=25", "schedule.final_div_factor=1e4"], onecycle),
    "plateau": (["schedule.patience=100"], lambda u, T: A0),  # never reduces here; see the plateau tests
}

WARMUPS = {
    "none": ([], 0),
    "epochs": (["schedule.warmup_epochs=1", "schedule.warmup_start_factor=0.1"], SPE),
    "steps": (["schedule.warmup_steps=7", "schedule.warmup_start_factor=0.25"], 7),
}


def test_every_schedule_has_a_closed_form_case():
    assert set(CASES) == set(SCHEDULES)


@pytest.mark.parametrize("warmup", list(WARMUPS))
@pytest.mark.parametrize("name", list(CASES))
def test_lr_at_every_step_equals_the_closed_form(schedule_cfg, name, warmup):
    knobs, main = CASES[name]
    warmup_knobs, W = WARMUPS[warmup]
    cfg = schedule_cfg(name, *knobs, *warmup_knobs)
    start_factor = cfg.warmup_start_factor
    optimizer = sgd()
    schedule = build_schedule(cfg, optimizer, SPE, EPOCHS, mode="max")
    got = lr_curve(schedule, optimizer, TOTAL)

    T = TOTAL - W
    first = main(0, T)  # warmup rises to the LR the main schedule starts from
    want = [first * (start_factor + (1 - start_factor) * t / W) if t < W else main(t - W, T) for t in range(TOTAL)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
    if W:
        assert got[0] == pytest.approx(start_factor * first) and got[W] == pytest.approx(first)


def test_exponential_is_smooth_and_equals_gamma_per_epoch_at_whole_epochs(schedule_cfg):
    optimizer = sgd()
    schedule = build_schedule(schedule_cfg("exponential", "schedule.gamma=0.5"), optimizer, SPE, EPOCHS)
    lrs = lr_curve(schedule, optimizer, TOTAL)
    assert [lrs[e * SPE] for e in range(EPOCHS)] == pytest.approx([A0 * 0.5 ** e for e in range(EPOCHS)], rel=1e-9)
    assert lrs[SPE // 2] == pytest.approx(A0 * 0.5 ** 0.5, rel=1e-9)  # mid-epoch: between the stairs


def test_onecycle_cycles_momentum_inversely_when_the_optimizer_has_momentum(schedule_cfg):
    optimizer = sgd(momentum=0.9)
    schedule = build_schedule(schedule_cfg("onecycle"), optimizer, SPE, EPOCHS)
    momenta = []
    for _ in range(TOTAL):
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        schedule.step_batch()
    peak = int(0.3 * TOTAL) - 1
    assert momenta[0] == pytest.approx(0.95) and momenta[peak] == pytest.approx(0.85) and momenta[-1] == pytest.approx(0.95)
    plain = sgd(momentum=0.0)
    build_schedule(schedule_cfg("onecycle"), plain, SPE, EPOCHS)
    assert plain.param_groups[0]["momentum"] == 0.0  # plain SGD stays plain


def test_onecycle_holds_its_last_lr_past_the_planned_steps(schedule_cfg):
    optimizer = sgd()
    schedule = build_schedule(schedule_cfg("onecycle"), optimizer, SPE, EPOCHS)
    lrs = lr_curve(schedule, optimizer, TOTAL + 5)
    assert lrs[TOTAL:] == [lrs[TOTAL]] * 5


# -- plateau ---------------------------------------------------------------------------------------------

def plateau_lrs(schedule_cfg, metrics, mode="max", *knobs):
    optimizer = sgd()
    schedule = build_schedule(schedule_cfg("plateau", *knobs), optimizer, SPE, len(metrics), mode=mode)
    lrs = lr_curve(schedule, optimizer, SPE * len(metrics), metrics)
    return [lrs[e * SPE] for e in range(len(metrics))] + [optimizer.param_groups[0]["lr"]]  # LR during each epoch, then after


def test_plateau_reduces_after_patience_epochs_without_improvement(schedule_cfg):
    # patience 2: epochs 3 and 4 do not improve on 0.6, so the LR halves after epoch 4. The count
    # restarts: epoch 5 (0.6) is one bad epoch, epoch 6 improves, epochs 7 and 8 are two more.
    metrics = [0.5, 0.6, 0.6, 0.59, 0.6, 0.7, 0.7, 0.7, 0.7]
    lrs = plateau_lrs(schedule_cfg, metrics, "max", "schedule.patience=2", "schedule.factor=0.5")
    assert lrs == pytest.approx([A0] * 4 + [A0 / 2] * 4 + [A0 / 4] + [A0 / 4])


def test_plateau_follows_the_trainer_mode(schedule_cfg):
    # mode=min: a falling loss is an improvement, a rising one is not.
    lrs = plateau_lrs(schedule_cfg, [1.0, 0.9, 0.8, 0.7], "min", "schedule.patience=1", "schedule.factor=0.1")
    assert lrs == pytest.approx([A0] * 5)
    lrs = plateau_lrs(schedule_cfg, [1.0, 1.1, 1.2], "min", "schedule.patience=1", "schedule.factor=0.1")
    assert lrs == pytest.approx([A0, A0, A0 / 10, A0 / 100])


def test_plateau_after_warmup_ignores_the_epochs_that_end_during_warmup(schedule_cfg):
    metrics = [0.5] * 5
    lrs = plateau_lrs(schedule_cfg, metrics, "max", "schedule.patience=2", "schedule.factor=0.5",
                      "schedule.warmup_epochs=2", "schedule.warmup_start_factor=0.2")
    # Epoch 1 ends mid-warmup (not counted); epoch 2 sets the best; epochs 3 and 4 are bad: drop after epoch 4.
    assert lrs == pytest.approx([0.2 * A0, 0.2 * A0 + 0.8 * A0 / 2, A0, A0, A0 / 2, A0 / 2])


def test_plateau_without_the_monitored_metric_is_a_user_error(schedule_cfg):
    optimizer = sgd()
    schedule = build_schedule(schedule_cfg("plateau"), optimizer, SPE, EPOCHS)
    with pytest.raises(UserError, match="trainer.monitor"):
        schedule.step_epoch(None)


# -- checkpoints -----------------------------------------------------------------------------------------

def saved_and_loaded(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("warmup", ["none", "steps"])
@pytest.mark.parametrize("name", list(CASES))
def test_schedule_state_round_trips_through_a_weights_only_checkpoint(schedule_cfg, name, warmup):
    knobs, _ = CASES[name]
    if name == "plateau":
        knobs = ["schedule.patience=1"]
    cfg = schedule_cfg(name, *knobs, *WARMUPS[warmup][0])
    metrics = [0.5, 0.6, 0.6, 0.6, 0.7, 0.7]
    cut = 25  # mid-epoch, past a warmup of 7 steps

    optimizer = sgd()
    schedule = build_schedule(cfg, optimizer, SPE, EPOCHS)
    uninterrupted = lr_curve(schedule, optimizer, TOTAL, metrics)

    optimizer = sgd()
    schedule = build_schedule(cfg, optimizer, SPE, EPOCHS)
    before = lr_curve(schedule, optimizer, cut, metrics)
    checkpoint = saved_and_loaded({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})

    optimizer = sgd()  # a fresh process: build, then load (the loop's order)
    schedule = build_schedule(cfg, optimizer, SPE, EPOCHS)
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"])
    after = lr_curve(schedule, optimizer, TOTAL - cut, metrics, start=cut)
    assert before + after == pytest.approx(uninterrupted, rel=1e-12, abs=0)


# -- impossible values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,key,value", [
    ("exponential", "gamma", 0), ("step", "gamma", -1), ("step", "step_epochs", 0), ("multistep", "milestones", [4, 2]),
    ("multistep", "gamma", 0), ("inverse_time", "k", -1), ("linear", "end_factor", 2),
    ("cosine", "eta_min", -0.1), ("cosine_restarts", "cycle_epochs", 0), ("cosine_restarts", "cycle_mult", 0),
    ("onecycle", "pct_start", 1.0), ("onecycle", "div_factor", 0), ("plateau", "factor", 1.0),
    ("plateau", "patience", -1), ("constant", "warmup_start_factor", 0), ("constant", "warmup_epochs", -1),
    ("constant", "warmup_steps", 2.5),
])
def test_impossible_values_are_user_errors_naming_the_key(schedule_cfg, name, key, value):
    cfg = schedule_cfg(name)
    cfg = OmegaConf.merge(cfg, {key: value})
    with pytest.raises(UserError, match=rf"^schedule\.{key}="):
        build_schedule(cfg, sgd(), SPE, EPOCHS)


@pytest.mark.parametrize("path", sorted((CONFIGS / "schedule").glob("*.yaml")), ids=lambda p: p.name)
def test_schedule_yaml_documents_itself(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#"), "a header comment with the formula"
    assert any("lr" in line for line in lines if line.startswith("#"))
    for line in lines:
        if re.match(r"^\s*[a-z]\w*:\s*[^\s#]", line):
            assert "#" in line, f"{path.name}: knob without a comment: {line!r}"
