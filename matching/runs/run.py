"""A trained run (one model, one fold) found under ``runs/``, and the features of its branch cached per image set.

Shared by the Siamese runs (:mod:`matching.runs.pipeline`) and the embedding runs (:mod:`matching.runs.embedding`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from data.cache import Rows, cached_rows, row_keys
from data.distributed import SINGLE, Shards
from data.images import TEST_MARGIN
from data.settings import Settings, check
from siamese.infer import compute_features
from siamese.schedule import parse_schedule
from siamese.trunk_cache import TRUNK_DIR, store_for, through


@dataclass(frozen=True)
class Run:
    """One trained model and fold: its config and the best weights of its last stage."""

    model: str
    fold: int
    run_dir: Path
    config: dict  # the run's config.yaml, completed with the schema's defaults (data/settings.py)
    checkpoint: Path
    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", check(self.config, Settings, self.run_dir / "config.yaml"))


def discover_runs(runs_dir: Path, models: Sequence[str] | None = None) -> list[Run]:
    """Every ``runs/<model>/fold<k>`` whose last stage has a ``best.pt``, sorted by model and fold."""
    found = []
    for cfg_path in sorted(Path(runs_dir).glob("*/fold*/config.yaml")):
        match = re.fullmatch(r"fold(\d+)", cfg_path.parent.name)
        model = cfg_path.parent.parent.name
        if match is None or (models and model not in models):
            continue
        cfg = yaml.safe_load(cfg_path.read_text())
        size = parse_schedule(cfg["train"]["stages"], str(cfg_path), require_k=False)[-1].size
        ckpt = cfg_path.parent / f"{size}px" / "best.pt"
        if ckpt.is_file():
            found.append(Run(model, int(match.group(1)), cfg_path.parent, cfg, ckpt, size))
    return found


def trunk_dir(feat_dir: Path) -> Path:
    """Where the frozen trunk features of a work folder are shared: ``features/trunk`` beside the
    ``features/<model>/fold<k>`` folder ``feat_dir``."""
    return Path(feat_dir).parent.parent / TRUNK_DIR


def cached_features(encoder: torch.nn.Module, run: Run, names: Sequence[str], paths: Sequence[Path],
                    boxes: Sequence, cache: Path, device: torch.device, batch: int = 64,
                    workers: int | None = None, shards: Shards = SINGLE) -> np.ndarray:
    """``encoder``'s features of ``paths`` (images -> the vectors a family scores: branch and neck of a Siamese
    model, the embedder of an embedding model), each photo's row reused from ``cache`` (``.npz``: features, names,
    keys; or another cache file beside it) while its key holds: the checkpoint, the size, the crop margin,
    ``score.tta``, the photo's bytes and its box (:mod:`data.cache`). A grown catalog costs its new photos.
    A run whose trunk never trained computes the missing rows as its neck over the shared trunk features of
    :func:`trunk_dir` (:mod:`siamese.trunk_cache`): the other folds and runs on that trunk reuse them.

    With several ``shards`` each process computes its share of the missing rows and rank 0 writes the cache."""
    stat = run.checkpoint.stat()
    tta = score_tta(run.config)
    settings = f"{run.checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{run.size}|margin {TEST_MARGIN}|tta {tta}"
    mcfg = run.config["model"]
    paths, boxes, names = list(paths), list(boxes), np.asarray(names, dtype=str)

    store = store_for(trunk_dir(cache.parent), encoder.branch, run.config)

    def compute(rows: np.ndarray) -> Rows:
        sub_paths, sub_boxes = [paths[i] for i in rows], [boxes[i] for i in rows]
        if store is not None:
            views = [False, True] if tta == "flip" else [False]
            feats = sum(through(encoder.neck, store.features(sub_paths, sub_boxes, run.size, device=device,
                                                              batch=batch, workers=workers, mirrored=mirrored,
                                                              desc=f"trunk {cache.stem}"), device)
                        for mirrored in views) / len(views)
            return Rows(names[rows], features=np.asarray(feats, np.float32))
        feats = compute_features(encoder, sub_paths, sub_boxes, run.size,
                                 channels=mcfg["in_chans"], batch=batch, device=device, workers=workers,
                                 max_megapixels=run.config["data"]["max_megapixels"],
                                 desc=f"{run.model} fold{run.fold} {cache.stem}", flip_tta=tta == "flip")
        return Rows(names[rows], features=feats)

    return cached_rows(cache, row_keys(settings, paths, boxes), names, compute, shards=shards)["features"]


def score_tta(config: dict) -> str:
    """A (completed) run config's ``score.tta``: ``none``, or ``flip`` (features of the photo and its mirror
    averaged)."""
    return config["score"]["tta"]
