"""Baselines without a trained head: cosine nearest neighbour, ranked with ``new_whale``.

Raw pixels: each photo (or its fluke crop) is squashed to ``size`` x ``size`` grey pixels, mean-centred
and L2-normalised; a query's score against a gallery photo is their cosine; whales are ranked by their
best photo and ``new_whale`` is inserted by a threshold tuned on the truth itself (so the number is an
upper bound for this method).

Frozen ImageNet features (:func:`feature_baseline`): the branch of a Siamese model with its ImageNet
weights and no training (EfficientNet-Lite0 by default), its features L2-normalised, scored by cosine.
Out-of-fold it follows the protocol of training-time validation (``scripts/train_fold.py``): each fold's
validation photos against that fold's training photos that are not ``new_whale``
(:func:`data.folds.fold_split` with singletons); ``protocol="catalog"`` instead scores them against every
catalog photo but themselves, as the out-of-fold matrices of ``scripts/score_matrix.py`` do. One
``new_whale`` threshold is tuned over every out-of-fold query (as ``scripts/final_ensemble.py`` does, on
the candidates of :func:`matching.ranking.rank.default_candidates`) and applied to the test photos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.catalog import NEW_WHALE, Catalog, load_catalog, read_boxes, read_folds, read_train_csv
from data.errors import InputError
from data.folds import fold_split
from data.images import Box, load_crop
from data.io import load_npz
from matching.evaluation.evaluate import Evaluation, evaluate
from matching.ranking.rank import default_candidates, rank_queries, tune_threshold

PROTOCOLS = ("fold", "catalog")


@dataclass(frozen=True)
class BaselineResult:
    map5: float
    threshold: float
    queries: int
    gallery: int


def pixel_vectors(paths: Sequence[Path], size: int = 32, boxes: Mapping[str, Box] | None = None,
                  progress: bool = False) -> np.ndarray:
    """[N, size*size] float32 unit vectors: grey thumbnails of the photos (or of their boxes), mean-centred."""
    out = np.empty((len(paths), size * size), np.float32)
    for i, path in enumerate(tqdm(paths, desc="thumbnails", unit="photo", disable=not progress)):
        box = None if boxes is None else boxes.get(Path(path).name)
        img = load_crop(path, box, size, channels=1, margin=0.0).astype(np.float32).ravel()
        img -= img.mean()
        out[i] = img / max(float(np.linalg.norm(img)), 1e-6)
    return out


def cosine_map5(queries: np.ndarray, gallery: np.ndarray, gallery_labels: Sequence[str],
                truth: Sequence[str]) -> tuple[float, float]:
    """(MAP@5, threshold) of ranking whales by their best cosine, ``new_whale`` placed at the tuned threshold."""
    scores = queries @ gallery.T
    # Besides the default candidates, one below every score: "never put new_whale first".
    candidates = np.append(default_candidates(scores), np.float32(scores.min()) - np.float32(1e-3))
    threshold, value = tune_threshold(scores, list(gallery_labels), list(truth), mode="max", candidates=candidates)
    return value, threshold


def raw_pixel_baseline(data_dir: str | Path, *, crop: bool = False, size: int = 32,
                       truth_csv: str | Path | None = None, boxes_csv: str | Path | None = None,
                       progress: bool = False) -> BaselineResult:
    """The baseline on a catalog folder: test photos (``truth.csv``) against its non-new_whale train photos.

    ``crop`` uses the true fluke boxes (``truth_boxes.csv``) instead of the whole photo.
    """
    data_dir = Path(data_dir)
    train = read_train_csv(data_dir / "train.csv")
    gallery = train[train["Id"] != NEW_WHALE]
    truth = read_train_csv(truth_csv or data_dir / "truth.csv")
    boxes = read_boxes(boxes_csv or data_dir / "truth_boxes.csv") if crop else None
    g = pixel_vectors([data_dir / "train" / n for n in gallery["Image"]], size, boxes, progress)
    q = pixel_vectors([data_dir / "test" / n for n in truth["Image"]], size, boxes, progress)
    value, threshold = cosine_map5(q, g, gallery["Id"].tolist(), truth["Id"].tolist())
    return BaselineResult(value, threshold, len(q), len(g))


# ---- frozen ImageNet branch features -----------------------------------------------------------------

FeatureKey = tuple[str, str]  # ("train" | "test", image name)


@dataclass(frozen=True)
class Part:
    """One block of queries against one gallery: cosines [Q, G], gallery whale labels, query truths."""

    scores: np.ndarray
    gallery_labels: list[str]
    truth: list[str]
    query: list[str]
    gallery: list[str]


@dataclass(frozen=True)
class FeatureBaselineResult:
    protocol: str
    mode: str
    folds: list[int]
    oof_map5: float | None  # every validation photo of ``folds``, one threshold
    threshold: float | None
    oof_queries: int
    fold_map5: dict[int, float]  # per fold, its own threshold (as training-time validation)
    test: Evaluation | None  # test photos against truth.csv, at ``threshold``
    test_oracle_map5: float | None  # the same with the threshold tuned on the test truth (an upper bound)
    gallery: int  # catalog photos (not new_whale) that the test photos are scored against


def frozen_branch(name: str = "efficientnet_lite0", pretrained: bool = True):
    """The branch of a Siamese model with ImageNet weights (offline for EfficientNet-Lite0), untrained."""
    from siamese.branch import create_branch

    return create_branch(name, pretrained=pretrained)


def needed_images(catalog: Catalog, with_test: bool) -> list[FeatureKey]:
    """Every photo the baseline scores: the catalog (folds.csv lists the same photos) and the test photos."""
    return [("train", n) for n in catalog.train["Image"]] + ([("test", n) for n in catalog.test_images]
                                                             if with_test else [])


def branch_features(catalog: Catalog, keys: Sequence[FeatureKey], size: int, *, branch=None,
                    known: Mapping[FeatureKey, np.ndarray] | None = None, batch: int = 64,
                    workers: int | None = None) -> dict[FeatureKey, np.ndarray]:
    """L2-normalised branch features (test-time crop with the catalog's boxes) of ``keys``, each computed once;
    those in ``known`` (raw features computed the same way, e.g. cached by score_matrix.py) are reused."""
    from siamese.infer import compute_features

    known = known or {}
    todo = [k for k in dict.fromkeys(keys) if k not in known]
    raw = dict(known)
    if todo:
        branch = branch if branch is not None else frozen_branch()
        paths = [catalog.train_path(n) if part == "train" else catalog.test_path(n) for part, n in todo]
        feats = compute_features(branch, paths, [catalog.box(n) for _, n in todo], size, batch=batch,
                                 workers=workers, desc=f"frozen features {size}px")
        raw.update(zip(todo, feats))
    out = {}
    for k in keys:
        v = np.asarray(raw[k], np.float32)
        out[k] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def _matrix(feats: Mapping[FeatureKey, np.ndarray], keys: Sequence[FeatureKey]) -> np.ndarray:
    return np.stack([feats[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def oof_parts(feats: Mapping[FeatureKey, np.ndarray], folds_df: pd.DataFrame, folds: Sequence[int],
              protocol: str = "fold") -> dict[int, Part]:
    """Per fold, its validation photos against its gallery, as cosines.

    ``fold``: the fold's training photos that are not new_whale (singletons included), as in training-time
    validation; ``catalog``: every known photo of ``folds_df`` but the query itself (its cosine set to -inf).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    parts = {}
    for k in folds:
        train_df, val_df = fold_split(folds_df, k, include_singletons=True)
        if protocol == "catalog":
            train_df = folds_df[folds_df["Id"] != NEW_WHALE]
        gallery = train_df[train_df["Id"] != NEW_WHALE]
        g_names = gallery["Image"].tolist()
        q_names = val_df["Image"].tolist()
        scores = _matrix(feats, [("train", n) for n in q_names]) @ _matrix(feats, [("train", n) for n in g_names]).T
        column = {n: j for j, n in enumerate(g_names)}
        for i, n in enumerate(q_names):
            if n in column:  # never in the fold protocol (fold_split keeps validation out of training)
                scores[i, column[n]] = -np.inf
        parts[k] = Part(scores.astype(np.float32), gallery["Id"].tolist(), val_df["Id"].tolist(), q_names, g_names)
    return parts


def tune_over_parts(parts: Sequence[Part], mode: str = "sum") -> tuple[float, float]:
    """(threshold, MAP@5) with the best MAP@5 over the queries of every part, one threshold for all of them.

    Candidates: :func:`default_candidates` of every query's best score (lowest threshold on ties)."""
    parts = [p for p in parts if len(p.truth)]
    if not parts:
        raise ValueError("no queries to score")
    best = np.concatenate([np.max(p.scores, axis=1) for p in parts])
    total = sum(len(p.truth) for p in parts)
    best_t, best_map = None, -1.0
    for t in default_candidates(best[:, None]):
        value = sum(tune_threshold(p.scores, p.gallery_labels, p.truth, mode=mode, candidates=np.array([t]))[1]
                    * len(p.truth) for p in parts) / total
        if value > best_map:
            best_t, best_map = float(t), value
    return best_t, best_map


def feature_baseline(data_dir: str | Path, *, size: int = 224, protocol: str = "fold", mode: str = "sum",
                     folds: Sequence[int] | None = None, features: Mapping[FeatureKey, np.ndarray] | None = None,
                     known: Mapping[FeatureKey, np.ndarray] | None = None, branch=None,
                     truth_csv: str | Path | None = None, workers: int | None = None) -> FeatureBaselineResult:
    """Frozen-branch cosine baseline of a catalog folder: out-of-fold over ``folds`` of ``folds.csv`` (every
    fold by default; skipped without folds.csv) and, with ``test/`` and ``truth.csv``, the test MAP@5.

    ``features``: normalised features from :func:`branch_features` (computed here when None); ``known``
    and ``branch`` are passed on to it."""
    data_dir = Path(data_dir)
    truth_path = Path(truth_csv) if truth_csv else data_dir / "truth.csv"
    with_test = truth_path.is_file() and (data_dir / "test").is_dir()
    catalog = load_catalog(data_dir, need_test=with_test)
    folds_path = data_dir / "folds.csv"
    folds_df = read_folds(folds_path, catalog.train) if folds_path.is_file() else None
    if features is None:
        features = branch_features(catalog, needed_images(catalog, with_test), size, branch=branch,
                                   known=known, workers=workers)
    oof_map5 = threshold = None
    fold_map5: dict[int, float] = {}
    oof_queries = 0
    chosen: list[int] = []
    if folds_df is not None:
        chosen = sorted(int(f) for f in folds_df.loc[folds_df["fold"] >= 0, "fold"].unique()) \
            if folds is None else [int(f) for f in folds]
        parts = oof_parts(features, folds_df, chosen, protocol)
        for k, part in parts.items():
            if part.truth:
                fold_map5[k] = tune_threshold(part.scores, part.gallery_labels, part.truth, mode=mode)[1]
        oof_queries = sum(len(p.truth) for p in parts.values())
        if oof_queries:
            threshold, oof_map5 = tune_over_parts(list(parts.values()), mode)
            if not any(NEW_WHALE in p.truth for p in parts.values()):
                threshold = None  # tuned without a new_whale query: the test threshold comes from the share
    gallery = catalog.train[catalog.train["Id"] != NEW_WHALE]
    test = oracle = None
    if with_test:
        truth = dict(zip(*read_train_csv(truth_path)[["Image", "Id"]].to_numpy().T))
        missing = sorted(set(truth) - set(catalog.test_images))
        if missing:
            raise InputError(truth_path, f"{len(missing)} images are not in test/ (first: {missing[0]!r})")
        names = list(truth)
        scores = _matrix(features, [("test", n) for n in names]) @ _matrix(
            features, [("train", n) for n in gallery["Image"]]).T
        labels = gallery["Id"].tolist()
        if threshold is None:  # no out-of-fold new_whale to tune on: the project's default share of new_whale
            from matching.ranking.rank import DEFAULT_NEW_WHALE_SHARE, threshold_for_new_whale_share

            threshold = threshold_for_new_whale_share(scores, labels, DEFAULT_NEW_WHALE_SHARE, mode=mode)
        ranked = rank_queries(scores, labels, threshold, mode=mode)
        test = evaluate(truth, dict(zip(names, ranked)))
        oracle = tune_threshold(scores, labels, [truth[n] for n in names], mode=mode)[1]
    return FeatureBaselineResult(protocol, mode, chosen, oof_map5, threshold, oof_queries, fold_map5, test, oracle,
                                 len(gallery))


def cached_run_features(feature_dir: str | Path) -> dict[FeatureKey, np.ndarray]:
    """Raw branch features cached by ``scripts/score_matrix.py`` under ``features/<model>/fold<k>/``
    (``catalog.npz`` and ``oof.npz``: train photos; ``test.npz``: test photos), merged over folds.

    They equal the frozen ImageNet features only for a run whose branch never trained: check with
    :func:`same_features` before reusing them."""
    out: dict[FeatureKey, np.ndarray] = {}
    for path in sorted(Path(feature_dir).glob("fold*/*.npz")):
        part = "test" if path.stem == "test" else "train"
        stored = load_npz(path)
        out.update(zip(((part, str(n)) for n in stored["names"]), stored["features"]))
    return out


def same_features(catalog: Catalog, known: Mapping[FeatureKey, np.ndarray], size: int, *, branch=None,
                  samples: int = 4, tolerance: float = 1e-3) -> bool:
    """Whether ``known`` matches freshly computed frozen features on ``samples`` evenly spread photos
    (largest difference relative to the feature norm below ``tolerance``)."""
    if not known:
        return False
    keys = list(known)
    picked = [keys[i] for i in np.unique(np.linspace(0, len(keys) - 1, samples).round().astype(int))]
    fresh = branch_features(catalog, picked, size, branch=branch)
    for k in picked:
        ref = np.asarray(known[k], np.float32)
        ref = ref / max(float(np.linalg.norm(ref)), 1e-12)
        if ref.shape != fresh[k].shape or float(np.abs(ref - fresh[k]).max()) > tolerance:
            return False
    return True
