"""Runs from before issue 10's move name the old module paths (trainkit.models.SmallCNN): they still resume."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from trainkit.run.resume import check_resumable
from trainkit.config.check import config_hash, locate
from trainkit.config.targets import MOVED_TARGETS, current_target, first_spelling_targets
from trainkit.errors import UserError


def old_checkpoint(cfg, epoch: int = 1) -> dict:
    """A checkpoint's payload as a run before the move wrote it (the parts a resume check reads)."""
    return {"model": {}, "epoch": epoch, "config": first_spelling_targets(OmegaConf.to_container(cfg, resolve=True))}


def test_a_checkpoint_naming_the_old_module_paths_still_resumes(compose_train, tmp_path):
    cfg = compose_train("trainer.epochs=3", "schedule=step", "optimizer=lookahead")
    payload = old_checkpoint(cfg)
    assert payload["config"]["model"]["_target_"] == "trainkit.models.SmallCNN"
    assert payload["config"]["optimizer"]["_target_"] == "trainkit.lookahead.lookahead"
    check_resumable(cfg, payload, tmp_path / "last.pt", in_place=False)  # no refusal: the same training
    # A real difference is still refused, named at its leaf.
    with pytest.raises(UserError, match=r"model.channels=.* is not allowed on resume"):
        check_resumable(compose_train("trainer.epochs=3", "schedule=step", "optimizer=lookahead", "model.channels=[8,16]"),
                        payload, tmp_path / "last.pt", in_place=False)


def test_a_length_planned_schedule_is_still_known_under_its_old_path(compose_train, tmp_path):
    payload = old_checkpoint(compose_train("trainer.epochs=3", "schedule=cosine"))
    with pytest.raises(UserError, match=r"trainer.epochs=5 is not allowed on resume: the run was planned for 3"):
        check_resumable(compose_train("trainer.epochs=5", "schedule=cosine"), payload, tmp_path / "last.pt", in_place=False)


def test_the_config_hash_is_the_one_written_before_the_move(compose_train):
    """metrics.json's config_hash (and so resume=auto) does not change with a module's path."""
    cfg = compose_train("optimizer=ranger", "regularization=[early_stopping]")
    assert config_hash(cfg) == config_hash(OmegaConf.create(first_spelling_targets(OmegaConf.to_container(cfg))))
    assert config_hash(cfg) == config_hash(compose_train("optimizer=ranger", "regularization=[early_stopping]"))


def test_every_old_module_has_a_home_and_no_shim_is_left_at_the_old_path():
    for old, new in MOVED_TARGETS.items():
        assert locate(new) is not None, new
        assert locate(old) is None, f"{old} still imports: no shims at the old paths"
    assert current_target("trainkit.models.SmallCNN") == "trainkit.components.models.SmallCNN"
    assert current_target("torch.optim.SGD") == "torch.optim.SGD"
