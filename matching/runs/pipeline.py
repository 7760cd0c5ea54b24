"""Score matrices of trained runs: test and out-of-fold matrices of a Siamese run (the pair head over cached
features; embedding runs go to :mod:`matching.runs.embedding`), and the fold means.

Layout (DESIGN.md): ``runs/<model>/fold<k>/`` holds ``config.yaml`` and ``<size>px/best.pt`` per stage;
``scores/<model>/fold<k>_{test,oof}.npz`` and the fold means ``scores/<model>/{test,oof}.npz``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data.catalog import NEW_WHALE
from data.checkpoint import load_checkpoint
from data.distributed import SINGLE, Shards
from matching.matrix import ScoreMatrix, average, load_matrix, mask_self, own_columns, save_matrix, stack_rows
from matching.runs.embedding import score_embed_run
from matching.runs.run import Run, cached_features
from matching.similarity.head_scoring import head_similarity
from siamese.arcface import FAMILY as ARCFACE
from siamese.families import family_name
from siamese.model import SiameseModel, build_model


def load_run_model(run: Run, device: torch.device) -> SiameseModel:
    """The run's model with its best weights (architecture from its config; no pretrained download)."""
    mcfg = dict(run.config["model"], pretrained=False, weights=None)
    model = build_model(mcfg)
    model.load_state_dict(load_checkpoint(run.checkpoint, device)["model"])
    return model.to(device).eval()


def score_run(run: Run, catalog, val_names: Sequence[str] | None, out_dir: Path, feat_dir: Path, *,
              device: torch.device, budget_mb: float = 512, batch: int = 64, workers: int | None = None,
              shards: Shards = SINGLE) -> list[Path]:
    """Write ``fold<k>_test.npz`` (test x catalog) and, given validation names, ``fold<k>_oof.npz`` to ``out_dir``;
    branch features are cached in ``feat_dir``. With several ``shards`` (torchrun) each process scores its
    query rows and rank 0 assembles the same files. Embedding runs (``model.family: arcface``) are scored by
    cosine instead (:func:`matching.runs.embedding.score_embed_run`)."""
    if family_name(run.config) == ARCFACE:
        return score_embed_run(run, catalog, val_names, out_dir, feat_dir, device=device, budget_mb=budget_mb,
                               batch=batch, workers=workers, shards=shards)
    model = load_run_model(run, device)
    known_df = catalog.train[catalog.train["Id"] != NEW_WHALE]
    known, labels = known_df["Image"].tolist(), known_df["Id"].tolist()
    scoring = run.config["score"]["scoring"]
    encoder = model.encoder()
    gallery = cached_features(encoder, run, known, [catalog.train_path(n) for n in known],
                              [catalog.box(n) for n in known], feat_dir / "catalog.npz", device, batch, workers,
                              shards)
    written = []
    parts = [("test", catalog.test_images, catalog.test_path)]
    if val_names is not None and len(val_names):
        parts.append(("oof", list(val_names), catalog.train_path))
    for part, names, path_of in parts:
        if not names:
            continue
        query = cached_features(encoder, run, names, [path_of(n) for n in names], [catalog.box(n) for n in names],
                                feat_dir / f"{part}.npz", device, batch, workers, shards)
        rows = shards.rows(len(names))

        def write_part(path: Path, rows=rows, query=query, names=names, part=part) -> None:
            own = own_columns(names[rows], known) if part == "oof" else None
            scores = head_similarity(model.head, query[rows], gallery, labels, scoring=scoring, own=own,
                                     device=device, budget_mb=budget_mb)
            matrix = ScoreMatrix(scores=scores, query=np.asarray(names[rows], dtype=str),
                                 gallery=np.asarray(known, dtype=str))
            save_matrix(path, mask_self(matrix) if part == "oof" else matrix)

        def join(paths: list[Path], path: Path) -> None:
            save_matrix(path, stack_rows([load_matrix(p) for p in paths], str(path)))

        target = out_dir / f"fold{run.fold}_{part}.npz"
        shards.assemble(target, write_part, join)
        written.append(target)
    return written


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
