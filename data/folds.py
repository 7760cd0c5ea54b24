"""K-fold split of the catalog for Siamese training, after the 5th-place scheme of the 2019 competition.

``fold`` of an image is the one fold whose validation set holds it, :data:`TRAIN_ONLY` (-1) when it is in
the training set of every fold, or :data:`UNUSED` (-2) for a ``new_whale`` photo that no fold uses.

- Whales with 1 image: -1. They are catalog-only: in no validation set, and they give no training pairs,
  so :func:`fold_split` leaves them out of the training set unless asked.
- Whales with 2 images: -1 (a validation image would leave a lone training image).
- Whales with 3+ images: their photos go round-robin over the folds (a global cursor keeps the folds
  balanced), so that every fold keeps at least ``n - ceil(n / n_folds)`` of them in training.
- ``new_whale``: only in validation, as ``new_whale_share`` (27.6%) of each validation set; the rest -2.
  No training set ever holds a ``new_whale`` photo.
- Near-duplicate photos (``groups``) share one fold value: photos of one whale in one group move as a
  unit; a group spanning several Ids goes to training (-1) for its known whales and to -2 for its
  ``new_whale`` photos, so no photo is ever validated against its own copy.

Counts on the Kaggle 2019 labels (4 folds, no groups): 2,570 photos of 2-image whales and 11,054 of
3+-image whales (1,646 whales) give per fold about 2,763 known validation photos, 1,053 ``new_whale``
(27.6%), i.e. ~3,817 validation and ~10,861 training photos (singletons excluded). The 5th-place code
reports ~4,013 / ~10,718: for each 3-image whale it validates one photo in *every* fold, re-using one photo
in its fourth fold; a single ``fold`` column gives each photo one validation fold, so here a 3-image whale
sits out of validation in one fold out of four.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

from data.catalog import NEW_WHALE, TRAIN_ONLY, UNUSED

__all__ = ["NEW_WHALE_SHARE", "TRAIN_ONLY", "UNUSED", "fold_split", "fold_summary", "make_folds"]

NEW_WHALE_SHARE = 0.276


def _units(names: list[str], groups: dict[str, int] | None) -> dict[object, list[str]]:
    """Photos of ``names`` keyed by duplicate group (a photo outside every group is its own unit)."""
    units: dict[object, list[str]] = {}
    for name in names:
        key = ("g", groups[name]) if groups is not None and name in groups else ("i", name)
        units.setdefault(key, []).append(name)
    return units


def _spread_known(train: pd.DataFrame, n_folds: int, rng: np.random.Generator,
                  groups: dict[str, int] | None) -> dict[str, int]:
    known = train[train["Id"] != NEW_WHALE]
    fold = dict.fromkeys(known["Image"], TRAIN_ONLY)
    by_whale = known.groupby("Id", sort=True)["Image"].apply(sorted)
    spread = [w for w, names in by_whale.items() if len(names) >= 3]
    cursor = 0
    for whale in rng.permutation(np.array(spread, dtype=object)):
        units = list(_units(by_whale[whale], groups).values())
        if len(units) < 2:
            continue
        for j in rng.permutation(len(units)):
            for name in units[j]:
                fold[name] = cursor % n_folds
            cursor += 1
    return fold


def _reconcile(fold: dict[str, int], train: pd.DataFrame, groups: dict[str, int]) -> None:
    """Photos of one duplicate group that got different folds (several Ids) all go to training."""
    ids = dict(zip(train["Image"], train["Id"], strict=True))
    members: dict[int, list[str]] = {}
    for name, g in groups.items():
        if name in ids:
            members.setdefault(g, []).append(name)
    for names in members.values():
        known = [n for n in names if ids[n] != NEW_WHALE]
        if len({fold[n] for n in known}) > 1:
            for n in known:
                fold[n] = TRAIN_ONLY


def _pick_new_whales(train: pd.DataFrame, fold: dict[str, int], n_folds: int, share: float,
                     rng: np.random.Generator, groups: dict[str, int] | None) -> dict[str, int]:
    """new_whale photos for each validation set, ``share`` of it; the rest (and copies of known photos) unused."""
    new = sorted(train.loc[train["Id"] == NEW_WHALE, "Image"])
    out = dict.fromkeys(new, UNUSED)
    known_groups = {groups[n] for n in fold if groups is not None and n in groups}
    units = [u for key, u in _units(new, groups).items() if not (key[0] == "g" and key[1] in known_groups)]
    val_known = np.bincount([f for f in fold.values() if f >= 0], minlength=n_folds)
    quota = [round(v * share / (1 - share)) for v in val_known]
    order = iter(rng.permutation(len(units)))
    for k in range(n_folds):
        taken = 0
        while taken < quota[k]:
            j = next(order, None)
            if j is None:
                return out
            for name in units[j]:
                out[name] = k
            taken += len(units[j])
    return out


def make_folds(train: pd.DataFrame, n_folds: int = 4, seed: int = 0, groups: dict[str, int] | None = None,
               *, new_whale_share: float = NEW_WHALE_SHARE) -> pd.DataFrame:
    """``Image,Id,fold`` for every row of ``train`` (see the module doc for the scheme); same seed, same folds.

    ``groups`` maps photos to near-duplicate group ids (:func:`data.duplicates.duplicate_groups`).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if not 0 <= new_whale_share < 1:
        raise ValueError(f"new_whale_share must be in [0, 1), got {new_whale_share}")
    rng = np.random.default_rng(seed)
    fold = _spread_known(train, n_folds, rng, groups)
    if groups:
        _reconcile(fold, train, groups)
    fold.update(_pick_new_whales(train, fold, n_folds, new_whale_share, rng, groups))
    out = train[["Image", "Id"]].reset_index(drop=True).copy()
    out["fold"] = out["Image"].map(fold).astype(int)
    return out


