"""The training loop on a tiny catalog: resume equals an unbroken run, frozen blocks, stage hand-over."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data.catalog import load_catalog, read_folds
from data.checkpoint import load_checkpoint
from data.folds import fold_split
from siamese.families import family_of
from siamese.schedule import Position
from siamese.trainer import FoldTrainer, build_fold_data
from tests.fold_runs import assert_same_weights, deterministic, fold_trainer, killed_then_resumed

MODEL = {"name": "tiny", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8}
STAGES = [
    {"size": 32, "blocks": [{"epochs": 2, "lr": 1e-3, "K": 1000, "freeze_branch": True, "batch": 8},
                            {"epochs": 1, "lr": 1e-3, "K": 1000, "freeze_branch": False, "batch": 8}]},
    {"size": 40, "blocks": [{"epochs": 2, "lr": 5e-4, "K": 0.5, "freeze_branch": False, "batch": 8}]},
]


def make_trainer(catalog_dir, run_dir, **model) -> FoldTrainer:
    return fold_trainer(catalog_dir, run_dir, {"model": dict(MODEL, **model), "train": {
        "seed": 3, "stages": STAGES, "workers": 0, "feature_batch": 16, "sparse_k": None}})


@pytest.fixture(scope="module")
def unbroken(tiny_catalog, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("unbroken")
    metrics = make_trainer(tiny_catalog, run_dir).fit()
    return run_dir, metrics


def test_every_block_is_validated_and_each_stage_keeps_its_best(unbroken):
    run_dir, metrics = unbroken
    assert len(metrics) == 5
    validated = metrics.dropna(subset=["val_map5"])
    assert list(zip(validated["size"], validated["block"])) == [(32, 1), (32, 2), (40, 1)]
    assert validated["val_map5"].between(0, 1).all()
    for size in (32, 40):
        best = load_checkpoint(run_dir / f"{size}px" / "best.pt")
        stage_rows = validated[validated["size"] == size]
        assert best["val_map5"] == pytest.approx(stage_rows["val_map5"].max(), abs=1e-6)
        written = pd.read_csv(run_dir / f"{size}px" / "metrics.csv")
        assert len(written) == (metrics["size"] == size).sum()


def test_a_killed_run_resumed_ends_with_the_same_weights_and_metrics(unbroken, tiny_catalog, tmp_path, monkeypatch):
    run_dir, metrics = unbroken
    # killed at the second epoch of the 40 px stage (the 5th), before that stage's first validation
    resumed = killed_then_resumed(lambda d: make_trainer(tiny_catalog, d), tmp_path, monkeypatch, kill_at=5)
    pd.testing.assert_frame_equal(deterministic(resumed), deterministic(metrics))
    for size in (32, 40):
        assert_same_weights(run_dir / f"{size}px" / "last.pt", tmp_path / f"{size}px" / "last.pt")


def test_a_frozen_block_trains_the_head_and_leaves_the_branch_alone(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path)
    trainer.stages = trainer.stages[:1]
    branch_before = {k: v.clone() for k, v in trainer.model.branch.state_dict().items()}
    head_before = {k: v.clone() for k, v in trainer.model.head.state_dict().items()}
    trainer.start_stage(0)
    trainer.run_epoch(Position(0, 0, 0))
    for k, v in trainer.model.branch.state_dict().items():
        assert torch.equal(v, branch_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in trainer.model.head.state_dict().items())


def test_mining_set_excludes_singletons_and_new_whale(tiny_catalog, tmp_path):
    data = make_trainer(tiny_catalog, tmp_path).data
    labels = data.train_labels[data.mining_index]
    ids, counts = np.unique(labels, return_counts=True)
    assert (counts >= 2).all() and "new_whale" not in ids
    all_ids, all_counts = np.unique(data.train_labels, return_counts=True)
    assert set(ids) == set(all_ids[all_counts >= 2])


def test_freeze_bn_keeps_batchnorm_as_loaded_while_the_branch_trains(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path)
    trainer.tcfg["freeze_bn"] = True
    trainer.tcfg["augment_strength"] = 0.5
    trainer.stages = trainer.stages[:1]
    bns = [m for m in trainer.model.branch.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns
    bn_before = [{k: v.clone() for k, v in m.state_dict().items()} for m in bns]
    conv_before = trainer.model.branch.backbone.conv_stem.weight.clone()
    trainer.start_stage(0)
    trainer.run_epoch(Position(0, 1, 0))  # the unfrozen block
    for m, before in zip(bns, bn_before):
        assert not m.training and all(not p.requires_grad for p in m.parameters(recurse=False))
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[k]), k  # statistics, scale and shift as loaded
    assert not torch.equal(trainer.model.branch.backbone.conv_stem.weight, conv_before)


def test_without_freeze_bn_batchnorm_statistics_follow_the_batches(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path)
    trainer.stages = trainer.stages[:1]
    bn = next(m for m in trainer.model.branch.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    mean_before = bn.running_mean.clone()
    trainer.start_stage(0)
    trainer.run_epoch(Position(0, 1, 0))
    assert not torch.equal(bn.running_mean, mean_before)


def test_calibrated_cosine_head_separates_same_and_other_whale_cosines():
    from siamese.head import PairHead
    from siamese.objectives.pairs import calibrate_cosine_head

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 3).astype(str)
    centres = rng.normal(size=(20, 16))
    feats = centres[labels.astype(int)] + 0.5 * rng.normal(size=(60, 16))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True) * 4).astype(np.float32)
    head = PairHead(16, hidden=4, init="cosine")
    scale, offset = calibrate_cosine_head(head, feats, labels)
    cos = feats @ feats.T / 16
    same = (labels[:, None] == labels[None, :]) & ~np.eye(60, dtype=bool)
    assert cos[labels[:, None] != labels[None, :]].mean() < offset < cos[same].mean()
    assert scale > 1.0
    f = torch.from_numpy(feats)
    logits = head(f[:, None, :].expand(60, 60, 16).reshape(-1, 16), f.repeat(60, 1)).reshape(60, 60).detach().numpy()
    other = labels[:, None] != labels[None, :]
    assert logits[same].mean() > 0 > logits[other].mean()
    assert (logits[same] > 0).mean() > 0.9 and (logits[other] < 0).mean() > 0.6


def test_validate_start_keeps_the_untrained_model_as_the_first_best(tiny_catalog, tmp_path):
    trainer = make_trainer(tiny_catalog, tmp_path, normalize=True, head_init="cosine")
    trainer.tcfg["validate_start"] = True
    trainer.stages = trainer.stages[:1]
    metrics = trainer.fit()
    first = metrics.iloc[0]
    assert (first["block"], first["epoch"]) == (0, 0) and 0 <= first["val_map5"] <= 1
    assert len(metrics) == 4 and list(metrics["block"]) == [0, 1, 1, 2]
    best = load_checkpoint(tmp_path / "32px" / "best.pt")
    assert best["val_map5"] == pytest.approx(metrics["val_map5"].max(), abs=1e-6)
    assert best["val_map5"] >= first["val_map5"]


def test_compile_option_keeps_checkpoint_names_and_the_scaler_is_off_without_fp16(tiny_catalog, tmp_path):
    plain = make_trainer(tiny_catalog, tmp_path / "a")
    catalog = load_catalog(tiny_catalog, need_test=False)
    train_df, val_df = fold_split(read_folds(tiny_catalog / "folds.csv"), 0, include_singletons=True)
    cfg = {"model": dict(MODEL), "train": {"seed": 3, "stages": STAGES, "workers": 0, "compile": True}}
    compiled = family_of(cfg).trainer(cfg, build_fold_data(catalog, train_df, val_df), tmp_path / "b",
                                      torch.device("cpu"), log=lambda _: None)
    assert compiled.model.state_dict().keys() == plain.model.state_dict().keys()
    assert not compiled.scaler.is_enabled() and not plain.scaler.is_enabled()  # CPU: no fp16 autocast


def test_neck_lr_mult_gives_the_siamese_neck_its_own_lr_and_arcface_refuses_it(tiny_catalog, tmp_path):
    from data.errors import InputError

    catalog = load_catalog(tiny_catalog, need_test=False)
    train_df, val_df = fold_split(read_folds(tiny_catalog / "folds.csv"), 0, include_singletons=True)
    data = build_fold_data(catalog, train_df, val_df)
    model = {**MODEL, "neck": {"dim": 8, "dropout": 0.0}}
    cfg = {"model": model, "train": {"stages": STAGES, "workers": 0, "neck_lr_mult": 3.0}}
    trainer = family_of(cfg).trainer(cfg, data, tmp_path / "s", torch.device("cpu"), log=lambda _: None)
    trainer.run_epoch(Position(0, 0, 0))
    groups = {g["mult"]: g for g in trainer.optimizer.param_groups}
    assert {id(p) for p in groups[3.0]["params"]} == {id(p) for p in trainer.model.neck.parameters()}
    assert groups[3.0]["lr"] == pytest.approx(3.0 * groups[1.0]["lr"])
    arc = {"model": {"name": "a", "family": "arcface", "branch": "test_efficientnet", "pretrained": False},
           "train": {"stages": [{"size": 32, "blocks": [{"epochs": 1, "lr": 1e-3, "batch": 8}]}], "workers": 0,
                     "neck_lr_mult": 3.0}}
    with pytest.raises(InputError, match="head_lr_mult"):
        family_of(arc).trainer(arc, data, tmp_path / "a", torch.device("cpu"))
