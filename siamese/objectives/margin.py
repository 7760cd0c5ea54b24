"""The ArcFace objective: every known whale of the fold a class (singletons included, ``new_whale`` never),
optional mirrored classes, ArcFace (+ triplet, focal) loss, a warm-up then a cosine learning rate per block.

Schedule blocks are ``{epochs, lr, batch, freeze_branch}`` (no ``K``: nothing is mined). A frozen block trains
the neck and margin head on cached branch features of every item (the test-time crop and
``train.frozen_views`` random training views, mirrored items through a flip); one epoch covers every view.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from data.catalog import NEW_WHALE
from data.datasets import ImageDataset, make_loader
from data.device import autocast, image_batch
from data.errors import InputError
from matching.ranking.rank import tune_threshold
from matching.similarity.cosine import similarity
from siamese.arcface import batch_hard_triplet, classification_loss
from siamese.infer import Flipped
from siamese.objectives import Objective
from siamese.schedule import Position, epochs_before
from siamese.trainer import FoldData

MIRROR_SUFFIX = "__mirror"


def class_items(labels: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Training items ``(image index, mirrored, class)`` and the class names, sorted.

    With ``mirror`` every photo appears twice: as itself, and mirrored under the new class ``<Id>__mirror``
    (a mirrored fluke is another individual; these classes are ignored at test time)."""
    labels = np.asarray(labels, dtype=str)
    if (labels == NEW_WHALE).any():
        raise ValueError("new_whale is not a class")
    names, cls = np.unique(labels, return_inverse=True)
    index = np.arange(len(labels))
    flip = np.zeros(len(labels), dtype=bool)
    classes = [str(n) for n in names]
    if mirror:
        index, flip = np.concatenate([index, index]), np.concatenate([flip, ~flip])
        cls = np.concatenate([cls, cls + len(names)])
        classes += [n + MIRROR_SUFFIX for n in classes]
    return index, flip, cls.astype(np.int64), classes


def epoch_order(classes: np.ndarray, rng: np.random.Generator, per_class: int = 0) -> np.ndarray:
    """A random order of the items; with ``per_class`` k > 0, items come in runs of up to k of one class
    (batches then hold positives for the triplet loss)."""
    if per_class <= 0:
        return rng.permutation(len(classes))
    chunks = []
    for c in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == c))
        chunks += [members[i:i + per_class] for i in range(0, len(members), per_class)]
    return np.concatenate([chunks[i] for i in rng.permutation(len(chunks))]) if chunks else np.zeros(0, int)


def lr_factor(done: float, block_epochs: int, stage_done: float, *, warmup: float = 0.0, cosine: bool = True,
              min_factor: float = 0.01) -> float:
    """The multiple of a block's lr after ``done`` epochs of the block (``stage_done`` of the stage): a linear
    warm-up over the first ``warmup`` epochs of each stage, then a cosine from 1 to ``min_factor`` over the block."""
    factor = 1.0
    if cosine:
        factor = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(done / block_epochs, 1.0)))
    if warmup > 0 and stage_done < warmup:
        factor *= max(stage_done, 1e-3) / warmup
    return factor


class ItemImages(Dataset):
    """Training items as ``(image, class)``: the photo's random training view, mirrored where asked."""

    def __init__(self, images: ImageDataset, index: np.ndarray, flip: np.ndarray, cls: np.ndarray,
                 order: np.ndarray):
        self.images, self.index, self.flip, self.cls, self.order = images, index, flip, cls, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = int(self.order[k])
        x = self.images.get(int(self.index[item]), draw=k + 1)
        if self.flip[item]:
            x = x.flip(-1)
        return x, torch.tensor(self.cls[item])


def fold_classes(data: FoldData, cfg: dict, source: str | Path | None = None) -> list[str]:
    """The margin head's classes for a fold (mirrored ones included); fewer than two is an InputError."""
    classes = class_items(data.train_labels, cfg["model"]["mirror"])[3]
    if len(classes) < 2:
        raise InputError(source, "the fold has fewer than two known whales to train on")
    return classes


