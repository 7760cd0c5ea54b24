"""Helpers of the fold-trainer tests (test_train.py, test_neck.py, test_arcface_train.py): a trainer of a config
on fold 0 of a catalog, and a run killed part-way then resumed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from data.catalog import load_catalog, read_folds
from data.checkpoint import load_checkpoint
from data.folds import fold_split
from siamese.families import family_of
from siamese.trainer import FoldTrainer, build_fold_data


class Killed(Exception):
    pass


def fold_trainer(catalog_dir: Path, run_dir: Path, cfg: dict) -> FoldTrainer:
    """The trainer of ``cfg``'s family on fold 0 of ``catalog_dir`` (initial weights seeded), silent."""
    catalog = load_catalog(catalog_dir, need_test=False)
    train_df, val_df = fold_split(read_folds(catalog_dir / "folds.csv"), 0, include_singletons=True)
    torch.manual_seed(0)
    return family_of(cfg).trainer(cfg, build_fold_data(catalog, train_df, val_df), run_dir, torch.device("cpu"),
                                  log=lambda _: None)


def deterministic(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop(columns=["seconds"]).reset_index(drop=True)


def killed_then_resumed(make: Callable[[Path], FoldTrainer], run_dir: Path, monkeypatch, kill_at: int) -> pd.DataFrame:
    """Fit ``make(run_dir)`` until its ``kill_at``-th epoch dies, then a fresh trainer with ``resume``; its metrics."""
    original = FoldTrainer.run_epoch
    calls = {"n": 0}

    def dying(self, pos):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return original(self, pos)

    monkeypatch.setattr(FoldTrainer, "run_epoch", dying)
    with pytest.raises(Killed):
        make(run_dir).fit()
    monkeypatch.setattr(FoldTrainer, "run_epoch", original)
    return make(run_dir).fit(resume=True)


def assert_same_weights(a: Path, b: Path) -> None:
    """The models of two checkpoints are bit-identical."""
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
