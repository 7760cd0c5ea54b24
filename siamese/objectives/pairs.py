"""The Siamese objective: pairs of photos, positives of one whale and negatives mined by linear assignment on
the model's own score matrix (``K``: the miner's noise), binary cross-entropy on the pair head.

``loss.margin_weight > 0`` adds an auxiliary ArcFace classifier (``model.arc_s``, ``arc_m``) over the fold's
mining whales on the features the head reads, both sides of every pair: it shapes the neck as the embedding
family's loss does, while the pair head stays the scorer. The classifier is training machinery, kept in
``last.pt`` beside the miner, never in the model.

A frozen block trains the neck and head on cached trunk features of the mining photos: the test-time crop
and ``train.frozen_views`` random training views, each side of each pair on a random view, every pair once
per view round. Mining then scores the neck's outputs (the head over every pair), every ``mine_every`` epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset
from tqdm.auto import tqdm

from data.catalog import NEW_WHALE
from data.datasets import ImageDataset, PairDataset, make_loader
from data.device import autocast, image_batch
from data.errors import InputError
from matching.ranking.rank import tune_threshold
from matching.similarity.pair_head import score_matrix
from siamese.arcface import ArcMarginHead, classification_loss
from siamese.head import PairHead
from siamese.objectives import Objective
from siamese.pairs import NegativeMiner, positive_pairs
from siamese.schedule import Block, Position
from siamese.trainer import FoldData


class PairObjective(Objective):
    mines_pairs = True

    def __init__(self, data: FoldData, cfg: dict, source: str | Path | None = None):
        if len(data.mining_index) < 2:
            raise InputError(source, "the fold has fewer than two whales with 2+ training images")
        t = cfg["train"]
        self.mine_idx = data.mining_index
        self.mine_labels = data.train_labels[self.mine_idx]
        self.miner = NegativeMiner(self.mine_labels, segments=t["segments"], sparse_k=t["sparse_k"], memory=1)
        self._mine_scores: np.ndarray | None = None
        self.margin_weight = cfg["loss"]["margin_weight"]
        self.margin: ArcMarginHead | None = None
        self._margin_ddp: torch.nn.Module | None = None
        self._classes = torch.from_numpy(np.unique(self.mine_labels, return_inverse=True)[1].ravel())

    def bind(self, trainer) -> None:
        super().bind(trainer)
        if self.margin_weight > 0:
            m = trainer.cfg["model"]
            with torch.random.fork_rng(devices=[]):  # its own seeded draw; the run's stream stays as it was
                torch.manual_seed(trainer.seed)
                self.margin = ArcMarginHead(trainer.model.head.dim, int(self._classes.max()) + 1, s=m["arc_s"],
                                            m=m["arc_m"], easy_margin=m["easy_margin"]).to(trainer.device)
            self._classes = self._classes.to(trainer.device)

    # ---- what the trainer asks ----------------------------------------------------------
    def optimizer(self) -> torch.optim.Optimizer:
        """A fresh Adam over every parameter (the lr is set by each block; the neck's is ``train.neck_lr_mult``
        times it)."""
        t = self.trainer
        neck = list(t.model.neck.parameters())
        ids = {id(p) for p in neck}
        rest = [p for p in t.model.parameters() if id(p) not in ids]
        groups = [{"params": rest, "mult": 1.0}] + ([{"params": neck, "mult": t.tcfg["neck_lr_mult"]}] if neck else [])
        if self.margin is not None:
            groups.append({"params": list(self.margin.parameters()), "mult": 1.0})
        return torch.optim.Adam(groups, lr=1e-4, weight_decay=t.tcfg["weight_decay"])

    def begin(self, size: int) -> None:
        """``model.head_init: cosine``: fit the cosine head's scale and offset to the untrained features."""
        t = self.trainer
        if t.cfg["model"]["head_init"] == "cosine":
            feats = self.head_features(self.mining_features(size))
            scale, offset = calibrate_cosine_head(t.model.head, feats, self.mine_labels)
            t.log(f"cosine head: scale {scale:.2f}, offset {offset:.3f} (fitted on {len(feats)} images)")

    def new_block(self) -> None:
        self._mine_scores = None

    def frozen_features(self, size: int) -> torch.Tensor:
        """Trunk features of the mining images, ``[1 + frozen_views, N, D]``: the test-time crop, then
        ``train.frozen_views`` random training views (in a tail block the stem maps, ``[.., N, C, H, W]``)."""
        t = self.trainer
        views = [self.mining_features(size, v, stem=t.tail_block) for v in range(t.frozen_views + 1)]
        return torch.from_numpy(np.stack(views)).to(self.trainer.device)

    def epoch(self, pos: Position, rng: np.random.Generator, g: int, desc: str) -> float:
        t = self.trainer
        stage = t.stages[pos.stage]
        block = stage.blocks[pos.block]
        if block.K >= t.tcfg["random_k"]:
            scores = None
        else:
            if self._mine_scores is None or pos.epoch % t.tcfg["mine_every"] == 0:
                feats = self.head_features(t.cached_view(0) if t.cached_block(block)
                                           else self.mining_features(stage.size))
                self._mine_scores = self.scores(feats, feats)
            scores = self._mine_scores
        pairs, targets = self._epoch_pairs(block, rng, scores)
        if t.cached_block(block):
            pairs, targets, views = frozen_view_rounds(pairs, targets, t.frozen_feats.shape[0], [t.seed, g, 1])
            return self._train_frozen(pairs, targets, views, block, desc)
        return self._train_images(pairs, targets, block, stage.size, g, desc)

    def validate(self, size: int) -> tuple[float, float]:
        """Validation MAP@5 of the head over validation x catalog pairs, threshold tuned for ``new_whale``."""
        t, d = self.trainer, self.trainer.data
        known = d.train_labels != NEW_WHALE
        if t.frozen_feats is not None and known.all():
            gallery = self.head_features(self._frozen_gallery(size))
        else:
            gallery = self._encode([p for p, k in zip(d.train_paths, known) if k],
                                   [b for b, k in zip(d.train_boxes, known) if k], size, "gallery features")
        query = self._encode(d.val_paths, d.val_boxes, size, "validation features")
        threshold, map5 = tune_threshold(self.scores(query, gallery), list(d.train_labels[known]),
                                         list(d.val_labels), mode=t.tcfg["val_mode"])
        return float(map5), float(threshold)

    def state_dict(self) -> dict:
        margin = {} if self.margin is None else {"margin_head": self.margin.state_dict()}
        return {"miner": self.miner.state_dict(), **margin}

    def load_state_dict(self, state: dict, path: Path) -> None:
        self.miner.load_state_dict(state["miner"])
        if self.margin is not None:
            if "margin_head" not in state:
                raise InputError(path, "this checkpoint has no margin classifier (loss.margin_weight was 0): "
                                       "resume with the config it was trained with")
            self.margin.load_state_dict(state["margin_head"])

    def resumable_after(self, pos: Position, block: Block) -> bool:
        """After epochs that leave no cached mining scores behind."""
        t = self.trainer.tcfg
        return block.K >= t["random_k"] or (pos.epoch + 1) % t["mine_every"] == 0

    # ---- features and scores ------------------------------------------------------------
    def mining_features(self, size: int, view: int = 0, stem: bool = False) -> np.ndarray:
        """Trunk features of the mining images: the test-time crop, or random training view ``view``; ``stem``:
        the stem maps with ``train.trainable_stages``."""
        d = self.trainer.data
        return self.trainer.features([d.train_paths[i] for i in self.mine_idx],
                                     [d.train_boxes[i] for i in self.mine_idx], size,
                                     "mining features" if view == 0 else f"mining features, view {view}", view,
                                     stem=stem)

    def head_features(self, trunk: np.ndarray | torch.Tensor) -> np.ndarray:
        """What the pair head reads: the neck over trunk features, or the features themselves without a neck."""
        if not self.trainer.model.has_neck:
            return trunk.cpu().numpy() if isinstance(trunk, torch.Tensor) else trunk
        return self.trainer.neck_features(trunk)

    def scores(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """The head over every query x gallery pair; with several ranks each scores its query rows."""
        t = self.trainer
        part = score_matrix(t.model.head, query[t.shards.rows(len(query))], gallery, device=t.device,
                            budget_mb=t.tcfg["score_budget_mb"], progress=t.shards.main)
        return t.shards.gather_rows(part)

    def _encode(self, paths, boxes, size: int, desc: str) -> np.ndarray:
        """Head features of the test-time crops of ``paths``; in a frozen block from the trainer's trunk cache."""
        t = self.trainer
        if t.frozen_feats is None:
            return self.head_features(t.features(paths, boxes, size, desc))
        return self.head_features(t.cached_trunk(desc, paths, boxes, size, desc))

    def _frozen_gallery(self, size: int) -> np.ndarray:
        """Trunk features of every training image in a frozen block: the mining images' from the cached
        test-time view, the others (whales with one photo) computed once."""
        t, d = self.trainer, self.trainer.data
        rest = np.setdiff1d(np.arange(len(d.train_paths)), self.mine_idx)
        mined = t.cached_view(0).cpu().numpy()
        out = np.empty((len(d.train_paths), mined.shape[1]), np.float32)
        out[self.mine_idx] = mined
        if len(rest):
            out[rest] = t.cached_trunk("gallery rest", [d.train_paths[i] for i in rest],
                                       [d.train_boxes[i] for i in rest], size, "gallery features")
        return out

    # ---- one epoch ----------------------------------------------------------------------
    def _epoch_pairs(self, block: Block, rng: np.random.Generator, scores: np.ndarray | None):
        """The epoch's pairs and targets, shuffled; mined on rank 0 and sent to every rank."""
        shards = self.trainer.shards
        pairs = targets = None
        if shards.main:
            pos = positive_pairs(self.mine_labels, rng)
            neg = self.miner.mine(scores, block.K, rng)
            pairs = np.concatenate([pos, neg]).astype(np.int64)
            targets = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
            order = rng.permutation(len(pairs))
            pairs, targets = pairs[order], targets[order]
        return shards.broadcast(pairs, np.int64), shards.broadcast(targets, np.float32)

    def _local_batches(self, n: int, batch: int) -> list[tuple[list[int], int]]:
        """This rank's share of every batch and the batch's size; an empty share becomes one item of weight 0
        (every rank must take part in each step)."""
        return [(share, size) if share else ([0], -size) for share, size in self.trainer.shards.batches(n, batch)]

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, size: int, sync: bool) -> tuple[torch.Tensor, float]:
        """The mean BCE of a global batch of ``|size|`` pairs from this rank's share (``size < 0``: a placeholder
        of weight 0; DistributedDataParallel averages image-batch gradients over ranks, hence the scale), and
        the share's summed loss."""
        t = self.trainer
        losses = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        if size < 0:
            losses = losses * 0.0
        scale = t.shards.world if t.shards.world > 1 and not sync else 1
        return losses.sum() * (scale / abs(size)), float(losses.detach().sum())

    def _margin_loss(self, idx: torch.Tensor, fa: torch.Tensor, fb: torch.Tensor, size: int,
                     margin: torch.nn.Module | None) -> torch.Tensor | float:
        """``loss.margin_weight`` x the ArcFace cross-entropy of both sides of the share's pairs (``idx``: their
        mining indices), scaled as :meth:`_loss` scales the BCE; 0 without the classifier."""
        if margin is None:
            return 0.0
        labels = self._classes[torch.cat([idx[:, 0], idx[:, 1]]).to(self._classes.device)]
        feats = torch.cat([fa, fb]).float()
        ce = classification_loss(margin(feats, labels), labels) * len(labels)  # the share's sum
        if size < 0:
            ce = ce * 0.0
        t = self.trainer
        scale = t.shards.world if t.shards.world > 1 and margin is not self.margin else 1
        return self.margin_weight * ce * (scale / (2 * abs(size)))

    def _image_margin(self) -> torch.nn.Module | None:
        """The classifier for image batches: in DistributedDataParallel under torchrun, as the model is."""
        if self.margin is None or self.trainer.shards.world == 1:
            return self.margin
        if self._margin_ddp is None:
            self._margin_ddp = self.trainer.distributed(self.margin)
        return self._margin_ddp

    def _train_frozen(self, pairs, targets, views, block: Block, desc: str) -> float:
        t = self.trainer
        feats, model = t.frozen_feats, t.model
        t.cached_train_mode()
        model.neck.train()
        model.head.train()
        trainable = list(model.neck.parameters()) + list(model.head.parameters()) + t.cached_parameters()
        if self.margin is not None:
            trainable += list(self.margin.parameters())
        total, n = 0.0, 0
        for share, size in tqdm(self._local_batches(len(pairs), block.batch), desc=desc, leave=False,
                                unit="batch", disable=not t.shards.main):
            idx = torch.from_numpy(pairs[share])
            view = torch.from_numpy(views[share])
            y = torch.from_numpy(targets[share]).to(t.device)
            fa = model.neck(t.cached_forward(feats[view[:, 0], idx[:, 0]]))
            fb = model.neck(t.cached_forward(feats[view[:, 1], idx[:, 1]]))
            logits = model.head(fa, fb)
            loss, summed = self._loss(logits, y, size, sync=True)
            loss = loss + self._margin_loss(idx, fa, fb, size, self.margin)
            t.step(loss, sync=trainable)
            total += summed
            n += len(y) if size > 0 else 0
        return t.epoch_loss(total, n)

    def _train_images(self, pairs, targets, block: Block, size: int, g: int, desc: str) -> float:
        t, d = self.trainer, self.trainer.data
        images = ImageDataset([d.train_paths[i] for i in self.mine_idx], [d.train_boxes[i] for i in self.mine_idx],
                              size, channels=t.channels, train=True, seed=t.seed,
                              max_megapixels=t.cfg["data"]["max_megapixels"],
                              augment_strength=t.tcfg["augment_strength"], augment=t.tcfg["augment"])
        images.set_epoch(g)
        batches = self._local_batches(len(pairs), block.batch)
        local: list[int] = []
        sampler = []
        for share, _ in batches:
            sampler.append(list(range(len(local), len(local) + len(share))))
            local += share
        loader = make_loader(Subset(PairDataset(images, pairs, targets), local), 1, batch_sampler=sampler,
                             workers=t.tcfg["workers"])
        t.train_branch_mode()
        model, margin = t.wrapped(), self._image_margin()
        total, n = 0.0, 0
        for (a, b, y), (share, bsize) in zip(tqdm(loader, desc=desc, leave=False, unit="batch",
                                                  disable=not t.shards.main), batches):
            a, b, y = image_batch(a, t.device), image_batch(b, t.device), y.to(t.device, non_blocking=True)
            with autocast(t.device, t.tcfg["amp"]):
                logits, fa, fb = model(a, b, features=True)
            loss, summed = self._loss(logits, y, bsize, sync=False)
            loss = loss + self._margin_loss(torch.from_numpy(pairs[share]), fa, fb, bsize, margin)
            t.step(loss)
            total += summed
            n += len(y) if bsize > 0 else 0
        return t.epoch_loss(total, n)