class MarginObjective(Objective):
    def __init__(self, data: FoldData, cfg: dict, source: str | Path | None = None):
        self.index, self.flip, self.cls, self.classes = class_items(data.train_labels, cfg["model"]["mirror"])
        self.loss_cfg = cfg["loss"]

    def bind(self, trainer) -> None:
        super().bind(trainer)
        if trainer.shards.world > 1:
            raise InputError(None, "the arcface family trains in one process; run it without torchrun")
        if trainer.tcfg["neck_lr_mult"] != 1.0:
            raise InputError(None, "the arcface family sets its neck's lr with train.head_lr_mult; "
                                   "leave train.neck_lr_mult at 1")
        if trainer.model.margin.classes != len(self.classes):
            raise InputError(None, f"the margin head has {trainer.model.margin.classes} classes, "
                                   f"the fold {len(self.classes)}")

    # ---- optimisation -------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW with two groups: the branch at the block's lr, neck and margin head at ``head_lr_mult`` times it."""
        t = self.trainer
        model = t.model
        head = list(model.neck.parameters()) + list(model.margin.parameters())
        return torch.optim.AdamW([{"params": list(model.branch.parameters()), "mult": 1.0},
                                  {"params": head, "mult": t.tcfg["head_lr_mult"]}],
                                 lr=1e-4, weight_decay=t.tcfg["weight_decay"])

    def set_lr(self, pos: Position, done: float) -> None:
        """Each group's lr after ``done`` epochs of the block at ``pos`` (warm-up, then cosine)."""
        t = self.trainer
        stage, block = t.stages[pos.stage], t.stages[pos.stage].blocks[pos.block]
        stage_done = epochs_before(stage, pos.block) + done
        factor = lr_factor(done, block.epochs, stage_done, warmup=t.tcfg["warmup_epochs"],
                           cosine=t.tcfg["lr_schedule"] == "cosine", min_factor=t.tcfg["min_lr_factor"])
        for group in t.optimizer.param_groups:
            group["lr"] = block.lr * group["mult"] * factor

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin classification loss (label smoothing, focal) plus the weighted batch-hard triplet loss."""
        c = self.loss_cfg
        logits = self.trainer.model.margin(embeddings, labels)
        loss = classification_loss(logits, labels, smoothing=c["label_smoothing"], focal_gamma=c["focal_gamma"])
        if c["triplet_weight"] > 0:
            loss = loss + c["triplet_weight"] * batch_hard_triplet(embeddings, labels, c["triplet_margin"])
        return loss

    # ---- features -----------------------------------------------------------------------
    def frozen_features(self, size: int) -> torch.Tensor:
        """Branch features of every item, ``[1 + frozen_views, items, D]``: the test-time crop, then
        ``train.frozen_views`` random training views (mirrored items through a flip)."""
        return torch.stack([self._item_view(size, v) for v in range(self.trainer.frozen_views + 1)])

    def _item_view(self, size: int, view: int) -> torch.Tensor:
        t, d = self.trainer, self.trainer.data
        what = "branch features" if view == 0 else f"branch features, view {view}"
        out = t.features(d.train_paths, d.train_boxes, size, what, view, stem=t.tail_block)[self.index]
        if self.flip.any():
            flipped = t.features(d.train_paths, d.train_boxes, size, f"mirrored {what}", view,
                                 module=Flipped(t.model.branch), stem=t.tail_block)
            out[self.flip] = flipped[self.index[self.flip]]
        return torch.from_numpy(out).to(t.device)

    def validate(self, size: int) -> tuple[float, float]:
        """Validation MAP@5 of the fold on ``(1 + cosine) / 2`` (``score.scoring``) and the tuned threshold."""
        t, d = self.trainer, self.trainer.data
        if t.frozen_feats is not None:  # a frozen block: the branch features of the gallery are at hand
            plain = np.flatnonzero(~self.flip)
            gallery = t.neck_features(t.cached_view(0)[torch.from_numpy(plain).to(t.device)])
            gallery = gallery[np.argsort(self.index[~self.flip], kind="stable")]
        else:
            gallery = t.features(d.train_paths, d.train_boxes, size, "gallery embeddings",
                                 module=t.model.embedder())
        query = t.features(d.val_paths, d.val_boxes, size, "validation embeddings", module=t.model.embedder())
        scores = 0.5 * (1.0 + similarity(query, gallery, list(d.train_labels), scoring=t.cfg["score"]["scoring"]))
        threshold, map5 = tune_threshold(scores, list(d.train_labels), list(d.val_labels), mode=t.tcfg["val_mode"])
        return float(map5), float(threshold)

    # ---- one epoch ----------------------------------------------------------------------
    def epoch(self, pos: Position, rng: np.random.Generator, g: int, desc: str) -> float:
        t = self.trainer
        block = t.stages[pos.stage].blocks[pos.block]
        # a frozen epoch covers every cached view of every item: flat index view * items + item
        cached = t.cached_block(block)
        classes = np.tile(self.cls, t.frozen_feats.shape[0]) if cached else self.cls
        order = epoch_order(classes, rng, t.tcfg["per_class"])
        if len(order) % block.batch == 1:
            order = order[:-1]  # a final lone item (batch norm needs 2)
        if cached:
            return self._train_frozen(order, classes, block.batch, pos, desc)
        return self._train_images(order, block.batch, t.stages[pos.stage].size, g, pos, desc)

    def _train_frozen(self, order: np.ndarray, classes: np.ndarray, batch: int, pos: Position, desc: str) -> float:
        """One epoch of neck and head on the cached features; ``order`` and ``classes`` index the flat views."""
        t = self.trainer
        feats = t.frozen_feats.flatten(0, 1)
        t.cached_train_mode()
        t.model.neck.train()
        steps = max(1, math.ceil(len(order) / batch))
        total, n = 0.0, 0
        for step, start in enumerate(tqdm(range(0, len(order), batch), desc=desc, leave=False, unit="batch")):
            self.set_lr(pos, pos.epoch + step / steps)
            idx = torch.from_numpy(order[start:start + batch])
            y = torch.from_numpy(classes[idx.numpy()]).to(t.device)
            loss = self.loss(t.model.neck(t.cached_forward(feats[idx.to(t.device)])), y)
            t.step(loss)
            total += float(loss.detach()) * len(y)
            n += len(y)
        return total / max(n, 1)

    def _train_images(self, order: np.ndarray, batch: int, size: int, g: int, pos: Position, desc: str) -> float:
        t, d = self.trainer, self.trainer.data
        images = ImageDataset(d.train_paths, d.train_boxes, size, channels=t.channels, train=True, seed=t.seed,
                              max_megapixels=t.cfg["data"]["max_megapixels"],
                              augment_strength=t.tcfg["augment_strength"], augment=t.tcfg["augment"])
        images.set_epoch(g)
        loader = make_loader(ItemImages(images, self.index, self.flip, self.cls, order), batch, shuffle=False,
                             workers=t.tcfg["workers"])
        t.train_branch_mode()
        steps = max(1, len(loader))
        total, n = 0.0, 0
        for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, unit="batch")):
            self.set_lr(pos, pos.epoch + step / steps)
            x, y = image_batch(x, t.device), y.to(t.device, non_blocking=True)
            with autocast(t.device, t.tcfg["amp"]):
                embeddings = t.model.embed(x)
            loss = self.loss(embeddings.float(), y)
            t.step(loss)
            total += float(loss.detach()) * len(y)
            n += len(y)
        return total / max(n, 1)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"classes": self.classes}

    def load_state_dict(self, state: dict, path: Path) -> None:
        if list(state.get("classes", [])) != self.classes:
            raise InputError(path, "was trained on other classes (another fold, data set or mirror setting)")
