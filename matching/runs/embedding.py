"""Score matrices of trained embedding runs (``model.family: arcface``): cached embeddings, cosine test x catalog
and out-of-fold matrices, mapped to probabilities by a logistic fitted on the fold's out-of-fold matrix, written
in the Siamese files' format (``scores/<model>/fold<k>_{test,oof}.npz``) plus ``fold<k>_calibration.csv``.
Also the meta-embedding: several models' embeddings side by side, scored as one model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from data.catalog import NEW_WHALE
from data.checkpoint import load_checkpoint
from data.distributed import SINGLE, Shards
from data.errors import InputError
from data.io import load_npz, write_csv
from data.settings import Score, check
from matching.matrix import ScoreMatrix, mask_self, own_columns, save_matrix, self_pairs
from matching.runs.run import Run, cached_features
from matching.similarity.calibration import Logistic, fit_logistic, same_whale
from matching.similarity.cosine import meta_embedding, similarity
from siamese.arcface import FAMILY as ARCFACE
from siamese.arcface import Embedder, build_embedding_model, classes_in_state
from siamese.families import family_name


def load_embedder(run: Run, device: torch.device) -> Embedder:
    """Branch and neck of the run's best weights (the margin head's size read from the checkpoint)."""
    state = load_checkpoint(run.checkpoint, device)["model"]
    mcfg = dict(run.config["model"], pretrained=False, weights=None)
    model = build_embedding_model(mcfg, classes_in_state(state, mcfg))
    model.load_state_dict(state)
    return model.embedder().to(device).eval()


@dataclass
class EmbedSet:
    """Embeddings of the catalog, the test photos and (when there are folds) the fold's validation photos."""

    gallery: np.ndarray
    gallery_names: list[str]
    gallery_labels: list[str]
    test: np.ndarray
    test_names: list[str]
    oof: np.ndarray | None = None
    oof_names: list[str] | None = None
    oof_labels: list[str] | None = None


def _similarity(query: np.ndarray, s: EmbedSet, score_cfg: dict, query_names: Sequence[str] | None = None):
    """``query_names``: out-of-fold rows, catalog photos themselves, each left out of its whale's centre."""
    knn_above = score_cfg["knn_above"]
    knn = score_cfg["knn"] if knn_above is not None and len(s.gallery) > knn_above else None
    own = None if query_names is None else own_columns(query_names, s.gallery_names)
    return similarity(query, s.gallery, s.gallery_labels, scoring=score_cfg["scoring"], knn=knn, own=own)


def write_embedding_scores(s: EmbedSet, fold: int, out_dir: Path, score_cfg: dict,
                           log=print) -> list[Path]:
    """Cosine matrices of ``s`` mapped to probabilities and written as ``fold<k>_{test,oof}.npz``; the logistic
    is fitted on the out-of-fold matrix (self pairs left out), else ``(1 + cos) / 2`` with a note."""
    out_dir = Path(out_dir)
    written = []
    oof_sims = None
    if s.oof is not None and len(s.oof):
        oof_sims = _similarity(s.oof, s, score_cfg, s.oof_names)
        keep = ~self_pairs(s.oof_names, s.gallery_names)
        positive = same_whale(s.oof_labels, s.gallery_labels)
        calib = fit_logistic(oof_sims[keep], positive[keep], seed=fold)
        write_csv(pd.DataFrame([{"fold": fold, "a": calib.a, "b": calib.b, "positives": int(positive[keep].sum()),
                                 "pairs": int(keep.sum())}]), out_dir / f"fold{fold}_calibration.csv")
        written.append(out_dir / f"fold{fold}_calibration.csv")
    else:
        calib = Logistic(a=float("nan"), b=float("nan"))
        log("  note: no out-of-fold matrix to calibrate on; cosine mapped to (1 + cos) / 2")

    def to_prob(x: np.ndarray) -> np.ndarray:
        return calib(x) if np.isfinite(calib.a) else (0.5 * (1.0 + x)).astype(np.float32)

    gallery = np.asarray(s.gallery_names, dtype=str)
    test = ScoreMatrix(to_prob(_similarity(s.test, s, score_cfg)), np.asarray(s.test_names, dtype=str), gallery)
    written.insert(0, save_matrix(out_dir / f"fold{fold}_test.npz", test))
    if oof_sims is not None:
        oof = mask_self(ScoreMatrix(to_prob(oof_sims), np.asarray(s.oof_names, dtype=str), gallery))
        written.insert(1, save_matrix(out_dir / f"fold{fold}_oof.npz", oof))
    return written


