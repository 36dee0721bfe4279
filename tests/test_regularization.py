"""Regularizers: penalties on known tensors, mixup/cutmix targets, clipping, early stopping,
and a composed regularization list training on digits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats
from torch import nn

from conftest import compose_config as compose_train
from trainkit.data.datasets import load_digits_arrays
from trainkit.engine.callbacks.early_stopping import EarlyStopping
from trainkit.errors import UserError
from trainkit.components.normalization import Normalization
from trainkit.components.optimizers import build_optimizer
from trainkit.components.regularization import Regularizers
from trainkit.engine.seeding import capture_rng_states, restore_rng_states


def regs(num_classes: int | None = None, **nodes) -> Regularizers:
    return Regularizers(OmegaConf.create(nodes), num_classes=num_classes)


def known_model() -> nn.Module:
    """A linear layer, a conv layer and a norm layer with weights set to known values."""
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -2.0, 3.0, -4.0, 0.5, 0.0, -0.5, 2.0]).view(2, 1, 2, 2))
        model[0].bias.fill_(100.0)  # biases and norm weights carry no penalty
        model[1].weight.fill_(50.0)
        model[3].weight.copy_(torch.tensor([[1.0, 2.0], [-3.0, 0.0], [0.25, -0.25]]))
        model[3].bias.fill_(-100.0)
    return model


# sum |w| = (1+2+3+4+0.5+0+0.5+2) + (1+2+3+0+0.25+0.25) = 13 + 6.5
KNOWN_L1 = 19.5
# sum w^2 = (1+4+9+16+0.25+0+0.25+4) + (1+4+9+0+0.0625+0.0625) = 34.5 + 14.125
KNOWN_SQUARES = 48.625


def test_l1_penalty_is_lambda_times_sum_of_absolute_weights():
    penalty = regs(l1={"weight": 0.01}).penalty(known_model())
    assert penalty.item() == pytest.approx(0.01 * KNOWN_L1, rel=1e-6)


def test_elastic_net_penalty_is_l1_sum_plus_half_beta_sum_of_squares():
    penalty = regs(elastic_net={"l1": 0.01, "beta": 0.2}).penalty(known_model())
    assert penalty.item() == pytest.approx(0.01 * KNOWN_L1 + 0.2 / 2 * KNOWN_SQUARES, rel=1e-6)


def test_penalties_add_up_and_l2_in_loss_is_half_lambda_sum_of_squares():
    model = known_model()
    l2 = {"weight_decay": 0.1, "coupling": "loss"}
    assert regs(l2=l2).penalty(model).item() == pytest.approx(0.05 * KNOWN_SQUARES, rel=1e-6)
    both = regs(l2=l2, l1={"weight": 0.01}, elastic_net={"l1": 0.02, "beta": 0.3}).penalty(model)
    assert both.item() == pytest.approx(0.05 * KNOWN_SQUARES + 0.03 * KNOWN_L1 + 0.15 * KNOWN_SQUARES, rel=1e-6)
    assert regs().penalty(model) == 0.0
    # l2 through the optimizer adds nothing to the loss
    assert regs(l2={**l2, "coupling": "optimizer"}).penalty(model) == 0.0


def test_penalty_gradient_is_lambda_sign_w():
    model = known_model()
    regs(l1={"weight": 0.5}).penalty(model).backward()
    assert torch.equal(model[3].weight.grad, 0.5 * torch.sign(model[3].weight.detach()))
    assert model[3].bias.grad is None and model[1].weight.grad is None


def test_penalty_applies_to_the_effective_weight_under_weight_norm():
    layer = Normalization("weight").wrap(nn.Linear(4, 3))
    penalty = regs(l1={"weight": 1.0}).penalty(layer)
    assert penalty.item() == pytest.approx(layer.weight.abs().sum().item(), rel=1e-6)
    penalty.backward()
    assert layer.parametrizations.weight.original1.grad is not None


def own_weight_and_partner(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch labelled arange(n): each row's weight on its own label, and the label it was
    mixed with (itself where the own weight is 1: paired with itself, or nothing mixed)."""
    others = targets.clone()
    others.fill_diagonal_(-1.0)
    own = targets.diagonal().clone()
    return own, torch.where(own > 1 - 1e-6, torch.arange(len(own)), others.argmax(1))