def fold_split(folds_df: pd.DataFrame, k: int, *, include_singletons: bool = False
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training set, validation set) of fold ``k``.

    Training: known-whale photos not validated in fold ``k``; photos of whales with a single photo in the
    catalog only with ``include_singletons`` (they give no pairs, but belong in a validation gallery).
    Validation: the photos whose ``fold`` is ``k``, ``new_whale`` included.
    """
    fold = folds_df["fold"].to_numpy()
    if k < 0 or k > fold.max(initial=-1):
        raise ValueError(f"fold {k} not in folds (0..{fold.max(initial=-1)})")
    known = (folds_df["Id"] != NEW_WHALE).to_numpy()
    in_train = known & (fold != k) & (fold != UNUSED)
    if not include_singletons:
        per_whale = folds_df["Id"].map(folds_df["Id"].value_counts()).to_numpy()
        in_train &= per_whale > 1
    train = folds_df[in_train].reset_index(drop=True)
    val = folds_df[fold == k].reset_index(drop=True)
    return train, val


def fold_summary(folds_df: pd.DataFrame) -> pd.DataFrame:
    """Per fold: training photos, validation photos, ``new_whale`` among them and its share."""
    rows = []
    n_folds = int(folds_df["fold"].to_numpy().max(initial=-1)) + 1
    for k in range(n_folds):
        train, val = fold_split(folds_df, k)
        new = int((val["Id"] == NEW_WHALE).sum())
        rows.append({"fold": k, "train": len(train), "val": len(val), "val_new_whale": new,
                     "new_whale_share": new / len(val) if len(val) else math.nan})
    return pd.DataFrame(rows)


def _stable(seed: int, text: str) -> str:
    return hashlib.sha1(f"{seed}|{text}".encode()).hexdigest()


def leave_one_out_queries(train: pd.DataFrame, n: int, seed: int = 0, new_whale_share: float = 0.276) -> list[str]:
    """Up to ``n`` catalog photos to query against the rest of the catalog (leave one out) where there are no
    folds: untrained members need no training split, only queries whose answer is known. One photo per
    individual with 2 or more photos, then a second round, and so on (each query keeps the others of its
    individual); ``new_whale`` photos, when the catalog has any, make up about ``new_whale_share`` of them.
    The order is a hash of ``seed`` and the names, so a catalog grown by a batch keeps most of its queries (their
    matches are cached) instead of drawing new ones."""
    if n <= 0:
        return []
    known = train[train["Id"] != NEW_WHALE]
    groups = sorted(([sorted(g["Image"], key=lambda name: _stable(seed, name)), _stable(seed, i)]
                     for i, g in known.groupby("Id", sort=True) if len(g) >= 2), key=lambda x: x[1])
    nw = sorted(train.loc[train["Id"] == NEW_WHALE, "Image"], key=lambda name: _stable(seed, name))
    n_new = min(len(nw), round(n * new_whale_share)) if nw else 0
    picked: list[str] = []
    for r in range(max((len(g) for g, _ in groups), default=0)):
        picked += [g[r] for g, _ in groups if len(g) > r]
    return picked[:n - n_new] + nw[:n_new]
