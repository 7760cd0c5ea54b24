"""The embedding trainer on a tiny catalog (random weights, tiny images): resume equals an unbroken run, frozen
blocks, mirrored items, and scoring of the trained run through the shared pipeline."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from data.catalog import load_catalog, read_folds
from data.checkpoint import load_checkpoint
from data.errors import InputError
from matching.matrix import load_matrix
from matching.runs.embedding import score_meta
from matching.runs.pipeline import combine_folds, score_run
from matching.runs.run import discover_runs
from matching.similarity.cosine import cosine_matrix
from siamese.objectives.margin import Flipped, MarginObjective
from siamese.schedule import Position
from siamese.trainer import FoldTrainer
from tests.fold_runs import assert_same_weights, deterministic, fold_trainer, killed_then_resumed

CFG = {
    "model": {"name": "tinyarc", "family": "arcface", "branch": "test_efficientnet", "in_chans": 3, "pool": "gem",
              "pretrained": False, "weights": None, "embedding_dim": 16, "arc_s": 10.0, "arc_m": 0.3,
              "subcenters": 2, "mirror": True},
    "loss": {"label_smoothing": 0.1, "focal_gamma": 1.0, "triplet_weight": 0.5, "triplet_margin": 0.3},
    "train": {"seed": 3, "workers": 0, "feature_batch": 16, "per_class": 2, "warmup_epochs": 1, "head_lr_mult": 5.0,
              "val_mode": "max",
              "stages": [{"size": 32, "blocks": [{"epochs": 2, "lr": 1e-3, "freeze_branch": True, "batch": 8},
                                                 {"epochs": 1, "lr": 1e-3, "freeze_branch": False, "batch": 8}]},
                         {"size": 40, "blocks": [{"epochs": 2, "lr": 5e-4, "freeze_branch": False, "batch": 8}]}]},
    "score": {"scoring": "both"},
}


def make_trainer(catalog_dir, run_dir, cfg=CFG) -> FoldTrainer:
    return fold_trainer(catalog_dir, run_dir, yaml.safe_load(yaml.safe_dump(cfg)))


@pytest.fixture(scope="module")
def unbroken(tiny_catalog, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("work") / "runs" / "tinyarc" / "fold0"
    trainer = make_trainer(tiny_catalog, run_dir)
    metrics = trainer.fit()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(trainer.cfg))  # as train_fold.py writes it
    return run_dir, metrics


def test_every_block_is_validated_and_each_stage_keeps_its_best(unbroken):
    run_dir, metrics = unbroken
    validated = metrics.dropna(subset=["val_map5"])
    assert list(zip(validated["size"], validated["block"])) == [(32, 1), (32, 2), (40, 1)]
    assert validated["val_map5"].between(0, 1).all()
    for size in (32, 40):
        best = load_checkpoint(run_dir / f"{size}px" / "best.pt")
        assert best["val_map5"] == pytest.approx(validated[validated["size"] == size]["val_map5"].max(), abs=1e-6)
        assert len(pd.read_csv(run_dir / f"{size}px" / "metrics.csv")) == (metrics["size"] == size).sum()


def test_a_killed_run_resumed_ends_with_the_same_weights_and_metrics(unbroken, tiny_catalog, tmp_path, monkeypatch):
    run_dir, metrics = unbroken
    # killed at the first epoch of the 40 px stage (the 4th)
    resumed = killed_then_resumed(lambda d: make_trainer(tiny_catalog, d), tmp_path, monkeypatch, kill_at=4)
    pd.testing.assert_frame_equal(deterministic(resumed), deterministic(metrics))
    for size in (32, 40):
        a, b = run_dir / f"{size}px" / "last.pt", tmp_path / f"{size}px" / "last.pt"
        assert load_checkpoint(a)["classes"] == load_checkpoint(b)["classes"]
        assert_same_weights(a, b)


def test_resume_refuses_a_run_of_other_classes(unbroken, tiny_catalog, tmp_path):
    shutil.copytree(unbroken[0], tmp_path / "run")
    cfg = yaml.safe_load(yaml.safe_dump(CFG))
    cfg["model"]["mirror"] = False
    from data.errors import InputError

    with pytest.raises(InputError, match="other classes"):
        make_trainer(tiny_catalog, tmp_path / "run", cfg).fit(resume=True)


def test_a_frozen_block_trains_neck_and_margin_and_leaves_the_branch_alone(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path)
    branch = {k: v.clone() for k, v in trainer.model.branch.state_dict().items()}
    neck = {k: v.clone() for k, v in trainer.model.neck.state_dict().items()}
    margin = trainer.model.margin.weight.detach().clone()
    trainer.start_stage(0)
    trainer.run_epoch(Position(0, 0, 0))
    for k, v in trainer.model.branch.state_dict().items():
        assert torch.equal(v, branch[k]), k
    assert not torch.equal(trainer.model.neck.fc.weight, neck["fc.weight"])
    assert not torch.equal(trainer.model.margin.weight, margin)


def test_mirrored_items_are_the_flipped_photos_under_new_classes(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path)
    n = len(trainer.data.train_paths)
    assert trainer.model.margin.classes == 2 * len(set(trainer.data.train_labels))
    feats = trainer.objective.frozen_features(32)[0].numpy()  # view 0: the test-time crops
    plain, mirrored = feats[:n], feats[n:]
    assert not np.allclose(plain, mirrored)
    flipped = trainer.features(trainer.data.train_paths, trainer.data.train_boxes, 32, "x",
                               module=Flipped(trainer.model.branch))
    np.testing.assert_allclose(mirrored, flipped, rtol=1e-5, atol=1e-5)
    assert (trainer.objective.cls[n:] == trainer.objective.cls[:n] + len(set(trainer.data.train_labels))).all()


def test_the_trained_run_scores_through_the_shared_pipeline(unbroken, tiny_catalog):
    run_dir, _ = unbroken
    work = run_dir.parents[2]
    runs = discover_runs(work / "runs")
    assert [(r.model, r.fold) for r in runs] == [("tinyarc", 0)]
    catalog = load_catalog(tiny_catalog)
    folds = read_folds(tiny_catalog / "folds.csv")
    val = folds.loc[folds["fold"] == 0, "Image"].tolist()
    out = work / "scores" / "tinyarc"
    written = score_run(runs[0], catalog, val, out, work / "features" / "tinyarc" / "fold0", device=torch.device("cpu"))
    assert [p.name for p in written] == ["fold0_test.npz", "fold0_oof.npz"]
    combine_folds(out)
    test, oof = load_matrix(out / "test.npz"), load_matrix(out / "oof.npz")
    known = catalog.train[catalog.train["Id"] != "new_whale"]["Image"].tolist()
    assert test.scores.shape == (len(catalog.test_images), len(known))  # mirrored classes never appear
    assert list(test.gallery) == known and list(oof.query) == val
    assert ((test.scores > 0) & (test.scores < 1)).all()
    col = {g: j for j, g in enumerate(oof.gallery)}
    for i, q in enumerate(oof.query):
        if q in col:
            assert oof.scores[i, col[q]] == 0.0  # a photo is never scored against itself
    calib = pd.read_csv(out / "fold0_calibration.csv")
    assert calib["a"].iloc[0] > 0
    # the map is monotone: probabilities order the pairs as the cosines do ("both": image + centre cosine)
    feats = np.load(work / "features" / "tinyarc" / "fold0" / "test.npz")["features"]
    gallery = np.load(work / "features" / "tinyarc" / "fold0" / "catalog.npz")["features"]
    labels = catalog.train.set_index("Image").loc[known, "Id"].tolist()
    from matching.similarity.cosine import similarity

    sims = similarity(feats, gallery, labels, scoring="both")
    order = np.argsort(sims.ravel(), kind="stable")
    assert (np.diff(test.scores.ravel()[order]) >= -1e-6).all()
    assert cosine_matrix(feats, gallery).shape == sims.shape

    # meta-embedding of one model with itself: the same cosines, the same probabilities
    shutil.copytree(work / "features" / "tinyarc", work / "features" / "tinyarc2")
    meta = score_meta("meta", ["tinyarc", "tinyarc2"], 0, catalog, val, work, {"scoring": "both"})
    np.testing.assert_allclose(load_matrix(meta[0]).scores, load_matrix(out / "fold0_test.npz").scores, atol=1e-3)


def test_every_known_whale_is_a_class_singletons_included(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path)
    ids, counts = np.unique(trainer.data.train_labels, return_counts=True)
    plain = [c for c in trainer.objective.classes if not c.endswith("__mirror")]
    assert plain == sorted(ids) and "new_whale" not in plain
    assert (counts == 1).any(), "the tiny fold should hold a whale with one training photo"


def test_neck_and_head_learn_at_a_multiple_of_the_branch_lr_after_warm_up(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path)
    trainer.objective.set_lr(Position(0, 1, 0), 0.0)  # second block of the stage: past the 1-epoch warm-up, cosine at 1
    branch_lr, head_lr = (g["lr"] for g in trainer.optimizer.param_groups)
    assert branch_lr == pytest.approx(1e-3) and head_lr == pytest.approx(5 * 1e-3)
    trainer.objective.set_lr(Position(0, 0, 0), 0.5)  # half-way through the warm-up of the first block
    assert trainer.optimizer.param_groups[0]["lr"] < 0.5 * 1e-3


def test_frozen_views_are_cached_per_item_and_an_epoch_covers_them_all(tiny_catalog, tmp_path, monkeypatch):
    cfg = yaml.safe_load(yaml.safe_dump(CFG))
    cfg["model"]["mirror"] = False
    cfg["train"]["frozen_views"] = 2
    cfg["train"]["augment_strength"] = 1.0
    trainer = make_trainer(tiny_catalog, tmp_path, cfg)
    seen = []
    original = MarginObjective.loss
    monkeypatch.setattr(MarginObjective, "loss", lambda self, e, y: seen.append(len(y)) or original(self, e, y))
    trainer.start_stage(0)
    trainer.run_epoch(Position(0, 0, 0))
    feats = trainer.frozen_feats
    items = len(trainer.objective.cls)
    assert feats.shape[:2] == (3, items)
    assert not torch.allclose(feats[0], feats[1]) and not torch.allclose(feats[1], feats[2])
    assert sum(seen) >= 3 * items - 1  # every view of every item (a final lone item may be dropped)
    again = make_trainer(tiny_catalog, tmp_path / "again", cfg)
    assert torch.equal(again.objective.frozen_features(32), feats)  # the views are a function of the seed


def test_negative_frozen_views_are_refused(tiny_catalog, tmp_path):
    cfg = yaml.safe_load(yaml.safe_dump(CFG))
    cfg["train"]["frozen_views"] = -1
    with pytest.raises(InputError, match="frozen_views"):
        make_trainer(tiny_catalog, tmp_path, cfg)
