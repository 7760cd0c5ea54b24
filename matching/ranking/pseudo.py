"""Pseudo-labels: test photos whose best whale scores above a confidence threshold join the catalog under that
whale (the 5th place retrained on about 3.2k such photos). The threshold's precision is measured on
out-of-fold rows, where the truth is known: of the queries whose best score is above it, the share whose
best whale is their own (a ``new_whale`` query above it counts as wrong).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from data.catalog import load_catalog, read_folds, read_train_csv
from data.errors import InputError
from data.io import place_file, staged_dir
from matching.matrix import ScoreMatrix
from matching.ranking.rank import WhaleGroups, whale_best


def best_whales(matrix: ScoreMatrix, labels: Mapping[str, str]) -> pd.DataFrame:
    """``Image, Id, score``: each query's best whale (by its best photo) and that score."""
    missing = [g for g in matrix.gallery if g not in labels]
    if missing:
        raise InputError(matrix.source, f"{len(missing)} catalog images are not in train.csv (first: {missing[0]})")
    groups = WhaleGroups.from_labels([labels[g] for g in matrix.gallery])
    if len(groups) == 0:
        raise InputError(matrix.source, "the catalog has no known whale")
    best = whale_best(matrix.scores, groups)
    top = best.argmax(axis=1)
    return pd.DataFrame({"Image": np.asarray(matrix.query, dtype=str), "Id": groups.labels[top],
                         "score": best[np.arange(len(top)), top]})


def threshold_precision(oof: ScoreMatrix, labels: Mapping[str, str],
                        thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Per threshold: out-of-fold queries above it (``selected``), how many of their best whales are right
    (``correct``), ``precision`` and the ``share`` of queries selected. Default thresholds: 0.50 .. 0.99."""
    missing = [q for q in oof.query if q not in labels]
    if missing:
        raise InputError(oof.source, f"{len(missing)} out-of-fold images are not in train.csv (first: {missing[0]})")
    pred = best_whales(oof, labels)
    right = (pred["Id"].to_numpy() == np.asarray([labels[q] for q in oof.query], dtype=str))
    scores = pred["score"].to_numpy()
    if thresholds is None:
        thresholds = np.round(np.arange(0.50, 0.995, 0.01), 2)
    rows = []
    for t in np.asarray(thresholds, dtype=np.float64):
        above = scores > t
        n = int(above.sum())
        rows.append({"threshold": float(t), "selected": n, "correct": int(right[above].sum()),
                     "precision": float(right[above].mean()) if n else float("nan"), "share": n / max(len(scores), 1)})
    return pd.DataFrame(rows)


def choose_threshold(table: pd.DataFrame, min_precision: float) -> float | None:
    """The lowest threshold whose out-of-fold precision is at least ``min_precision`` (None when none is)."""
    ok = table[(table["selected"] > 0) & (table["precision"] >= min_precision)]
    return None if ok.empty else float(ok["threshold"].min())


def pseudo_labels(test: ScoreMatrix, labels: Mapping[str, str], threshold: float) -> pd.DataFrame:
    """``Image, Id, score`` of the test photos whose best whale scores above ``threshold``, best first."""
    pred = best_whales(test, labels)
    return pred[pred["score"] > threshold].sort_values("score", ascending=False).reset_index(drop=True)


def write_pseudo_catalog(data_dir: Path, out: Path, pseudo: pd.DataFrame, *, force: bool = False) -> dict[str, int]:
    """A new data folder ``out``: ``train.csv`` = the catalog plus ``pseudo`` (``Image, Id``), ``train/`` with the
    catalog's photos and the pseudo-labelled test photos, ``test/`` as before (links, else copies), ``boxes.csv``
    as before, ``folds.csv`` (when there is one) with the pseudo rows at fold -1 (training only), ``pseudo.csv``.
    Written under a temporary name and renamed into place."""
    data_dir, out = Path(data_dir), Path(out)
    if out.exists() and not force:
        raise InputError(out, "already exists; use --force to replace it")
    if out.exists() and not (out / "pseudo.csv").is_file():
        raise InputError(out, "exists and is not a pseudo-label folder (no pseudo.csv); refusing to replace it")
    train = read_train_csv(data_dir / "train.csv")
    clash = sorted(set(pseudo["Image"]) & set(train["Image"]))
    if clash:
        raise InputError(data_dir / "train.csv", f"test image {clash[0]!r} has the name of a catalog image")
    catalog = load_catalog(data_dir, need_test=True)
    links = dict.fromkeys(("hardlink", "symlink", "copy"), 0)
    with staged_dir(out) as tmp:
        for name in train["Image"]:
            links[place_file(catalog.train_path(name), tmp / "train" / name, "auto")] += 1
        for name in pseudo["Image"]:
            links[place_file(catalog.test_path(name), tmp / "train" / name, "auto")] += 1
        for name in catalog.test_images:
            links[place_file(catalog.test_path(name), tmp / "test" / name, "auto")] += 1
        extended = pd.concat([train[["Image", "Id"]], pseudo[["Image", "Id"]]], ignore_index=True)
        extended.to_csv(tmp / "train.csv", index=False)
        pseudo.to_csv(tmp / "pseudo.csv", index=False)
        for extra in ("boxes.csv", "truth.csv", "sample_submission.csv"):
            if (data_dir / extra).is_file():
                shutil.copy2(data_dir / extra, tmp / extra)
        if (data_dir / "folds.csv").is_file():
            folds = read_folds(data_dir / "folds.csv")
            added = pseudo[["Image", "Id"]].assign(fold=-1)
            pd.concat([folds[["Image", "Id", "fold"]], added], ignore_index=True).to_csv(tmp / "folds.csv", index=False)
    return links
