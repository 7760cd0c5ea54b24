"""Partial fine-tuning (``train.trainable_stages``) and checkpoint averaging (``train.average_last``): the stem
and tail of a branch give the branch's features, a tail block trains the last stages only and leaves the earlier
ones bit-identical, in both families; a resumed run matches an unbroken one; ``averaged.pt`` is the mean of the
stage's last k epochs' weights and becomes ``best.pt`` only where it validates better."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from data.checkpoint import load_checkpoint
from data.errors import InputError
from siamese.branch import create_branch
from siamese.stages import split_branch
from siamese.trainer import CheckpointAverage, FoldTrainer
from tests.fold_runs import assert_same_weights, deterministic, fold_trainer, killed_then_resumed

SIAMESE = {"name": "tiny_tail", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
           "weights": None, "head_hidden": 8, "neck": {"dim": 16, "dropout": 0.1}}
ARCFACE = {"family": "arcface", "name": "tiny_tail_arc", "branch": "test_efficientnet", "in_chans": 3, "pool": "gem",
           "pretrained": False, "weights": None, "embedding_dim": 16, "arc_s": 10.0, "arc_m": 0.3}
TAIL = [{"size": 32, "blocks": [{"epochs": 2, "lr": 3e-3, "K": 1000, "freeze_branch": True, "batch": 8},
                                {"epochs": 3, "lr": 3e-3, "K": 0.5, "freeze_branch": False, "batch": 8}]}]


def tail_trainer(catalog_dir, run_dir, model=SIAMESE, stages=TAIL, **train) -> FoldTrainer:
    if model is ARCFACE:  # nothing is mined: no K
        stages = [{**s, "blocks": [{k: v for k, v in b.items() if k != "K"} for b in s["blocks"]]} for s in stages]
    train = {"seed": 5, "stages": stages, "workers": 0, "feature_batch": 16, "frozen_views": 1,
             "augment_strength": 0.5, "trainable_stages": 2, **train}
    if model is not ARCFACE:
        train["sparse_k"] = None
    return fold_trainer(catalog_dir, run_dir, {"model": dict(model), "train": train})


@pytest.mark.parametrize("name, blocks", [("test_efficientnet", None), ("test_efficientnet", 4), ("kernel", None)])
def test_tail_of_stem_is_the_branch(name, blocks):
    torch.manual_seed(0)
    branch = create_branch(name, in_chans=1 if name == "kernel" else 3, pool="gem", blocks=blocks,
                           kernel_depth=1, normalize=True).eval()
    stem, tail = split_branch(branch, 2)
    x = torch.rand(2, branch.in_chans, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tail(stem(x)), branch(x))
    names = {id(p) for p in tail.stage_parameters()}
    assert names and len(names) < len(list(branch.parameters()))
    assert not names & {id(p) for p in stem.branch.backbone.stem.parameters()} if name == "kernel" else True


def test_impossible_cuts_are_refused():
    branch = create_branch("test_efficientnet", pool="max")
    for n in (0, 5):  # 5 stages: at least one stays in the stem
        with pytest.raises(InputError, match="trainable_stages must be in 1..4"):
            split_branch(branch, n)
    with pytest.raises(InputError, match="EfficientNet/MobileNet-style or kernel"):
        split_branch(create_branch("resnet18", pool="max"), 1)


def _stage_params(trainer, first_trainable: int) -> tuple[dict, dict]:
    """The branch's weights split into (earlier stages and stem, the rest), cloned."""
    frozen, tail = {}, {}
    for k, v in trainer.model.branch.state_dict().items():
        parts = k.split(".") + ["", ""]
        late_stage = parts[1] == "blocks" and int(parts[2]) >= first_trainable
        late = parts[0] == "pool" or parts[1] in ("conv_head", "bn2") or late_stage
        (tail if late else frozen)[k] = v.clone()
    return frozen, tail


