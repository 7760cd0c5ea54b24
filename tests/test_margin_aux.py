"""The Siamese family's auxiliary margin classifier (``loss.margin_weight``): it learns beside the pair head on
cached features and on image batches, shapes what the neck learns, stays out of the model's weights, and a
resumed run matches an unbroken one."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from data.checkpoint import load_checkpoint
from siamese.trainer import FoldTrainer
from tests.fold_runs import assert_same_weights, deterministic, fold_trainer, killed_then_resumed

MODEL = {"name": "tiny_margin", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8, "neck": {"dim": 16, "dropout": 0.1}, "arc_s": 10.0}
FROZEN = [{"size": 32, "blocks": [{"epochs": 3, "lr": 3e-3, "K": 1000, "freeze_branch": True, "batch": 8},
                                  {"epochs": 2, "lr": 1e-3, "K": 0.5, "freeze_branch": True, "batch": 8}]}]
IMAGES = [{"size": 32, "blocks": [{"epochs": 2, "lr": 1e-3, "K": 1000, "freeze_branch": False, "batch": 8}]}]


def make_trainer(catalog_dir, run_dir, weight: float, stages=FROZEN) -> FoldTrainer:
    return fold_trainer(catalog_dir, run_dir, {"model": dict(MODEL), "loss": {"margin_weight": weight}, "train": {
        "seed": 5, "stages": stages, "workers": 0, "feature_batch": 16, "sparse_k": None, "frozen_views": 2,
        "augment_strength": 0.5}})


def margin_ce(trainer: FoldTrainer) -> float:
    """The classifier's cross-entropy over the mining photos' test-time crops (through the neck, eval mode)."""
    obj = trainer.objective
    feats = torch.from_numpy(obj.head_features(obj.mining_features(32)))
    with torch.no_grad():
        logits = obj.margin(feats, obj._classes)
    return float(torch.nn.functional.cross_entropy(logits, obj._classes))


@pytest.fixture(scope="module")
def runs(tiny_catalog, tmp_path_factory):
    out = {}
    for weight in (0.0, 1.0):
        run_dir = tmp_path_factory.mktemp(f"margin_{weight}")
        trainer = make_trainer(tiny_catalog, run_dir, weight)
        before = margin_ce(trainer) if weight else None
        metrics = trainer.fit()
        out[weight] = (run_dir, trainer, metrics, before)
    return out


def test_the_classifier_learns_and_changes_what_the_neck_learns(runs):
    run_dir, trainer, _, before = runs[1.0]
    assert margin_ce(trainer) < 0.8 * before
    plain = runs[0.0][1]
    assert plain.objective.margin is None
    assert not torch.allclose(trainer.model.neck.fc.weight, plain.model.neck.fc.weight, atol=1e-4)


def test_the_classifier_is_kept_beside_the_model_not_in_it(runs):
    run_dir, trainer, _, _ = runs[1.0]
    state = load_checkpoint(run_dir / "32px" / "last.pt")
    assert not any(k.startswith("margin") for k in state["model"])
    torch.testing.assert_close(state["margin_head"]["weight"], trainer.objective.margin.weight.detach())
    assert "margin_head" not in load_checkpoint(runs[0.0][0] / "32px" / "last.pt")


def test_a_killed_margin_run_resumed_ends_with_the_same_weights(runs, tiny_catalog, tmp_path, monkeypatch):
    run_dir, _, metrics, _ = runs[1.0]
    resumed = killed_then_resumed(lambda d: make_trainer(tiny_catalog, d, 1.0), tmp_path, monkeypatch, kill_at=5)
    pd.testing.assert_frame_equal(deterministic(resumed), deterministic(metrics))
    assert_same_weights(run_dir / "32px" / "last.pt", tmp_path / "32px" / "last.pt")
    torch.testing.assert_close(load_checkpoint(run_dir / "32px" / "last.pt")["margin_head"]["weight"],
                               load_checkpoint(tmp_path / "32px" / "last.pt")["margin_head"]["weight"], rtol=0, atol=0)


def test_resuming_a_run_without_the_classifier_under_a_config_with_it_is_refused(runs, tiny_catalog, tmp_path):
    import shutil

    from data.errors import InputError

    shutil.copytree(runs[0.0][0], tmp_path, dirs_exist_ok=True)
    with pytest.raises(InputError, match="no margin classifier"):
        make_trainer(tiny_catalog, tmp_path, 1.0).fit(resume=True)


def test_image_batches_train_the_classifier_and_the_branch(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path / "a", 1.0, stages=IMAGES)
    plain = make_trainer(tiny_catalog, tmp_path / "b", 0.0, stages=IMAGES)
    start = trainer.objective.margin.weight.detach().clone()
    trainer.fit()
    plain.fit()
    assert not torch.equal(trainer.objective.margin.weight, start)
    a, b = trainer.model.branch.state_dict(), plain.model.branch.state_dict()
    assert any(not torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
