"""The shared store of a frozen trunk's test-time-crop features: each photo goes through a trunk once per work
folder (folds, runs and scoring reuse its row), training and scoring give what they gave without the store, and
a trunk that trains or changes shares nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import matching.runs.run as runs
import siamese.trunk_cache as trunk_cache
from data.catalog import load_catalog, read_folds
from data.checkpoint import save_checkpoint
from data.folds import fold_split
from data.settings import Settings, check
from siamese.families import family_of
from siamese.model import build_model
from siamese.trainer import build_fold_data
from siamese.trunk_cache import TrunkStore, frozen_trunk, store_for, weights_digest

MODEL = {"name": "tiny_store", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8, "neck": {"dim": 16, "dropout": 0.1}}
FROZEN = [{"size": 32, "blocks": [{"epochs": 2, "lr": 3e-3, "K": 1000, "freeze_branch": True, "batch": 8},
                                  {"epochs": 1, "lr": 1e-3, "K": 0.5, "freeze_branch": True, "batch": 8}]}]


def config(stages=FROZEN) -> dict:
    return {"model": dict(MODEL), "train": {"seed": 5, "stages": stages, "workers": 0, "feature_batch": 16,
                                            "sparse_k": None, "frozen_views": 1, "augment_strength": 0.5}}


def trainer(catalog_dir, run_dir, fold: int, trunk_dir=None, stages=FROZEN):
    catalog = load_catalog(catalog_dir, need_test=False)
    train_df, val_df = fold_split(read_folds(catalog_dir / "folds.csv"), fold, include_singletons=True)
    cfg = config(stages)
    torch.manual_seed(0)  # the same random trunk in every fold: as a pretrained one would be
    return family_of(cfg).trainer(cfg, build_fold_data(catalog, train_df, val_df), run_dir, torch.device("cpu"),
                                  log=lambda _: None, trunk_dir=trunk_dir)


@pytest.fixture
def counted(monkeypatch):
    """The images the store sends through a trunk, per call."""
    calls: list[int] = []
    real = trunk_cache.compute_features

    def counting(module, paths, *args, **kwargs):
        calls.append(len(paths))
        return real(module, paths, *args, **kwargs)

    monkeypatch.setattr(trunk_cache, "compute_features", counting)
    return calls


def test_only_a_trunk_that_never_trains_is_shared(tmp_path):
    assert frozen_trunk(check(config(), Settings))
    thawed = [{"size": 32, "blocks": [dict(FROZEN[0]["blocks"][0]), dict(FROZEN[0]["blocks"][1],
                                                                          freeze_branch=False)]}]
    assert not frozen_trunk(check(config(thawed), Settings))
    partial = check(dict(config(), train=dict(config()["train"], trainable_stages=1)), Settings)
    assert not frozen_trunk(partial)
    assert store_for(tmp_path, build_model(MODEL).branch, partial) is None
    assert store_for(None, build_model(MODEL).branch, check(config(), Settings)) is None


def test_the_digest_follows_every_weight():
    branch = build_model(MODEL).branch
    before = weights_digest(branch)
    assert weights_digest(branch) == before
    with torch.no_grad():
        next(branch.parameters()).view(-1)[0] += 1e-3
    assert weights_digest(branch) != before


def test_a_changed_trunk_or_box_recomputes_and_a_set_is_found_in_another_sets_file(tiny_catalog, tmp_path, counted):
    catalog = load_catalog(tiny_catalog, need_test=False)
    names = catalog.train["Image"].tolist()
    paths = [catalog.train_path(n) for n in names]
    branch = build_model(MODEL).branch.eval()
    store = TrunkStore(tmp_path, branch, check(config(), Settings)["model"], max_megapixels=60)
    cpu = torch.device("cpu")
    whole = store.features(paths[:6], [None] * 6, 32, device=cpu, workers=0)
    assert counted == [6]
    part = store.features(paths[2:4], [None] * 2, 32, device=cpu, workers=0)  # a subset: no trunk pass
    np.testing.assert_array_equal(part, whole[2:4])
    grown = store.features(paths[:8], [None] * 8, 32, device=cpu, workers=0)  # two new photos only
    assert counted == [6, 2]
    np.testing.assert_allclose(grown[:6], whole, atol=1e-6)
    store.features(paths[:2], [(2.0, 2.0, 20.0, 14.0)] * 2, 32, device=cpu, workers=0)  # new boxes
    assert counted == [6, 2, 2]
    with torch.no_grad():
        next(branch.parameters()).view(-1)[0] += 1e-2  # another trunk: its own rows
    store.features(paths[:6], [None] * 6, 32, device=cpu, workers=0)
    assert counted == [6, 2, 2, 6]
    mirrored = store.features(paths[:2], [None] * 2, 32, device=cpu, workers=0, mirrored=True)
    assert counted[-1] == 2 and mirrored.shape == (2, whole.shape[1])


def test_folds_and_scoring_reuse_the_trunk_and_train_as_without_it(tiny_catalog, tmp_path, counted):
    store_dir = tmp_path / "features" / "trunk"
    plain = trainer(tiny_catalog, tmp_path / "plain", 0)
    plain_metrics = plain.fit()
    assert counted == []  # no store: nothing goes through it

    shared = trainer(tiny_catalog, tmp_path / "fold0", 0, store_dir)
    metrics = shared.fit()
    seen = set(shared.data.train_paths) | set(shared.data.val_paths)
    assert sum(counted) == len(seen)  # every test-time crop once
    np.testing.assert_allclose(metrics["val_map5"], plain_metrics["val_map5"], atol=1e-6)
    for (key, a), b in zip(shared.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=key)

    other = trainer(tiny_catalog, tmp_path / "fold1", 1, store_dir)
    other.fit()  # its known photos are fold 0's two sides: only its new whales are new to the store
    new = (set(other.data.train_paths) | set(other.data.val_paths)) - seen
    assert len(new) < len(seen) and sum(counted) == len(seen) + len(new)

    # scoring fold 0's run: the catalog's crops come from the store, the neck over them as the encoder gives
    catalog = load_catalog(tiny_catalog, need_test=False)
    names = catalog.train["Image"].tolist()
    paths, boxes = [catalog.train_path(n) for n in names], [catalog.box(n) for n in names]
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model": shared.model.state_dict()})
    for tta in ("none", "flip"):
        run = runs.Run("tiny_store", 0, tmp_path, dict(config(), score={"tta": tta}), ckpt, 32)
        feat_dir = tmp_path / "features" / "tiny_store" / f"fold0_{tta}"
        got = runs.cached_features(shared.model.encoder(), run, names, paths, boxes, feat_dir / "catalog.npz",
                                   torch.device("cpu"), workers=0)
        direct = runs.compute_features(shared.model.encoder(), paths, boxes, 32, workers=0, flip_tta=tta == "flip")
        np.testing.assert_allclose(got, direct, atol=1e-5)
    unseen = set(paths) - seen - new  # photos no fold trained or validated on (new whales on no fold's side)
    assert len(unseen) < len(paths) / 4
    assert counted[-2:] == [len(unseen), len(names)]  # then the mirrors of flip TTA, once