def batch_lam(own: torch.Tensor) -> float:
    """The batch's lam: the own weight of every row not paired with itself (1 if none is)."""
    mixed_rows = own[own < 1 - 1e-6]
    if not len(mixed_rows):
        return 1.0
    torch.testing.assert_close(mixed_rows, torch.full_like(mixed_rows, float(mixed_rows[0])))  # one lam per batch
    return float(mixed_rows[0])


def assert_two_label_targets(targets: torch.Tensor, own: torch.Tensor, partner: torch.Tensor) -> None:
    n = targets.shape[0]
    expected = own[:, None] * torch.eye(n) + (1 - own)[:, None] * F.one_hot(partner, n).float()
    torch.testing.assert_close(targets, expected)


def test_mixup_batches_are_convex_combinations_with_matching_soft_targets():
    n, alpha = 8, 0.4
    images, labels = torch.randn(n, 3, 6, 6), torch.arange(n)
    r = regs(num_classes=n, mixup={"alpha": alpha})
    torch.manual_seed(0)
    lams = []
    for _ in range(300):
        mixed, targets = r.mix(images, labels)
        assert mixed.shape == images.shape and mixed.dtype == images.dtype
        assert targets.shape == (n, n) and targets.dtype == torch.float32
        own, partner = own_weight_and_partner(targets)
        lam = batch_lam(own)
        assert 0.0 <= lam <= 1.0
        assert_two_label_targets(targets, own, partner)
        assert sorted(partner.tolist()) == list(range(n))  # the partners are a permutation of the batch
        # each image is the same convex combination of itself and its partner as its target
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[partner], rtol=1e-5, atol=1e-5)
        lams.append(lam)
    # lam ~ Beta(alpha, alpha): Beta(0.4, 0.4) vs uniform (alpha = 1) differ by D ~ 0.17 >> 0.08 here
    assert stats.kstest(lams, "beta", args=(alpha, alpha)).pvalue > 0.01
    assert stats.kstest(lams, "uniform").pvalue < 1e-4


def test_mixed_soft_targets_compose_with_label_smoothing():
    n, eps = 6, 0.1
    r = regs(num_classes=n, mixup={"alpha": 1.0}, label_smoothing={"epsilon": eps})
    torch.manual_seed(4)
    _, targets = r.mix(torch.randn(n, 1, 4, 4), torch.arange(n))
    logits = torch.randn(n, n)
    loss = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)(logits, targets)
    smooth = (1 - eps) * targets + eps / n
    assert float(loss) == pytest.approx(float(-(smooth * logits.log_softmax(1)).sum(1).mean()), rel=1e-5)


