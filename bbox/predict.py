"""Fluke boxes from trained detectors: each photo and its mirror, un-mirrored, fused over views and folds.

A photo that one fold held out in training is boxed by that fold's model only (an out-of-fold box);
any other photo by every fold's model. The fused box of highest score is the photo's box, when its score
reaches ``keep_score``; otherwise the photo has no box and is used whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bbox.data import PhotoDataset, collate_photos, to_tensor01
from bbox.detector import FLUKE, detector_from_state, load_checkpoint
from bbox.fusion import clip_boxes, unmirror, weighted_box_fusion
from data.device import autocast
from data.errors import InputError
from data.io import write_csv
from data.settings import BboxPredict, check

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Prediction:
    """The fluke box of one photo in original upright pixels (None: no confident box) and its fused score."""

    box: Box | None
    score: float


def predict_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The ``predict:`` section of a config, checked, with the defaults of :class:`data.settings.BboxPredict`."""
    return check(cfg or {}, BboxPredict, path="predict")


@torch.no_grad()
def detect(
    model: nn.Module, images: Sequence[np.ndarray], *, flip: bool, device: torch.device, amp: bool = True
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Fluke detections of ``model`` on each image (and its mirror, un-mirrored): per image a list of
    ``(boxes [N, 4], scores [N])`` runs, in the image's pixels."""
    tensors = [to_tensor01(im).to(device) for im in images]
    if flip:
        tensors += [t.flip(-1) for t in tensors]
    with autocast(device, amp):
        outputs = model(tensors)
    runs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in images]
    for j, out in enumerate(outputs):
        i = j % len(images)
        keep = out["labels"] == FLUKE
        boxes = out["boxes"][keep].float().cpu().numpy().astype(np.float64)
        scores = out["scores"][keep].float().cpu().numpy().astype(np.float64)
        if j >= len(images):
            boxes = unmirror(boxes, images[i].shape[1])
        runs[i].append((boxes, scores))
    return runs


def fuse_runs(
    runs: Sequence[tuple[np.ndarray, np.ndarray]], cfg: dict[str, Any]
) -> tuple[np.ndarray | None, float]:
    """The most confident fused box of several runs and its score (None and the best score when too weak)."""
    boxes, scores = weighted_box_fusion(
        [r[0] for r in runs], [r[1] for r in runs], iou_thr=cfg["fusion_iou"], skip_thr=cfg["score_min"]
    )
    if len(scores) == 0:
        return None, 0.0
    if scores[0] < cfg["keep_score"]:
        return None, float(scores[0])
    return boxes[0], float(scores[0])


def predict_photos(
    models: Sequence[nn.Module],
    paths: Sequence[Path],
    *,
    routes: Sequence[Sequence[int]] | None = None,
    cfg: dict[str, Any] | None = None,
    max_side: int = 512,
    max_megapixels: float = 60.0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "boxes",
) -> list[Prediction]:
    """One :class:`Prediction` per path; ``routes[i]`` lists the models that box photo ``i`` (default all)."""
    cfg = predict_config(cfg)
    device = torch.device(device)
    if routes is None:
        routes = [range(len(models))] * len(paths)
    models = [m.to(device, memory_format=torch.channels_last).eval() for m in models]  # 1.5x on a CPU (BENCHMARKS.md)
    loader = DataLoader(
        PhotoDataset(paths, max_side=max_side, max_megapixels=max_megapixels),
        batch_size=int(cfg["batch"]),
        shuffle=False,
        num_workers=int(cfg["workers"] or 0),
        collate_fn=collate_photos,
    )
    results: list[Prediction | None] = [None] * len(paths)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        runs: dict[int, list] = {item[0]: [] for item in batch}
        for m, model in enumerate(models):
            items = [item for item in batch if m in routes[item[0]]]
            if not items:
                continue
            found = detect(
                model,
                [item[1] for item in items],
                flip=bool(cfg["flip"]),
                device=device,
                amp=bool(cfg["amp"]),
            )
            for item, image_runs in zip(items, found, strict=True):
                runs[item[0]].extend(image_runs)
        for i, _, scale, (width, height) in batch:
            if not runs[i]:
                raise ValueError(f"photo {paths[i]} is routed to no model")
            box, score = fuse_runs(runs[i], cfg)
            if box is not None:
                x0, y0, x1, y1 = clip_boxes(box / scale, width, height)[0]
                box = (float(x0), float(y0), float(x1), float(y1)) if x1 > x0 and y1 > y0 else None
            results[i] = Prediction(box, score)
    return results  # type: ignore[return-value]


