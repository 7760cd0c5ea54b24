"""The Siamese neck on cached trunk features: it trains while a frozen trunk stays bit-identical, its views are
used, a resumed run matches an unbroken one, and scoring reads branch + neck."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data.catalog import load_catalog
from siamese.model import build_model
from siamese.objectives.pairs import frozen_view_rounds
from siamese.trainer import FoldTrainer
from tests.fold_runs import assert_same_weights, deterministic, fold_trainer, killed_then_resumed

MODEL = {"name": "tiny_neck", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8, "neck": {"dim": 16, "dropout": 0.1}}
FROZEN = [{"size": 32, "blocks": [{"epochs": 3, "lr": 3e-3, "K": 1000, "freeze_branch": True, "batch": 8},
                                  {"epochs": 2, "lr": 1e-3, "K": 0.5, "freeze_branch": True, "batch": 8}]}]


def make_trainer(catalog_dir, run_dir, stages=FROZEN, views: int = 2) -> FoldTrainer:
    return fold_trainer(catalog_dir, run_dir, {"model": dict(MODEL), "train": {
        "seed": 5, "stages": stages, "workers": 0, "feature_batch": 16, "sparse_k": None, "frozen_views": views,
        "augment_strength": 0.5}})


def test_the_neck_sits_between_branch_and_head():
    model = build_model(MODEL)
    assert model.has_neck and model.head.dim == 16
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    assert model.encoder()(images).shape == (2, 16)
    assert not build_model({k: v for k, v in MODEL.items() if k != "neck"}).has_neck


@pytest.fixture(scope="module")
def unbroken(tiny_catalog, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("neck_unbroken")
    trainer = make_trainer(tiny_catalog, run_dir)
    trunk_before = {k: v.clone() for k, v in trainer.model.branch.state_dict().items()}
    neck_before = {k: v.clone() for k, v in trainer.model.neck.state_dict().items()}
    metrics = trainer.fit()
    return run_dir, metrics, trainer, trunk_before, neck_before


def test_a_frozen_trunk_stays_bit_identical_while_the_neck_learns(unbroken):
    _, metrics, trainer, trunk_before, neck_before = unbroken
    for k, v in trainer.model.branch.state_dict().items():
        assert torch.equal(v, trunk_before[k]), k
    assert not torch.equal(trainer.model.neck.fc.weight, neck_before["fc.weight"])
    block1 = metrics[metrics["block"] == 1]["loss"].to_numpy()
    assert block1[-1] < block1[0]  # the loss falls over the random-negative block


def test_frozen_features_hold_every_view_and_views_differ(unbroken):
    _, _, trainer, _, _ = unbroken
    feats = trainer.frozen_feats
    assert feats.shape[0] == 3 and feats.shape[1] == len(trainer.data.mining_index)
    assert not torch.equal(feats[0], feats[1]) and not torch.equal(feats[1], feats[2])


def test_an_epoch_pairs_every_pair_once_per_view_round():
    pairs = np.array([[0, 1], [1, 2], [2, 0]])
    targets = np.array([1.0, 0.0, 0.0], np.float32)
    out_pairs, out_targets, views = frozen_view_rounds(pairs, targets, 3, [1, 2])
    assert len(out_pairs) == 9 and views.min() >= 0 and views.max() <= 2
    assert sorted(map(tuple, out_pairs)) == sorted(map(tuple, np.tile(pairs, (3, 1))))
    for p, t in zip(out_pairs, out_targets):
        assert t == targets[[tuple(q) for q in pairs].index(tuple(p))]


def test_a_killed_neck_run_resumed_ends_with_the_same_weights(unbroken, tiny_catalog, tmp_path, monkeypatch):
    run_dir, metrics, _, _, _ = unbroken
    # killed at the second epoch of the hard-negative block (the 5th)
    resumed = killed_then_resumed(lambda d: make_trainer(tiny_catalog, d), tmp_path, monkeypatch, kill_at=5)
    pd.testing.assert_frame_equal(deterministic(resumed), deterministic(metrics))
    assert_same_weights(run_dir / "32px" / "last.pt", tmp_path / "32px" / "last.pt")


def test_flip_tta_averages_the_photo_and_its_mirror(tiny_catalog):
    from siamese.infer import compute_features

    catalog = load_catalog(tiny_catalog, need_test=False)
    names = catalog.train["Image"].tolist()[:3]
    paths, boxes = [catalog.train_path(n) for n in names], [catalog.box(n) for n in names]
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    encoder = model.encoder()
    plain = compute_features(encoder, paths, boxes, 32, workers=0)
    tta = compute_features(encoder, paths, boxes, 32, workers=0, flip_tta=True)

    class Mirrored(torch.nn.Module):
        def forward(self, x):
            return encoder(x.flip(-1))

    mirrored = compute_features(Mirrored(), paths, boxes, 32, workers=0)
    np.testing.assert_allclose(tta, 0.5 * (plain + mirrored), atol=1e-5)
    assert not np.allclose(tta, plain)