def pasted_box(pasted: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the axis-aligned box that `pasted` (H x W, bool) fills exactly."""
    if not bool(pasted.any()):
        return None
    ys, xs = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    assert bool(pasted[y0:y1, x0:x1].all()) and int(pasted.sum()) == (y1 - y0) * (x1 - x0), "not one box"
    return y0, y1, x0, x1


def test_cutmix_pastes_one_box_and_targets_match_its_area():
    # Image i is filled with the value i, so each pixel tells whose it is.
    n, h, w = 8, 16, 12
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    labels = torch.arange(n)
    r = regs(num_classes=n, cutmix={"alpha": 1.0, "switch_prob": 0.5})  # switch_prob: only with mixup too
    torch.manual_seed(1)
    clipped = 0
    for _ in range(100):
        mixed, targets = r.mix(images, labels)
        assert targets.shape == (n, n) and targets.dtype == torch.float32
        own, partner = own_weight_and_partner(targets)
        assert_two_label_targets(targets, own, partner)
        assert sorted(partner.tolist()) == list(range(n))  # the partners are a permutation of the batch
        boxes = set()
        for i in range(n):
            pasted = mixed[i] != i
            assert bool((pasted == pasted[0]).all())  # the same box in every channel
            box = pasted_box(pasted[0])
            if box is None:  # an empty box, or paired with itself
                assert float(own[i]) == pytest.approx(1.0)
                continue
            boxes.add(box)
            j = int(partner[i])
            assert j != i and bool((mixed[i][pasted] == j).all())  # x_j inside the box, x_i outside
            y0, y1, x0, x1 = box
            assert float(targets[i, j]) == pytest.approx((y1 - y0) * (x1 - x0) / (h * w), abs=1e-6)
            clipped += y0 == 0 or x0 == 0 or y1 == h or x1 == w
        assert len(boxes) <= 1  # one box per batch
    assert clipped > 0  # the area share was checked on boxes cut by the border too


def batch_kind(images: torch.Tensor, mixed: torch.Tensor, targets: torch.Tensor) -> str:
    """'cutmix' (some pixels own, the others all the partner's), 'mixup' (every pixel the same
    convex combination as the targets) or 'unchanged' (either, with nothing mixed)."""
    own, partner = own_weight_and_partner(targets)
    if torch.equal(mixed, images):
        return "unchanged"
    batch_lam(own)
    is_own, is_partner = mixed == images, mixed == images[partner]
    if bool(is_own.any() and is_partner.any() and (is_own | is_partner).all()):
        return "cutmix"
    expected = own.view(-1, 1, 1, 1) * images + (1 - own).view(-1, 1, 1, 1) * images[partner]
    assert torch.allclose(mixed, expected, rtol=1e-5, atol=1e-5), "neither mixup nor cutmix"
    return "mixup"


def test_mixup_and_cutmix_together_switch_per_batch_with_switch_prob():
    n, draws, switch_prob = 4, 400, 0.25
    r = regs(num_classes=n, mixup={"alpha": 0.2}, cutmix={"alpha": 1.0, "switch_prob": switch_prob})
    images, labels = torch.randn(n, 1, 32, 32), torch.arange(n)
    torch.manual_seed(2)
    kinds = [batch_kind(images, *r.mix(images, labels)) for _ in range(draws)]
    # binomial(400, 0.25): mean 100, sd 8.7; an empty box (1 - lam0 < (2/32)^2) counts as unchanged
    assert 60 < kinds.count("cutmix") < 140, kinds.count("cutmix")
    assert kinds.count("mixup") > 200


def test_same_seed_gives_the_same_mixed_batch():
    r = regs(num_classes=5, mixup={"alpha": 1.0}, cutmix={"alpha": 1.0})
    images, labels = torch.randn(10, 1, 8, 8), torch.arange(10) % 5

    def draws(seed: int):
        torch.manual_seed(seed)
        return [r.mix(images, labels) for _ in range(4)]

    first, again, other = draws(3), draws(3), draws(4)
    for (a_img, a_t), (b_img, b_t) in zip(first, again):
        assert torch.equal(a_img, b_img) and torch.equal(a_t, b_t)
    assert not all(torch.equal(a_img, b_img) for (a_img, _), (b_img, _) in zip(first, other))


def test_mix_draws_only_from_torchs_global_rng_and_replay_after_restoring_it():
    r = regs(num_classes=5, mixup={"alpha": 1.0}, cutmix={"alpha": 1.0})
    images, labels = torch.randn(10, 1, 8, 8), torch.arange(10) % 5
    torch.manual_seed(3)
    r.mix(images, labels)
    state = capture_rng_states()
    first = [r.mix(images, labels) for _ in range(3)]
    after = capture_rng_states()
    assert not torch.equal(after["torch"], state["torch"])
    assert after["python"] == state["python"]  # python's and numpy's generators are left alone
    assert torch.equal(after["numpy"]["keys"], state["numpy"]["keys"]) and after["numpy"]["pos"] == state["numpy"]["pos"]
    restore_rng_states(state)
    again = [r.mix(images, labels) for _ in range(3)]
    for (a_img, a_t), (b_img, b_t) in zip(first, again):
        assert torch.equal(a_img, b_img) and torch.equal(a_t, b_t)


def test_without_mixing_labels_pass_through():
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out_images, targets = regs(num_classes=4, dropout={"p": 0.1}).mix(images, labels)
    assert out_images is images and targets is labels


def test_label_smoothing_value_reaches_cross_entropy():
    r = regs(label_smoothing={"epsilon": 0.1})
    assert r.label_smoothing == 0.1
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)(logits, labels)
    smooth = 0.9 * F.one_hot(labels, 4) + 0.1 / 4
    assert float(loss) == pytest.approx(float(-(smooth * logits.log_softmax(1)).sum(1).mean()), rel=1e-5)


def _model_with_gradients() -> nn.Module:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
    for p in model.parameters():
        p.grad = torch.linspace(-5, 5, p.numel()).view_as(p)
    return model


def test_grad_clip_by_norm_rescales_the_global_norm():
    model = _model_with_gradients()
    before = torch.cat([p.grad.flatten() for p in model.parameters()])
    r = regs(grad_clip={"by": "norm", "max_norm": 1.0, "norm_type": 2.0, "value": 1.0})
    r.clip_gradients(model)
    after = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(after.norm()) == pytest.approx(1.0, rel=1e-4)
    assert float(r.last_grad_norm) == pytest.approx(float(before.norm()), rel=1e-5)
    torch.testing.assert_close(after, before / before.norm(), rtol=1e-4, atol=1e-6)  # direction kept


def test_grad_clip_by_value_clamps_each_element():
    model = _model_with_gradients()
    regs(grad_clip={"by": "value", "max_norm": 1.0, "value": 0.5}).clip_gradients(model)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(grads.abs().max()) == 0.5
    assert float(grads.min()) == -0.5


@pytest.mark.parametrize("norm_type", [math.inf, "inf"], ids=["command line (float)", "yaml (string)"])
def test_grad_clip_by_the_max_norm(norm_type):
    """norm_type inf, as configs/regularization/grad_clip.yaml documents it: ||g||_inf is the largest |element|."""
    from trainkit.config.check import check_config

    cfg = compose_train("regularization=[grad_clip]", "regularization.grad_clip.max_norm=0.5")
    cfg.regularization.grad_clip.norm_type = norm_type  # Hydra parses inf as a float; YAML's inf is a string
    check_config(cfg)
    model = _model_with_gradients()
    before = torch.cat([p.grad.flatten() for p in model.parameters()])
    r = Regularizers(cfg.regularization)
    r.clip_gradients(model)
    after = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(r.last_grad_norm) == float(before.abs().max()) == 5.0
    assert float(after.abs().max()) == pytest.approx(0.5, rel=1e-5)
    torch.testing.assert_close(after, before * 0.5 / 5.0, rtol=1e-5, atol=1e-7)  # one scale for all: direction kept


@pytest.mark.parametrize("norm_type", [0, -1.0, "infinity", math.nan])
def test_grad_clip_norm_type_must_be_positive_or_inf(norm_type):
    from trainkit.config.check import check_config

    cfg = compose_train("regularization=[grad_clip]")
    cfg.regularization.grad_clip.norm_type = norm_type
    with pytest.raises(UserError, match=r"regularization\.grad_clip\.norm_type=.* is not allowed: a number > 0, or inf"):
        check_config(cfg)


@pytest.mark.parametrize("nodes, key", [
    ({"l1": {"weigth": 0.1}}, "regularization.l1"),
    ({"mixup": {"alpha": 0.0}}, "regularization.mixup.alpha"),
    ({"grad_clip": {"by": "sign", "max_norm": 1.0}}, "regularization.grad_clip.by"),
    ({"dropout": {"p": 1.0}}, "regularization.dropout.p"),
    ({"elastic_net": {"l1": -1.0, "beta": 0.0}}, "regularization.elastic_net.l1"),
])
def test_bad_knobs_are_user_errors_naming_the_key(nodes, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        regs(num_classes=10, **nodes)


# -- early stopping -------------------------------------------------------------------------------

def run_epochs(stopper: EarlyStopping, values, monitor="val/acc", start_epoch: int = 0):
    """Feed one scripted metric per epoch as the loop does; returns the epoch it stopped after."""
    trainer = SimpleNamespace(epoch=start_epoch, should_stop=False)
    for value in values:
        if trainer.should_stop:
            break
        trainer.epoch += 1  # the loop counts the epoch as done before calling on_epoch_end
        stopper.on_epoch_end(trainer, {monitor: value})
    return trainer.epoch if trainer.should_stop else None


def test_early_stopping_stops_after_patience_epochs_without_min_delta_improvement():
    # best 0.60 at epoch 3; 0.605 (epoch 4) is not > 0.60 + 0.01; epochs 4, 5, 6 fail -> stop after 6
    values = [0.50, 0.55, 0.60, 0.605, 0.59, 0.609, 0.99, 0.99]
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=3, min_delta=0.01)
    assert run_epochs(stopper, values) == 6
    assert stopper.best == 0.60 and stopper.best_epoch == 3 and stopper.stopped_epoch == 6
    assert "epoch 6" in stopper.stop_reason


def test_early_stopping_counter_resets_on_improvement_and_min_mode():
    values = [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.81, 0.9, 0.7]
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=3, min_delta=0.0)
    assert run_epochs(stopper, values, monitor="val/loss") == 8
    assert stopper.best == 0.8 and stopper.best_epoch == 5
    never = EarlyStopping(monitor="val/loss", mode="min", patience=3)
    assert run_epochs(never, [1.0, 0.9, 0.8, 0.7, 0.6], monitor="val/loss") is None


def test_early_stopping_nan_counts_as_no_improvement():
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=2)
    assert run_epochs(stopper, [0.5, math.nan, math.nan, 0.9]) == 3


def test_early_stopping_resumes_with_its_counters():
    values = [0.50, 0.55, 0.60, 0.605, 0.59, 0.609, 0.99]
    first = EarlyStopping(monitor="val/acc", mode="max", patience=3, min_delta=0.01)
    assert run_epochs(first, values[:4]) is None
    state = first.state_dict()
    assert state == {"best": 0.60, "best_epoch": 3, "wait": 1, "stopped_epoch": None}
    resumed = EarlyStopping(monitor="val/acc", mode="max", patience=3, min_delta=0.01)
    resumed.load_state_dict(torch.load(_roundtrip(state), weights_only=True))
    assert run_epochs(resumed, values[4:], start_epoch=4) == 6


def _roundtrip(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_early_stopping_config_builds_from_the_composed_node():
    cfg = compose_train("regularization=[early_stopping]", "trainer.monitor=val/loss", "trainer.mode=min")
    node = OmegaConf.to_container(cfg.regularization.early_stopping, resolve=True)
    stopper = EarlyStopping(**node)
    assert (stopper.monitor, stopper.mode, stopper.patience, stopper.min_delta) == ("val/loss", "min", 5, 0.0)
    with pytest.raises(UserError, match="monitor"):
        EarlyStopping(monitor="val/accuracy")
    with pytest.raises(UserError, match="patience"):
        EarlyStopping(patience=0)


# -- composed regularization trains ----------------------------------------------------------------

def digits_tensors():
    images, labels = load_digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - 0.3053) / 0.3759, torch.tensor(labels)


def build_run(cfg):
    """Model, regularizers, optimizer and criterion as the run builds them."""
    torch.manual_seed(0)
    r = Regularizers(cfg.regularization, num_classes=int(cfg.dataset.num_classes))
    model = instantiate(cfg.model)(in_channels=1, image_size=8, num_classes=10, norm=instantiate(cfg.norm),
                                   activation=instantiate(cfg.activation), dropout=r.dropout)
    model = instantiate(cfg.init)(model)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    criterion = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
    return model, r, optimizer, criterion


def train_steps(model, r, optimizer, criterion, steps: int = 20, batch: int = 64) -> tuple[float, float]:
    """Clean eval loss on held-out digits before and after `steps` regularized steps."""
    x, y = digits_tensors()
    x_eval, y_eval = x[-300:], y[-300:]
    torch.manual_seed(0)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x_eval), y_eval))
        model.train()
        return loss

    before = eval_loss()
    for step in range(steps):
        idx = torch.arange(step * batch, (step + 1) * batch) % (len(x) - 300)
        images, targets = r.mix(x[idx], y[idx])
        loss = criterion(model(images), targets) + r.penalty(model)
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        r.clip_gradients(model)
        optimizer.step()
    return before, eval_loss()


def test_l2_dropout_mixup_composes_and_trains():
    cfg = compose_train("regularization=[l2,dropout,mixup]", "optimizer.lr=0.005", "model.channels=[16,32]")
    assert set(cfg.regularization) == {"l2", "dropout", "mixup"}
    model, r, optimizer, criterion = build_run(cfg)
    assert r.dropout == 0.3 and any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert optimizer.param_groups[0]["weight_decay"] == 5e-4  # l2 via the optimizer
    assert r.mixup_alpha == 0.2
    before, after = train_steps(model, r, optimizer, criterion)
    assert after < 0.7 * before, (before, after)


def test_every_regularizer_together_composes_and_trains():
    cfg = compose_train("regularization=[l2,l1,elastic_net,dropout,label_smoothing,mixup,cutmix,early_stopping,grad_clip]",
                        "model=mlp", "optimizer=adamw", "optimizer.lr=0.005")
    model, r, optimizer, criterion = build_run(cfg)
    assert criterion.label_smoothing == 0.1
    assert isinstance(r.penalty(model), torch.Tensor)
    before, after = train_steps(model, r, optimizer, criterion)
    assert after < 0.7 * before, (before, after)
    assert r.last_grad_norm is not None
