"""k-fold training of the fluke detector: one model per fold, each boxing the photos it held out.

Checkpoints ``<work>/bbox/fold<k>.pt`` hold the model, optimizer, schedule position, the config and the
names of the held-out photos; one is written after every epoch, so ``resume`` continues a killed run.
Shuffling and augmentation are seeded by ``(seed, fold, epoch)``, so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bbox.data import BoxDataset, collate, split_folds, subset, train_augment
from bbox.detector import build_detector, load_checkpoint
from bbox.metrics import mean_iou
from bbox.predict import Prediction, predict_photos
from data.checkpoint import save_checkpoint
from data.device import autocast, pick_device
from data.errors import InputError
from data.settings import Bbox, check

Box = tuple[float, float, float, float]


def full_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The bbox config, checked, with every section's defaults (:class:`data.settings.Bbox`) filled in."""
    return check(dict(cfg), Bbox)


def fold_checkpoint(work_dir: str | Path, fold: int) -> Path:
    return Path(work_dir) / "bbox" / f"fold{fold}.pt"


@dataclass
class FoldReport:
    """One trained fold: its checkpoint, how many photos trained it, and its boxes of the held-out photos."""

    fold: int
    checkpoint: Path
    train_images: int
    predictions: dict[str, Prediction]
    seconds: float


def _lr_factor(it: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the base rate."""
    if it < warmup:
        return (it + 1) / warmup
    progress = (it - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise InputError(None, f"train.optimizer must be sgd or adamw, not {cfg['optimizer']!r}")


def _get_rng() -> dict[str, Any]:
    """The global torch generators (the detector's proposal sampling draws from them)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_detector(
    model: nn.Module,
    dataset: BoxDataset,
    cfg: dict[str, Any],
    *,
    checkpoint: Path,
    extra: dict[str, Any],
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` on ``dataset`` with the ``train:`` settings ``cfg``, checkpointing every epoch.

    ``extra`` (config, fold, held-out names) is stored in each checkpoint. With ``resume`` an unfinished
    checkpoint is continued and a finished one is loaded as it is.
    """
    tcfg = cfg["train"]
    # channels-last weights: the detector's convolutions train about 1.2x faster on a CPU (BENCHMARKS.md); the
    # detection transform batches its own input, so the layout is set on the weights, not on the images
    model.to(device, memory_format=torch.channels_last)
    optimizer = _optimizer(model, tcfg)
    per_epoch = math.ceil(len(dataset) / tcfg["batch"])
    total = int(tcfg["epochs"]) * per_epoch
    warmup = max(1, round(float(tcfg["warmup"]) * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: _lr_factor(it, total, warmup))
    start = 0
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        if state.get("holdout") != extra.get("holdout"):
            raise InputError(checkpoint, "was trained on another fold split; run again without --resume")
        model.load_state_dict(state["model"])
        if state.get("done"):
            return model.eval()
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng(state["rng"])
        start = int(state["epoch"])
    bar = tqdm(
        total=total, initial=start * per_epoch, desc=desc, unit="it", disable=not progress, leave=False
    )
    for epoch in range(start, int(tcfg["epochs"])):
        model.train()
        dataset.set_epoch(epoch)
        seed = int(
            np.random.SeedSequence([int(tcfg["seed"]), int(extra.get("fold", 0)), epoch]).generate_state(1)[0]
        )
        loader = DataLoader(
            dataset,
            batch_size=int(tcfg["batch"]),
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(seed),
            num_workers=int(tcfg["workers"] or 0),
            pin_memory=device.type == "cuda",
        )
        for images, targets in loader:
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with autocast(device, bool(tcfg["amp"])):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"{desc}: loss is {loss.item()} at epoch {epoch}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg["clip_grad"]:
                nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["clip_grad"]))
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        done = epoch + 1 == int(tcfg["epochs"])
        save_checkpoint(
            checkpoint,
            {
                **extra,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "done": done,
                "rng": _get_rng(),
            },
        )
    bar.close()
    return model.eval()


def train_folds(
    boxes: Mapping[str, Box],
    paths: Mapping[str, Path],
    cfg: Mapping[str, Any],
    work_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> list[FoldReport]:
    """Train one detector per fold on ``boxes`` (photo name -> box, files in ``paths``) and box each fold's
    held-out photos with its model. Returns one :class:`FoldReport` per fold."""
    cfg = full_config(cfg)
    tcfg, dcfg = cfg["train"], cfg["data"]
    device = pick_device(tcfg["device"])
    chosen = subset(boxes, tcfg["max_images"], int(tcfg["seed"]))
    names = list(chosen)
    fold_of = split_folds(names, int(tcfg["folds"]), int(tcfg["seed"]))
    reports = []
    for k in range(int(tcfg["folds"])):
        started = time.perf_counter()
        train_names = [n for n in names if fold_of[n] != k]
        holdout = [n for n in names if fold_of[n] == k]
        torch.manual_seed(int(tcfg["seed"]) * 1000 + k)
        model = build_detector(cfg["model"])
        dataset = BoxDataset(
            [paths[n] for n in train_names],
            [chosen[n] for n in train_names],
            max_side=int(dcfg["load_side"]),
            augment=train_augment(float(tcfg["augment"])),
            seed=int(tcfg["seed"]) * 1000 + k,
            cache=bool(tcfg["cache"]),
            max_megapixels=float(dcfg["max_megapixels"]),
        )
        ckpt = fold_checkpoint(work_dir, k)
        extra = {"config": cfg, "fold": k, "holdout": holdout}
        model = train_detector(
            model,
            dataset,
            cfg,
            checkpoint=ckpt,
            extra=extra,
            device=device,
            resume=resume,
            progress=progress,
            desc=f"fold {k}",
        )
        preds = predict_photos(
            [model],
            [paths[n] for n in holdout],
            cfg=cfg["predict"],
            max_side=int(dcfg["load_side"]),
            max_megapixels=float(dcfg["max_megapixels"]),
            device=device,
            progress=progress,
            desc=f"fold {k} held-out",
        )
        reports.append(
            FoldReport(
                k,
                ckpt,
                len(train_names),
                dict(zip(holdout, preds, strict=True)),
                time.perf_counter() - started,
            )
        )
    return reports


def fold_summary(reports: list[FoldReport], truth: Mapping[str, Box]) -> pd.DataFrame:
    """Per fold (and ``all``): photos trained on, held-out photos, photos left without a box, mean IoU."""
    rows = []
    for r in [*reports, None]:
        preds = (
            r.predictions if r is not None else {n: p for rep in reports for n, p in rep.predictions.items()}
        )
        boxed = {n: p.box for n, p in preds.items() if p.box is not None}
        rows.append(
            {
                "fold": "all" if r is None else str(r.fold),
                "train_images": r.train_images if r is not None else sum(x.train_images for x in reports),
                "holdout_images": len(preds),
                "missing": len(preds) - len(boxed),
                "mean_iou": round(mean_iou(boxed, {n: truth[n] for n in preds}), 4)
                if preds
                else float("nan"),
                "seconds": round(r.seconds if r is not None else sum(x.seconds for x in reports), 1),
            }
        )
    return pd.DataFrame(rows)
