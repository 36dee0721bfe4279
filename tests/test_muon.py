"""optimizer=muon: torch.optim.Muon for the weight matrices (conv weights through 2-D views), AdamW
for the rest, as one optimizer that schedules, checkpoints and resumes like any other."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import run_trainkit
from trainkit.components.muon import MuonWithAdamW


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_weights_are_updated_through_their_matrix_views(channels_last, one_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = MuonWithAdamW(model.parameters(), lr=0.02, adamw_lr=1e-2)
    assert [tuple(a.shape) for a in optimizer.aliases] == [(8, 9), (3, 288)]
    assert isinstance(optimizer.muon, torch.optim.Muon) and isinstance(optimizer.adamw, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in optimizer.adamw.param_groups) == 3  # BN weight and bias, linear bias
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # every tensor moved
    assert losses[-1] < 0.5 * losses[0]
    # Muon's step on a matrix is orthogonalised: the first update of the conv weight has singular values near 1 x lr.
    fresh = nn.Conv2d(1, 8, 3, bias=False)
    w0 = fresh.weight.detach().clone()
    opt = MuonWithAdamW([fresh.weight], lr=0.1, momentum=0.0, nesterov=False)
    fresh(torch.randn(16, 1, 8, 8)).square().mean().backward()
    opt.step()
    singular = torch.linalg.svdvals((w0 - fresh.weight.detach()).reshape(8, 9))
    assert singular.max() < 0.2 and singular.min() > 0.05  # 0.1 x ~(0.7..1.2): NS's approximate orthogonalisation


def test_muon_trains_checkpoints_and_resumes_exactly(tmp_path):
    common = ("optimizer=muon", "schedule=constant", "optimizer.weight_decay=0.01", "trainer.progress=false")
    whole = run_trainkit("train", *common, "trainer.epochs=3", "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert "decoupled, w <- w - lr * wd * w" in whole.stdout
    first = run_trainkit("train", *common, "trainer.epochs=2", "hydra.run.dir=parts", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_trainkit("train", "resume=parts", "trainer.epochs=3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)
    assert set(a["optimizer"]) == {"muon", "adamw"}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    record = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert record["test"]["test/acc"] > 0.9
