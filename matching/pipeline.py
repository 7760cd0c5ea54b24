"""Score matrices of trained runs: features cached per model and fold, test and out-of-fold matrices, fold means.

Layout (DESIGN.md): ``runs/<model>/fold<k>/`` holds ``config.yaml`` and ``<size>px/best.pt`` per stage;
``scores/<model>/fold<k>_{test,oof}.npz`` and the fold means ``scores/<model>/{test,oof}.npz``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from data.cache import cache_key, read_cache
from data.errors import InputError
from data.images import TEST_MARGIN
from data.io import load_npz, save_npz
from matching.blend import ScoreMatrix, average, load_matrix, save_matrix
from matching.distributed import SINGLE, Shards, stack_npz_rows
from matching.scores import score_matrix
from siamese.arcface import is_embedding_config
from siamese.checkpoint import load_checkpoint
from siamese.infer import compute_features
from siamese.model import SiameseModel, build_model
from siamese.schedule import parse_schedule

NEW_WHALE = "new_whale"


@dataclass(frozen=True)
class Run:
    """One trained model and fold: its config and the best weights of its last stage."""

    model: str
    fold: int
    run_dir: Path
    config: dict
    checkpoint: Path
    size: int


def discover_runs(runs_dir: Path, models: Sequence[str] | None = None) -> list[Run]:
    """Every ``runs/<model>/fold<k>`` whose last stage has a ``best.pt``, sorted by model and fold."""
    found = []
    for cfg_path in sorted(Path(runs_dir).glob("*/fold*/config.yaml")):
        match = re.fullmatch(r"fold(\d+)", cfg_path.parent.name)
        model = cfg_path.parent.parent.name
        if match is None or (models and model not in models):
            continue
        cfg = yaml.safe_load(cfg_path.read_text())
        size = parse_schedule(cfg["train"]["stages"], str(cfg_path))[-1].size
        ckpt = cfg_path.parent / f"{size}px" / "best.pt"
        if ckpt.is_file():
            found.append(Run(model, int(match.group(1)), cfg_path.parent, cfg, ckpt, size))
    return found


def load_run_model(run: Run, device: torch.device) -> SiameseModel:
    """The run's model with its best weights (architecture from its config; no pretrained download)."""
    mcfg = dict(run.config["model"], pretrained=False, weights=None)
    model = build_model(mcfg)
    model.load_state_dict(load_checkpoint(run.checkpoint, device)["model"])
    return model.to(device).eval()


def cached_features(model: SiameseModel, run: Run, names: Sequence[str], paths: Sequence[Path],
                    boxes: Sequence, cache: Path, device: torch.device, batch: int = 64,
                    workers: int | None = None, shards: Shards = SINGLE) -> np.ndarray:
    """Branch (and neck) features of ``paths``, reused from ``cache`` (``.npz``: features, names, key) while its key
    holds: the checkpoint, the size, the crop margin, ``score.tta`` and every photo file and box
    (:mod:`data.cache`).

    With several ``shards`` each process computes its rows and rank 0 writes the whole cache."""
    stat = run.checkpoint.stat()
    tta = score_tta(run.config)
    settings = f"{run.checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{run.size}|margin {TEST_MARGIN}|tta {tta}"
    key = cache_key(settings, paths, boxes)
    names = np.asarray(names, dtype=str)
    stored = read_cache(cache, key, names)
    if stored is not None and "features" in stored:
        return stored["features"]
    mcfg = run.config["model"]
    rows = shards.rows(len(names))

    def write_part(path: Path) -> None:
        encoder = model.encoder() if hasattr(model, "encoder") else model.branch
        feats = compute_features(encoder, list(paths)[rows], list(boxes)[rows], run.size,
                                 channels=int(mcfg.get("in_chans", 3)), batch=batch, device=device,
                                 workers=workers,
                                 max_megapixels=float(run.config.get("data", {}).get("max_megapixels", 60)),
                                 desc=f"{run.model} fold{run.fold} {cache.stem}", flip_tta=tta == "flip")
        save_npz(path, features=feats, names=names[rows], key=np.asarray(key))

    def join(parts: list[Path], path: Path) -> None:
        save_npz(path, **stack_npz_rows(parts, ("features", "names")))

    shards.assemble(cache, write_part, join)
    return load_npz(cache)["features"]


TTAS = ("none", "flip")


def score_tta(config: dict) -> str:
    """A run config's ``score.tta``: ``none``, or ``flip`` (features of the photo and its mirror averaged)."""
    tta = str((config.get("score") or {}).get("tta", "none") or "none")
    if tta not in TTAS:
        raise InputError(None, f"score.tta must be one of {', '.join(TTAS)}, not {tta!r}")
    return tta