@pytest.fixture(scope="module")
def unbroken(tiny_catalog, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tail_unbroken")
    trainer = tail_trainer(tiny_catalog, run_dir)
    before = _stage_params(trainer, 3)
    calls = {"stem": 0}
    stem_forward = trainer.stem.forward

    def counted(x):
        calls["stem"] += 1
        return stem_forward(x)

    trainer.stem.forward = counted
    metrics = trainer.fit()
    return run_dir, metrics, trainer, before, calls


def test_a_tail_block_trains_the_last_stages_only(unbroken):
    _, metrics, trainer, (frozen, tail), _ = unbroken
    after_frozen, after_tail = _stage_params(trainer, 3)
    for k, v in frozen.items():
        assert torch.equal(after_frozen[k], v), k
    changed = [k for k, v in tail.items() if v.is_floating_point() and not torch.equal(after_tail[k], v)]
    assert any(".blocks.3." in k for k in changed) and any(".blocks.4." in k for k in changed)
    assert len(trainer.frozen_feats.shape) == 5  # the tail block trained on stem maps [views, N, C, H, W]
    assert metrics["val_map5"].notna().sum() == 2


def test_stem_maps_are_computed_once_per_photo_and_view(unbroken):
    _, _, trainer, _, calls = unbroken
    d, views = trainer.data, trainer.frozen_views + 1
    photos = len(trainer.objective.mine_idx) * views + len(d.train_paths) + len(d.val_paths)
    batches = sum(-(-len(v) // 16) for v in trainer.stem_cache.values())
    assert calls["stem"] == batches  # no stem batch was run twice
    assert sum(len(v) for v in trainer.stem_cache.values()) <= photos


def test_a_killed_tail_run_resumed_ends_with_the_same_weights(unbroken, tiny_catalog, tmp_path, monkeypatch):
    run_dir, metrics, _, _, _ = unbroken
    resumed = killed_then_resumed(lambda d: tail_trainer(tiny_catalog, d), tmp_path, monkeypatch, kill_at=4)
    pd.testing.assert_frame_equal(deterministic(resumed), deterministic(metrics))
    assert_same_weights(run_dir / "32px" / "last.pt", tmp_path / "32px" / "last.pt")


def test_the_arcface_family_trains_the_tail_too(tiny_catalog, tmp_path):
    trainer = tail_trainer(tiny_catalog, tmp_path, model=ARCFACE)
    frozen, tail = _stage_params(trainer, 3)
    trainer.fit()
    after_frozen, after_tail = _stage_params(trainer, 3)
    assert all(torch.equal(after_frozen[k], v) for k, v in frozen.items())
    assert any(not torch.equal(after_tail[k], v) for k, v in tail.items() if v.is_floating_point())


def test_checkpoint_average_means_floats_and_keeps_the_latest_counter():
    avg = CheckpointAverage(2)
    avg.add({"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)})
    avg.add({"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)})
    mean = avg.mean()
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and int(mean["n"]) == 4 and avg.count == 2
    again = CheckpointAverage(2)
    again.load_state_dict(avg.state_dict())
    assert torch.equal(again.mean()["w"], mean["w"])


AVERAGED = [{"size": 32, "blocks": [{"epochs": 4, "lr": 3e-3, "K": 1000, "freeze_branch": True, "batch": 8}]}]


def test_averaged_pt_is_the_mean_of_the_last_epochs(tiny_catalog, tmp_path, monkeypatch):
    seen = []
    log_row = FoldTrainer._log_row

    def snapshot(self, row):
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
        log_row(self, row)

    monkeypatch.setattr(FoldTrainer, "_log_row", snapshot)
    trainer = tail_trainer(tiny_catalog, tmp_path / "a", stages=AVERAGED, trainable_stages=0, average_last=3)
    metrics = trainer.fit()
    averaged = load_checkpoint(tmp_path / "a" / "32px" / "averaged.pt")
    assert averaged["epochs_averaged"] == 3
    for k, v in averaged["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, sum(s[k] for s in seen[-3:]) / 3)
    row = metrics[metrics["averaged"].notna()]
    assert len(row) == 1 and row["val_map5"].iloc[0] == pytest.approx(averaged["val_map5"], abs=1e-6)
    best = load_checkpoint(tmp_path / "a" / "32px" / "best.pt")
    epochs_best = metrics[metrics["averaged"].isna()]["val_map5"].max()
    assert (best["val_map5"] == averaged["val_map5"]) == (averaged["val_map5"] > epochs_best)

    monkeypatch.setattr(FoldTrainer, "_log_row", log_row)
    resumed = killed_then_resumed(lambda d: tail_trainer(tiny_catalog, d, stages=AVERAGED, trainable_stages=0,
                                                         average_last=3, mine_every=1), tmp_path / "b",
                                  monkeypatch, kill_at=3)
    assert resumed["averaged"].notna().sum() == 1
    assert_same_weights(tmp_path / "a" / "32px" / "averaged.pt", tmp_path / "b" / "32px" / "averaged.pt")