def score_embed_run(run: Run, catalog, val_names: Sequence[str] | None, out_dir: Path, feat_dir: Path, *,
                    device: torch.device, budget_mb: float = 512, batch: int = 64, workers: int | None = None,
                    shards: Shards = SINGLE) -> list[Path]:
    """The embedding family's :func:`matching.runs.pipeline.score_run`: embeddings cached in ``feat_dir`` (shared out
    over ``shards``), matrices computed and written by rank 0."""
    embedder = load_embedder(run, device)
    known_df = catalog.train[catalog.train["Id"] != NEW_WHALE]
    known, labels = known_df["Image"].tolist(), known_df["Id"].tolist()
    truth = dict(zip(catalog.train["Image"], catalog.train["Id"]))

    def embed(names, path_of, part):
        return cached_features(embedder, run, names, [path_of(n) for n in names], [catalog.box(n) for n in names],
                               feat_dir / f"{part}.npz", device, batch, workers, shards)

    s = EmbedSet(embed(known, catalog.train_path, "catalog"), known, labels,
                 embed(catalog.test_images, catalog.test_path, "test") if catalog.test_images else np.zeros((0, 1)),
                 catalog.test_images)
    if val_names is not None and len(val_names):
        s.oof, s.oof_names = embed(list(val_names), catalog.train_path, "oof"), list(val_names)
        s.oof_labels = [truth[n] for n in s.oof_names]
    written: list[Path] = []
    if shards.main:
        written = write_embedding_scores(s, run.fold, out_dir, run.config["score"])
    shards.barrier()
    return [p for p in written if p.suffix == ".npz"]


def score_meta(name: str, models: Sequence[str], fold: int, catalog, val_names: Sequence[str] | None,
               work_dir: Path, score_cfg: dict | None = None) -> list[Path]:
    """The meta-embedding of ``models`` for one fold, from their cached embeddings under
    ``<work_dir>/features/<model>/fold<k>``, written to ``<work_dir>/scores/<name>``."""
    if len(models) < 2:
        raise InputError(None, f"a meta-embedding needs two or more embedding models, got {list(models)}")
    parts: dict[str, list[np.ndarray]] = {"catalog": [], "test": [], "oof": []}
    names: dict[str, np.ndarray] = {}
    for model in models:
        for part in parts:
            path = Path(work_dir) / "features" / model / f"fold{fold}" / f"{part}.npz"
            if part == "oof" and not val_names:
                continue
            if not path.is_file():
                raise InputError(path, f"no cached embeddings of {model} fold {fold}; run score_matrix.py on it first")
            stored = load_npz(path)
            if part in names and not np.array_equal(names[part], stored["names"]):
                raise InputError(path, f"lists other {part} images than the other models' embeddings")
            names[part] = stored["names"]
            parts[part].append(stored["features"])
    truth = dict(zip(catalog.train["Image"], catalog.train["Id"]))
    gallery_names = [str(n) for n in names["catalog"]]
    s = EmbedSet(meta_embedding(parts["catalog"]), gallery_names, [truth[n] for n in gallery_names],
                 meta_embedding(parts["test"]), [str(n) for n in names["test"]])
    if parts["oof"]:
        s.oof, s.oof_names = meta_embedding(parts["oof"]), [str(n) for n in names["oof"]]
        s.oof_labels = [truth[n] for n in s.oof_names]
    out = write_embedding_scores(s, fold, Path(work_dir) / "scores" / name, check(score_cfg or {}, Score, path="score"))
    return [p for p in out if p.suffix == ".npz"]


def score_meta_embeddings(name: str, runs: Sequence[Run], catalog, folds: pd.DataFrame | None,
                          work_dir: Path) -> list[str]:
    """:func:`score_meta` for every fold with two or more embedding runs; ``[name]`` when any was written."""
    by_fold: dict[int, list[Run]] = {}
    for run in runs:
        if family_name(run.config) == ARCFACE:
            by_fold.setdefault(run.fold, []).append(run)
    done = False
    for fold, fold_runs in sorted(by_fold.items()):
        if len(fold_runs) < 2:
            continue
        val = None if folds is None else folds.loc[folds["fold"] == fold, "Image"].tolist()
        score_cfg = fold_runs[0].config["score"]
        for path in score_meta(name, [r.model for r in fold_runs], fold, catalog, val, work_dir, score_cfg):
            print(f"  wrote {path}")
        done = True
    if not done:
        raise InputError(None, f"--meta {name}: no fold has two or more embedding models")
    return [name]