def frozen_view_rounds(pairs: np.ndarray, targets: np.ndarray, rounds: int, seed: list[int]):
    """The epoch's pairs once per cached view (``rounds = 1 + train.frozen_views``), each side of each pair on a
    view drawn at random: ``(pairs, targets, views [n, 2])``, shuffled. With one round: view 0 throughout."""
    if rounds == 1:
        return pairs, targets, np.zeros((len(pairs), 2), np.int64)
    rng = np.random.default_rng(seed)
    pairs, targets = np.tile(pairs, (rounds, 1)), np.tile(targets, rounds)
    views = rng.integers(0, rounds, size=(len(pairs), 2))
    order = rng.permutation(len(pairs))
    return pairs[order], targets[order], views[order]


def calibrate_cosine_head(head: PairHead, feats: np.ndarray, labels: np.ndarray, max_images: int = 2000,
                          seed: int = 0) -> tuple[float, float]:
    """Set a cosine-initialised head's scale and offset from the cosines of same-whale and other-whale pairs
    of ``feats`` (length ``sqrt(D)``): the logistic that linear discriminant analysis gives for two
    Gaussians of equal variance, ``(mu_same - mu_other) / var * (cos - (mu_same + mu_other) / 2)``.
    Returns ``(scale, offset)``; leaves the head as it is when there is no same-whale pair."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(feats), max_images, replace=False) if len(feats) > max_images else np.arange(len(feats))
    f, lab = torch.from_numpy(np.asarray(feats, np.float32)[pick]), np.asarray(labels)[pick]
    cos = (f @ f.T / f.shape[1]).numpy()
    same = lab[:, None] == lab[None, :]
    np.fill_diagonal(same, False)
    other = lab[:, None] != lab[None, :]
    if not same.any() or not other.any():
        return float("nan"), float("nan")
    mu_s, mu_o = float(cos[same].mean()), float(cos[other].mean())
    var = 0.5 * (float(cos[same].var()) + float(cos[other].var())) + 1e-8
    scale = float(np.clip((mu_s - mu_o) / var, 1.0, 100.0))
    offset = 0.5 * (mu_s + mu_o)
    head.init_cosine(scale=scale, offset=offset)
    return scale, offset
