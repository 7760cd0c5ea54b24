"""Training of the embedding family on one fold: every known whale a class (singletons included, ``new_whale``
never), optional mirrored classes, ArcFace (+ triplet, focal) loss, warm-up then cosine learning rate, and
the Siamese schedule format, checkpoints, resume and ``metrics.csv`` (the loop is :class:`siamese.train.Trainer`'s).

Schedule blocks are ``{epochs, lr, batch, freeze_branch}`` (no ``K``: nothing is mined). A frozen block
computes branch features once (the test-time crop and ``train.frozen_views`` random training views of every
photo) and trains the neck and margin head on them; one of its epochs covers every view.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from data.catalog import NEW_WHALE
from data.datasets import ImageDataset, make_loader
from data.device import autocast
from data.errors import InputError
from matching.ranking.rank import tune_threshold
from matching.similarity.cosine import SCORINGS, similarity
from siamese.arcface import EmbeddingModel, batch_hard_triplet, build_embedding_model, classification_loss
from siamese.infer import compute_features
from siamese.schedule import Position, global_epoch
from siamese.train import FoldData, Trainer, freeze_batchnorm

MIRROR_SUFFIX = "__mirror"


class Flipped(torch.nn.Module):
    """A module applied to horizontally mirrored images."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.out_dim = getattr(module, "out_dim", 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.flip(-1))


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
    (batches then hold positives for the triplet loss). A final lone item is dropped (batch norm needs 2)."""
    if per_class <= 0:
        order = rng.permutation(len(classes))
    else:
        chunks = []
        for c in np.unique(classes):
            members = rng.permutation(np.flatnonzero(classes == c))
            chunks += [members[i:i + per_class] for i in range(0, len(members), per_class)]
        order = np.concatenate([chunks[i] for i in rng.permutation(len(chunks))]) if chunks else np.zeros(0, int)
    return order


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


class EmbedTrainer(Trainer):
    """Runs an embedding schedule for one fold; ``run_dir`` is ``runs/<model>/fold<k>``."""

    MINES_PAIRS = False

    def __init__(self, model: EmbeddingModel, cfg: dict, data: FoldData, run_dir: Path,
                 device: torch.device, log: Callable[[str], None] = print):
        super().__init__(model, cfg, data, run_dir, device, log)  # one process: no shards
        self.index, self.flip, self.cls, self.classes = class_items(data.train_labels,
                                                                    bool(cfg["model"].get("mirror", False)))
        if model.margin.classes != len(self.classes):
            raise InputError(None, f"the margin head has {model.margin.classes} classes, the fold {len(self.classes)}")
        self.loss_cfg = dict(cfg.get("loss") or {})
        scoring = str(cfg.get("score", {}).get("scoring", "image"))
        if scoring not in SCORINGS:
            raise InputError(None, f"score.scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")

    @classmethod
    def create(cls, cfg: dict, data: FoldData, run_dir: Path, device: torch.device,
               log: Callable[[str], None] = print) -> EmbedTrainer:
        classes = class_items(data.train_labels, bool(cfg["model"].get("mirror", False)))[3]
        if len(classes) < 2:
            raise InputError(None, "the fold has fewer than two known whales to train on")
        return cls(build_embedding_model(cfg["model"], len(classes)), cfg, data, run_dir, device, log)

    # ---- optimisation --------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW with two groups: the branch at the block's lr, neck and margin head at ``head_lr_mult`` times it."""
        mult = float(self.tcfg.get("head_lr_mult", 10.0))
        head = list(self.model.neck.parameters()) + list(self.model.margin.parameters())
        return torch.optim.AdamW([{"params": list(self.model.branch.parameters()), "mult": 1.0},
                                  {"params": head, "mult": mult}],
                                 lr=1e-4, weight_decay=float(self.tcfg.get("weight_decay", 0.0)))

    def _set_lr(self, pos: Position, done: float) -> None:
        stage, block = self.stages[pos.stage], self.stages[pos.stage].blocks[pos.block]
        stage_done = sum(b.epochs for b in stage.blocks[:pos.block]) + done
        factor = lr_factor(done, block.epochs, stage_done, warmup=float(self.tcfg.get("warmup_epochs", 0.0)),
                           cosine=self.tcfg.get("lr_schedule", "cosine") == "cosine",
                           min_factor=float(self.tcfg.get("min_lr_factor", 0.01)))
        for group in self.optimizer.param_groups:
            group["lr"] = block.lr * group["mult"] * factor

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.loss_cfg
        logits = self.model.margin(embeddings, labels)
        loss = classification_loss(logits, labels, smoothing=float(c.get("label_smoothing", 0.0)),
                                   focal_gamma=float(c.get("focal_gamma", 0.0)))
        weight = float(c.get("triplet_weight", 0.0))
        if weight > 0:
            loss = loss + weight * batch_hard_triplet(embeddings, labels, float(c.get("triplet_margin", 0.3)))
        return loss

    def _optimise(self, loss: torch.Tensor) -> None:
        """One step; the gradient scaler (fp16 autocast only, else a pass-through) is the base trainer's."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # ---- features -----------------------------------------------------------------------
    def _item_features(self, size: int) -> torch.Tensor:
        """Branch features of every item for a frozen block, ``[1 + frozen_views, items, D]``: the test-time crop,
        then ``train.frozen_views`` random training views (mirrored items through a flip)."""
        return torch.stack([self._item_view(size, v) for v in range(self.frozen_views + 1)])

    def _item_view(self, size: int, view: int) -> torch.Tensor:
        d = self.data
        what = "branch features" if view == 0 else f"branch features, view {view}"
        feats = self._features(d.train_paths, d.train_boxes, size, what, view)
        out = feats[self.index]
        if self.flip.any():
            plain = self.model.branch
            self.model.branch = Flipped(plain)
            try:
                flipped = self._features(d.train_paths, d.train_boxes, size, f"mirrored {what}", view)
            finally:
                self.model.branch = plain
            out[self.flip] = flipped[self.index[self.flip]]
        return torch.from_numpy(out).to(self.device)

    def _embeddings(self, paths, boxes, size: int, desc: str) -> np.ndarray:
        return compute_features(self.model.embedder(), paths, boxes, size, channels=self.channels,
                                batch=int(self.tcfg.get("feature_batch", 64)), device=self.device,
                                workers=self.tcfg.get("workers"), amp=bool(self.tcfg.get("amp", True)),
                                max_megapixels=float(self.cfg.get("data", {}).get("max_megapixels", 60)), desc=desc)

    def validate(self, size: int) -> tuple[float, float]:
        """Validation MAP@5 of the fold on ``(1 + cosine) / 2`` (``score.scoring``) and the tuned threshold."""
        d = self.data
        if self._frozen_feats is not None:  # a frozen block: the branch features of the gallery are at hand
            self.model.neck.eval()
            with torch.no_grad():
                gallery = self.model.neck(self._frozen_feats[0, torch.from_numpy(np.flatnonzero(~self.flip))])
            gallery = gallery.float().cpu().numpy()[np.argsort(self.index[~self.flip], kind="stable")]
        else:
            gallery = self._embeddings(d.train_paths, d.train_boxes, size, "gallery embeddings")
        query = self._embeddings(d.val_paths, d.val_boxes, size, "validation embeddings")
        scoring = str(self.cfg.get("score", {}).get("scoring", "image"))
        scores = 0.5 * (1.0 + similarity(query, gallery, list(d.train_labels), scoring=scoring))
        threshold, map5 = tune_threshold(scores, list(d.train_labels), list(d.val_labels),
                                         mode=self.tcfg.get("val_mode", "max"))
        return float(map5), float(threshold)

    # ---- one epoch ----------------------------------------------------------------------
    def _run_epoch(self, pos: Position) -> float:
        stage, block = self.stages[pos.stage], self.stages[pos.stage].blocks[pos.block]
        g = global_epoch(self.stages, pos)
        rng = np.random.default_rng([self.seed, g])
        torch.manual_seed(self.seed * 1_000_003 + g)
        desc = f"{stage.size}px block {pos.block + 1}/{len(stage.blocks)} epoch {pos.epoch + 1}/{block.epochs}"
        if block.freeze_branch and self._frozen_feats is None:
            self._frozen_feats = self._item_features(stage.size)
        # a frozen epoch covers every cached view of every item: flat index view * items + item
        classes = np.tile(self.cls, self._frozen_feats.shape[0]) if block.freeze_branch else self.cls
        order = epoch_order(classes, rng, int(self.tcfg.get("per_class", 0)))
        if len(order) % block.batch == 1:
            order = order[:-1]
        if block.freeze_branch:
            return self._train_frozen_items(order, classes, block.batch, pos, desc)
        return self._train_image_items(order, block.batch, stage.size, g, pos, desc)

    def _train_frozen_items(self, order: np.ndarray, classes: np.ndarray, batch: int, pos: Position,
                            desc: str) -> float:
        """One epoch of neck and head on the cached features; ``order`` and ``classes`` index the flat views."""
        feats = self._frozen_feats.flatten(0, 1)
        self.model.branch.eval()
        self.model.neck.train()
        steps = max(1, math.ceil(len(order) / batch))
        total, n = 0.0, 0
        for step, start in enumerate(tqdm(range(0, len(order), batch), desc=desc, leave=False, unit="batch")):
            self._set_lr(pos, pos.epoch + step / steps)
            idx = torch.from_numpy(order[start:start + batch])
            y = torch.from_numpy(classes[idx.numpy()]).to(self.device)
            loss = self._loss(self.model.neck(feats[idx.to(self.device)]), y)
            self._optimise(loss)
            total += float(loss.detach()) * len(y)
            n += len(y)
        return total / max(n, 1)

    def _train_image_items(self, order: np.ndarray, batch: int, size: int, g: int, pos: Position,
                           desc: str) -> float:
        d = self.data
        images = ImageDataset(d.train_paths, d.train_boxes, size, channels=self.channels, train=True, seed=self.seed,
                              max_megapixels=float(self.cfg.get("data", {}).get("max_megapixels", 60)),
                              augment_strength=float(self.tcfg.get("augment_strength", 1.0)),
                              augment=str(self.tcfg.get("augment", "fluke")))
        images.set_epoch(g)
        loader = make_loader(ItemImages(images, self.index, self.flip, self.cls, order), batch, shuffle=False,
                             workers=self.tcfg.get("workers"))
        self.model.train()
        if self.tcfg.get("freeze_bn", False):
            freeze_batchnorm(self.model.branch)
        amp = bool(self.tcfg.get("amp", True))
        steps = max(1, len(loader))
        total, n = 0.0, 0
        for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, unit="batch")):
            self._set_lr(pos, pos.epoch + step / steps)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, amp):
                embeddings = self.model.embed(x)
            loss = self._loss(embeddings.float(), y)
            self._optimise(loss)
            total += float(loss.detach()) * len(y)
            n += len(y)
        return total / max(n, 1)

    # ---- checkpoints --------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"classes": self.classes}

    def _restore_extra(self, state: dict, path: Path) -> None:
        if list(state.get("classes", [])) != self.classes:
            raise InputError(path, "was trained on other classes (another fold, data set or mirror setting)")

    def _resumable_after(self, pos, block, block_done) -> bool:
        return True  # nothing is cached between epochs that a resumed run could not rebuild

    def _log_row(self, row: dict) -> None:
        msg = (f"{row['size']}px block {row['block']} epoch {row['epoch']}: loss {row['loss']:.4f} "
               f"(lr {row['lr']:g}{', frozen branch' if row['freeze_branch'] else ''})")
        if not np.isnan(row["val_map5"]):
            msg += f"  val MAP@5 {row['val_map5']:.4f} (threshold {row['threshold']:.3f})"
        self.log(msg)