def routes_for(names: Sequence[str], holdouts: Sequence[set[str]]) -> list[list[int]]:
    """Per photo, the fold models that held it out, or every fold model when none did."""
    every = list(range(len(holdouts)))
    return [[k for k, held in enumerate(holdouts) if name in held] or every for name in names]


def boxes_frame(predictions: Mapping[str, Prediction]) -> pd.DataFrame:
    """``Image,x0,y0,x1,y1`` rows (rounded to 0.1 pixel) of the photos that have a box."""
    rows = [(name, *(round(v, 1) for v in p.box)) for name, p in predictions.items() if p.box is not None]
    return pd.DataFrame(rows, columns=["Image", "x0", "y0", "x1", "y1"])


def photos_to_box(catalog, only: str = "all") -> tuple[list[str], list[Path], dict[str, Prediction]]:
    """(names, paths) of the photos of ``catalog`` to box, and the boxes kept as they are (score 1).

    ``only``: ``all`` (every catalog and query photo), ``test`` (the query photos; the catalog's boxes kept),
    ``unboxed`` (the query photos and the catalog photos without a box). A photo named alike in the catalog
    and the queries is an error: one boxes file could not tell them apart."""
    train = catalog.train["Image"].tolist()
    both = set(train) & set(catalog.test_images)
    if both:
        raise InputError(catalog.data_dir, f"{len(both)} photos are named alike in the catalog and the query photos "
                                           f"(first: {sorted(both)[0]!r}); boxes.csv could not tell them apart")
    if only not in ("all", "test", "unboxed"):
        raise ValueError(f"only must be all, test or unboxed, not {only!r}")
    kept = {} if only == "all" else {n: Prediction(catalog.boxes[n], 1.0) for n in train if n in catalog.boxes}
    names = [n for n in train if only == "all" or (only == "unboxed" and n not in kept)]
    paths = [catalog.train_path(n) for n in names]
    return names + list(catalog.test_images), paths + [catalog.test_path(n) for n in catalog.test_images], kept


def write_boxes(predictions: Mapping[str, Prediction], out: str | Path) -> tuple[Path, Path | None]:
    """Write ``boxes.csv`` and, when some photos have no box, ``boxes_missing.csv`` (Image,score) beside it
    (a stale one is removed). Returns both paths (None for the report when nothing is missing)."""
    out = Path(out)
    missing = [(name, round(p.score, 4)) for name, p in predictions.items() if p.box is None]
    report = out.with_name(out.stem + "_missing.csv")
    write_csv(boxes_frame(predictions), out)
    if missing:
        write_csv(pd.DataFrame(missing, columns=["Image", "score"]), report)
        return out, report
    report.unlink(missing_ok=True)
    return out, None


@dataclass
class FoldModels:
    """The trained fold detectors of a work folder, the photos each held out, and their training config."""

    models: list[nn.Module]
    holdouts: list[set[str]]
    config: dict[str, Any]
    checkpoints: list[Path]


def load_fold_models(work_dir: str | Path) -> FoldModels:
    """Every ``<work_dir>/bbox/fold<k>.pt``, in fold order; each must have finished training."""
    folder = Path(work_dir) / "bbox"
    found = sorted(folder.glob("fold*.pt"), key=lambda p: (len(p.stem), p.stem))
    if not found:
        raise InputError(folder, "no detector checkpoints (fold<k>.pt); run scripts/train_bbox.py first")
    models, holdouts, config = [], [], {}
    for path in found:
        state = load_checkpoint(path)
        if not state.get("done"):
            raise InputError(path, "training of this fold did not finish; run scripts/train_bbox.py --resume")
        models.append(detector_from_state(state, path))
        holdouts.append(set(state.get("holdout", [])))
        config = state["config"]
    return FoldModels(models, holdouts, config, found)