def self_pairs(query: Sequence[str], gallery: Sequence[str]) -> np.ndarray:
    """``[Q, G]`` bool: the entries where a query meets the gallery image of the same name."""
    out = np.zeros((len(query), len(gallery)), dtype=bool)
    col = {str(name): j for j, name in enumerate(gallery)}
    for i, name in enumerate(query):
        j = col.get(str(name))
        if j is not None:
            out[i, j] = True
    return out


def mask_self(matrix: ScoreMatrix) -> ScoreMatrix:
    """Zero the entries where a query is scored against itself (same image name)."""
    matrix.scores[self_pairs(matrix.query, matrix.gallery)] = 0.0
    return matrix


def score_run(run: Run, catalog, val_names: Sequence[str] | None, out_dir: Path, feat_dir: Path, *,
              device: torch.device, budget_mb: float = 512, batch: int = 64, workers: int | None = None,
              shards: Shards = SINGLE) -> list[Path]:
    """Write ``fold<k>_test.npz`` (test x catalog) and, given validation names, ``fold<k>_oof.npz`` to ``out_dir``;
    branch features are cached in ``feat_dir``. With several ``shards`` (torchrun) each process scores its
    query rows and rank 0 assembles the same files. Embedding runs (``model.family: arcface``) are scored by
    cosine instead (:func:`matching.embed_runs.score_embed_run`)."""
    if is_embedding_config(run.config):
        from matching.embed_runs import score_embed_run  # imported here: it builds on this module

        return score_embed_run(run, catalog, val_names, out_dir, feat_dir, device=device, budget_mb=budget_mb,
                               batch=batch, workers=workers, shards=shards)
    model = load_run_model(run, device)
    known = catalog.train[catalog.train["Id"] != NEW_WHALE]["Image"].tolist()
    gallery = cached_features(model, run, known, [catalog.train_path(n) for n in known],
                              [catalog.box(n) for n in known], feat_dir / "catalog.npz", device, batch, workers,
                              shards)
    written = []
    parts = [("test", catalog.test_images, catalog.test_path)]
    if val_names is not None and len(val_names):
        parts.append(("oof", list(val_names), catalog.train_path))
    for part, names, path_of in parts:
        if not names:
            continue
        query = cached_features(model, run, names, [path_of(n) for n in names], [catalog.box(n) for n in names],
                                feat_dir / f"{part}.npz", device, batch, workers, shards)
        rows = shards.rows(len(names))

        def write_part(path: Path, rows=rows, query=query, names=names, part=part) -> None:
            scores = score_matrix(model.head, query[rows], gallery, device=device, budget_mb=budget_mb)
            matrix = ScoreMatrix(scores=scores, query=np.asarray(names[rows], dtype=str),
                                 gallery=np.asarray(known, dtype=str))
            save_matrix(path, mask_self(matrix) if part == "oof" else matrix)

        def join(paths: list[Path], path: Path) -> None:
            save_matrix(path, stack_rows([load_matrix(p) for p in paths], str(path)))

        target = out_dir / f"fold{run.fold}_{part}.npz"
        shards.assemble(target, write_part, join)
        written.append(target)
    return written


def stack_rows(matrices: Sequence[ScoreMatrix], source: str) -> ScoreMatrix:
    """Out-of-fold matrices of disjoint validation sets, stacked into one (the same gallery order)."""
    gallery = matrices[0].gallery
    for m in matrices[1:]:
        if not np.array_equal(m.gallery, gallery):
            raise InputError(source, "out-of-fold matrices of one model have different catalogs")
    query = np.concatenate([m.query for m in matrices])
    if len(np.unique(query)) != len(query):
        raise InputError(source, "an image is in the validation set of two folds")
    return ScoreMatrix(scores=np.concatenate([m.scores for m in matrices]), query=query, gallery=gallery)


def combine_folds(model_dir: Path) -> list[Path]:
    """``test.npz`` = mean of the folds' test matrices; ``oof.npz`` = their out-of-fold rows stacked."""
    written = []
    tests = sorted(model_dir.glob("fold*_test.npz"))
    if tests:
        written.append(save_matrix(model_dir / "test.npz", average([load_matrix(p) for p in tests])))
    oofs = sorted(model_dir.glob("fold*_oof.npz"))
    if oofs:
        written.append(save_matrix(model_dir / "oof.npz", stack_rows([load_matrix(p) for p in oofs], str(model_dir))))
    return written
