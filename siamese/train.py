"""The Siamese training loop: stages by resolution, blocks of epochs, mined pairs, validation, checkpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset
from tqdm.auto import tqdm

from data.catalog import NEW_WHALE
from data.checkpoint import load_checkpoint, save_checkpoint
from data.datasets import ImageDataset, PairDataset, make_loader
from data.device import autocast, needs_grad_scaler
from data.distributed import SINGLE, Shards
from data.errors import InputError
from data.io import write_csv
from matching.ranking.rank import tune_threshold
from matching.similarity.pair_head import score_matrix
from siamese.head import PairHead
from siamese.infer import compute_features
from siamese.model import SiameseModel
from siamese.pairs import NegativeMiner, positive_pairs
from siamese.schedule import Block, Position, Stage, global_epoch, parse_schedule


@dataclass
class FoldData:
    """Images of one fold: the training side (catalog of known whales) and the validation side."""

    train_paths: list[Path]
    train_boxes: list
    train_labels: np.ndarray
    val_paths: list[Path]
    val_boxes: list
    val_labels: np.ndarray

    @property
    def mining_index(self) -> np.ndarray:
        """Training images whose whale has 2+ training images: the only ones that give pairs."""
        ids, counts = np.unique(self.train_labels, return_counts=True)
        multi = set(ids[counts >= 2]) - {NEW_WHALE}
        return np.flatnonzero([label in multi for label in self.train_labels])


def stage_dir(run_dir: Path, stage: Stage) -> Path:
    return run_dir / f"{stage.size}px"


class Trainer:
    """Runs a schedule for one fold; ``run_dir`` is ``runs/<model>/fold<k>``.

    Under ``torchrun`` (``shards`` of several processes) every rank computes its rows of the features and
    score matrices, rank 0 mines the pairs and sends them to all, each rank trains on its share of every
    batch (gradients summed by DistributedDataParallel, so the steps are those of one process), and only
    rank 0 writes checkpoints and metrics."""

    MINES_PAIRS = True  # a family trained on mined pairs: schedule blocks carry K, the miner's memory is saved

    def __init__(self, model: SiameseModel, cfg: dict, data: FoldData, run_dir: Path,
                 device: torch.device, log: Callable[[str], None] = print, shards: Shards = SINGLE):
        self.shards = shards
        self._ddp: DistributedDataParallel | None = None
        self.model = model.to(device)
        amp = bool(cfg["train"].get("amp", True))
        # fp16 autocast (GPUs without bf16) underflows small gradients unless the loss is scaled
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp))
        if cfg["train"].get("compile", False):
            self.model.branch.compile()  # in place: parameter names and checkpoints stay those of the module
        self.cfg = cfg
        self.tcfg = cfg["train"]
        self.data = data
        self.run_dir = Path(run_dir)
        self.device = device
        self.log = log if shards.main else (lambda _: None)
        self.stages = parse_schedule(self.tcfg.get("stages"), "train.stages", require_k=self.MINES_PAIRS)
        self.seed = int(self.tcfg.get("seed", 0))
        self.channels = int(cfg["model"].get("in_chans", 3))
        self.mine_idx = data.mining_index
        self.mine_labels = data.train_labels[self.mine_idx]
        self.miner = (NegativeMiner(self.mine_labels, segments=int(self.tcfg.get("segments", 1)),
                                    sparse_k=self.tcfg.get("sparse_k"), memory=1) if self.MINES_PAIRS else None)
        self.optimizer = self._optimizer()
        self.rows: list[dict] = []
        self.best_map5 = -1.0
        self._mine_scores: np.ndarray | None = None
        self._frozen_feats: torch.Tensor | None = None  # [1 + frozen_views, mining images, D] trunk features
        self._trunk_cache: dict[str, np.ndarray] = {}  # validation trunk features while the trunk stays frozen
        self.frozen_views = int(self.tcfg.get("frozen_views", 0) or 0)
        if self.frozen_views < 0:
            raise InputError(None, f"train.frozen_views must be >= 0, not {self.frozen_views}")

    # ---- features and scores -------------------------------------------------------------
    def _features(self, paths, boxes, size: int, desc: str, view: int = 0) -> np.ndarray:
        """Branch features of every image (the test-time crop, or random training view ``view``); with several
        ranks each computes its rows and all get the whole."""
        rows = self.shards.rows(len(paths))
        paths, boxes = list(paths)[rows], list(boxes)[rows]
        return self.shards.gather_rows(self._local_features(paths, boxes, size, desc, view))

    def _local_features(self, paths, boxes, size: int, desc: str, view: int = 0) -> np.ndarray:
        return compute_features(self.model.branch, paths, boxes, size, channels=self.channels,
                                batch=int(self.tcfg.get("feature_batch", 64)), device=self.device,
                                workers=self.tcfg.get("workers"), amp=bool(self.tcfg.get("amp", True)),
                                max_megapixels=float(self.cfg.get("data", {}).get("max_megapixels", 60)),
                                desc=desc, view=view, seed=self.seed,
                                augment_strength=float(self.tcfg.get("augment_strength", 1.0)),
                                augment=str(self.tcfg.get("augment", "fluke")))

    @torch.no_grad()
    def _head_features(self, trunk: np.ndarray | torch.Tensor) -> np.ndarray:
        """What the pair head reads: the neck (in eval mode) over trunk features; the features themselves
        when the model has no neck."""
        if not self.model.has_neck:
            return trunk.cpu().numpy() if isinstance(trunk, torch.Tensor) else trunk
        neck = self.model.neck
        was_training = neck.training
        neck.eval()
        x = torch.as_tensor(trunk).to(self.device)
        out = (torch.cat([neck(x[i:i + 4096]) for i in range(0, len(x), 4096)]) if len(x)
               else x.new_zeros((0, neck.out_dim)))
        neck.train(was_training)
        return out.float().cpu().numpy()

    def _encode(self, paths, boxes, size: int, desc: str) -> np.ndarray:
        """Head features of the test-time crops of ``paths``; in a frozen block their trunk features are computed
        once and kept while the trunk stays frozen."""
        if self._frozen_feats is None:
            return self._head_features(self._features(paths, boxes, size, desc))
        key = f"{desc}|{size}"
        if key not in self._trunk_cache:
            self._trunk_cache[key] = self._features(paths, boxes, size, desc)
        return self._head_features(self._trunk_cache[key])

    def _frozen_gallery(self, size: int) -> np.ndarray:
        """Trunk features of every training image in a frozen block: the mining images' from the cached test-time
        view, the others (whales with one photo) computed once."""
        d = self.data
        key = f"gallery rest|{size}"
        rest = np.setdiff1d(np.arange(len(d.train_paths)), self.mine_idx)
        if key not in self._trunk_cache:
            self._trunk_cache[key] = self._features([d.train_paths[i] for i in rest], [d.train_boxes[i] for i in rest],
                                                    size, "gallery features")
        mined = self._frozen_feats[0].cpu().numpy()
        out = np.empty((len(d.train_paths), mined.shape[1]), np.float32)
        out[self.mine_idx] = mined
        if len(rest):
            out[rest] = self._trunk_cache[key]
        return out

    def _scores(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """The head over every query x gallery pair; with several ranks each scores its query rows."""
        part = score_matrix(self.model.head, query[self.shards.rows(len(query))], gallery, device=self.device,
                            budget_mb=float(self.tcfg.get("score_budget_mb", 256)), progress=self.shards.main)
        return self.shards.gather_rows(part)

    def _mining_features(self, size: int, view: int = 0) -> np.ndarray:
        """Trunk features of the mining images: the test-time crop, or random training view ``view``."""
        d = self.data
        return self._features([d.train_paths[i] for i in self.mine_idx], [d.train_boxes[i] for i in self.mine_idx],
                              size, "mining features" if view == 0 else f"mining features, view {view}", view)

    def validate(self, size: int) -> tuple[float, float]:
        """Validation MAP@5 of the fold (threshold tuned for ``new_whale``) and that threshold."""
        d = self.data
        known = d.train_labels != NEW_WHALE
        if self._frozen_feats is not None and known.all():
            gallery = self._head_features(self._frozen_gallery(size))
        else:
            gallery = self._encode([p for p, k in zip(d.train_paths, known) if k],
                                   [b for b, k in zip(d.train_boxes, known) if k], size, "gallery features")
        query = self._encode(d.val_paths, d.val_boxes, size, "validation features")
        scores = self._scores(query, gallery)
        threshold, map5 = tune_threshold(scores, list(d.train_labels[known]), list(d.val_labels),
                                         mode=self.tcfg.get("val_mode", "sum"))
        return float(map5), float(threshold)

    # ---- one epoch ----------------------------------------------------------------------
    def _epoch_pairs(self, block: Block, rng: np.random.Generator, scores: np.ndarray | None):
        """The epoch's pairs and targets, shuffled; mined on rank 0 and sent to every rank."""
        pairs = targets = None
        if self.shards.main:
            pos = positive_pairs(self.mine_labels, rng)
            neg = self.miner.mine(scores, block.K, rng)
            pairs = np.concatenate([pos, neg]).astype(np.int64)
            targets = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
            order = rng.permutation(len(pairs))
            pairs, targets = pairs[order], targets[order]
        return self.shards.broadcast(pairs, np.int64), self.shards.broadcast(targets, np.float32)

    def _local_batches(self, n: int, batch: int) -> list[tuple[list[int], int]]:
        """This rank's share of every batch and the batch's size; an empty share becomes one item of weight 0
        (every rank must take part in each step)."""
        return [(share, size) if share else ([0], -size) for share, size in self.shards.batches(n, batch)]

    def _frozen_views(self, pairs, targets, rng_seed: list[int]):
        """The epoch's pairs once per cached view (``1 + train.frozen_views`` rounds), each side of each pair
        on a view drawn at random: ``(pairs, targets, views [n, 2])``. Without extra views: view 0 throughout."""
        rounds = self._frozen_feats.shape[0]
        if rounds == 1:
            return pairs, targets, np.zeros((len(pairs), 2), np.int64)
        rng = np.random.default_rng(rng_seed)
        pairs, targets = np.tile(pairs, (rounds, 1)), np.tile(targets, rounds)
        views = rng.integers(0, rounds, size=(len(pairs), 2))
        order = rng.permutation(len(pairs))
        return pairs[order], targets[order], views[order]

    def _trainable_head(self) -> list[torch.nn.Parameter]:
        """What a frozen-branch block trains: the neck (when there is one) and the pair head."""
        return list(self.model.neck.parameters()) + list(self.model.head.parameters())

    def _train_frozen(self, pairs, targets, views, block: Block, desc: str) -> float:
        feats = self._frozen_feats
        self.model.neck.train()
        self.model.head.train()
        total, n = 0.0, 0
        for share, size in tqdm(self._local_batches(len(pairs), block.batch), desc=desc, leave=False,
                                unit="batch", disable=not self.shards.main):
            idx = torch.from_numpy(pairs[share])
            view = torch.from_numpy(views[share])
            y = torch.from_numpy(targets[share]).to(self.device)
            fa = self.model.neck(feats[view[:, 0], idx[:, 0]])
            fb = self.model.neck(feats[view[:, 1], idx[:, 1]])
            total += self._step(self.model.head(fa, fb), y, size, sync=True)
            n += len(y) if size > 0 else 0
        return self._epoch_loss(total, n)

    def _step(self, logits: torch.Tensor, y: torch.Tensor, size: int, sync: bool = False) -> float:
        """One Adam step on the mean BCE loss of a global batch of ``|size|`` pairs (this rank's share in
        ``logits``; ``size < 0``: a placeholder share of weight 0). ``sync``: sum the gradients over ranks
        here (DistributedDataParallel does it otherwise; image batches, with the fp16 loss scaler where
        autocast needs it). Returns this share's summed loss."""
        losses = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        if size < 0:
            losses = losses * 0.0
        scale = self.shards.world if self._ddp is not None and not sync else 1  # DDP averages over ranks
        loss = losses.sum() * (scale / abs(size))
        self.optimizer.zero_grad(set_to_none=True)
        if not sync:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return float(losses.detach().sum())
        loss.backward()
        if self.shards.world > 1:
            for p in self._trainable_head():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
        self.optimizer.step()
        return float(losses.detach().sum())

    def _epoch_loss(self, total: float, n: int) -> float:
        total, n = self.shards.sum([total, float(n)])
        return total / max(n, 1.0)

    def _pair_model(self) -> torch.nn.Module:
        """The model that trains on image pairs: wrapped in DistributedDataParallel under torchrun (built
        after batch norm is frozen, so that it syncs exactly the parameters that learn)."""
        if self.shards.world == 1:
            return self.model
        if self._ddp is None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        return self._ddp

    def _train_images(self, pairs, targets, block: Block, size: int, g: int, desc: str) -> float:
        d = self.data
        images = ImageDataset([d.train_paths[i] for i in self.mine_idx], [d.train_boxes[i] for i in self.mine_idx],
                              size, channels=self.channels, train=True, seed=self.seed,
                              max_megapixels=float(self.cfg.get("data", {}).get("max_megapixels", 60)),
                              augment_strength=float(self.tcfg.get("augment_strength", 1.0)),
                              augment=str(self.tcfg.get("augment", "fluke")))
        images.set_epoch(g)
        batches = self._local_batches(len(pairs), block.batch)
        local: list[int] = []
        sampler = []
        for share, _ in batches:
            sampler.append(list(range(len(local), len(local) + len(share))))
            local += share
        loader = make_loader(Subset(PairDataset(images, pairs, targets), local), 1, batch_sampler=sampler,
                             workers=self.tcfg.get("workers"))
        self.model.train()
        if self.tcfg.get("freeze_bn", False):
            freeze_batchnorm(self.model.branch)
        model = self._pair_model()
        amp = bool(self.tcfg.get("amp", True))
        total, n = 0.0, 0
        for (a, b, y), (_, size) in zip(tqdm(loader, desc=desc, leave=False, unit="batch",
                                             disable=not self.shards.main), batches):
            a, b, y = (t.to(self.device, non_blocking=True) for t in (a, b, y))
            if self.device.type == "cuda":
                a = a.contiguous(memory_format=torch.channels_last)
                b = b.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, amp):
                logits = model(a, b)
            total += self._step(logits, y, size)
            n += len(y) if size > 0 else 0
        return self._epoch_loss(total, n)

    def _run_epoch(self, pos: Position) -> float:
        stage, block = self.stages[pos.stage], self.stages[pos.stage].blocks[pos.block]
        g = global_epoch(self.stages, pos)
        rng = np.random.default_rng([self.seed, g])
        torch.manual_seed(self.seed * 1_000_003 + g)
        random_k = float(self.tcfg.get("random_k", 100))
        if block.freeze_branch and self._frozen_feats is None:
            self._frozen_feats = self._frozen_features(stage.size)
        if block.K >= random_k:
            scores = None
        else:
            if self._mine_scores is None or pos.epoch % int(self.tcfg.get("mine_every", 1)) == 0:
                feats = self._head_features(self._frozen_feats[0] if block.freeze_branch
                                            else self._mining_features(stage.size))
                self._mine_scores = self._scores(feats, feats)
            scores = self._mine_scores
        pairs, targets = self._epoch_pairs(block, rng, scores)
        for group in self.optimizer.param_groups:
            group["lr"] = block.lr
        desc = (f"{stage.size}px block {pos.block + 1}/{len(stage.blocks)} "
                f"epoch {pos.epoch + 1}/{block.epochs}")
        if block.freeze_branch:
            pairs, targets, views = self._frozen_views(pairs, targets, [self.seed, g, 1])
            return self._train_frozen(pairs, targets, views, block, desc)
        return self._train_images(pairs, targets, block, stage.size, g, desc)

    def _frozen_features(self, size: int) -> torch.Tensor:
        """Trunk features of the mining images for a frozen block, ``[1 + frozen_views, N, D]``: the test-time crop,
        then ``train.frozen_views`` random training views."""
        views = [self._mining_features(size, v) for v in range(self.frozen_views + 1)]
        return torch.from_numpy(np.stack(views)).to(self.device)

    # ---- checkpoints --------------------------------------------------------------------
    def _save(self, path: Path, state: dict) -> None:
        if self.shards.main:
            save_checkpoint(path, state)

    def _state(self, nxt: Position) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "position": [nxt.stage, nxt.block, nxt.epoch], "best_map5": self.best_map5, "rows": self.rows,
                "seed": self.seed, "torch_rng": torch.get_rng_state(), **self._extra_state()}

    def _optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer (every stage starts with one); the lr is set by each block."""
        return torch.optim.Adam(self.model.parameters(), lr=1e-4,
                                weight_decay=float(self.tcfg.get("weight_decay", 0.0) or 0.0))

    def _extra_state(self) -> dict:
        """What ``last.pt`` holds beside the model, optimizer, position and metrics: the miner's memory."""
        return {"miner": self.miner.state_dict()}

    def _restore_extra(self, state: dict, path: Path) -> None:
        """Take back what :meth:`_extra_state` saved (``path``: the checkpoint, for errors)."""
        self.miner.load_state_dict(state["miner"])

    def _write_metrics(self) -> None:
        if not self.shards.main:
            return
        frame = pd.DataFrame(self.rows)
        for stage in self.stages:
            part = frame[frame["size"] == stage.size] if len(frame) else frame
            if len(part):
                write_csv(part, stage_dir(self.run_dir, stage) / "metrics.csv")

    def _start_stage(self, s: int) -> None:
        """A stage starts from the best weights of the stage before, with a fresh optimizer."""
        if s > 0:
            self.shards.barrier()  # rank 0 has written the stage's best.pt
            best = load_checkpoint(stage_dir(self.run_dir, self.stages[s - 1]) / "best.pt", self.device)
            self.model.load_state_dict(best["model"])
        self.optimizer = self._optimizer()
        self.best_map5 = -1.0

    def resume(self) -> Position | None:
        """Load the newest ``last.pt`` of this run; the position to continue from, or None when there is none."""
        for si in reversed(range(len(self.stages))):
            path = stage_dir(self.run_dir, self.stages[si]) / "last.pt"
            if not path.is_file():
                continue
            state = load_checkpoint(path, self.device)
            self._restore_extra(state, path)
            pos = Position(*state["position"])
            if pos.stage != si and pos.stage < len(self.stages):
                self._start_stage(pos.stage)  # saved at the end of a stage: the next starts from its best
            else:
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                if state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
                self.best_map5 = float(state["best_map5"])
            self.rows = list(state["rows"])
            torch.set_rng_state(state["torch_rng"])
            return pos
        return None

    def _next(self, pos: Position) -> Position:
        block = self.stages[pos.stage].blocks[pos.block]
        if pos.epoch + 1 < block.epochs:
            return Position(pos.stage, pos.block, pos.epoch + 1)
        if pos.block + 1 < len(self.stages[pos.stage].blocks):
            return Position(pos.stage, pos.block + 1, 0)
        return Position(pos.stage + 1, 0, 0)

    def fit(self, resume: bool = False) -> pd.DataFrame:
        """Run (or continue) the whole schedule; returns the metrics of every epoch."""
        pos = self.resume() if resume else None
        if pos is None:
            if resume:
                self.log(f"nothing to resume under {self.run_dir}: starting from the beginning")
            pos = Position(0, 0, 0)
            self._start_stage(0)
            self._begin()
        else:
            self.log(f"resuming at stage {pos.stage + 1}, block {pos.block + 1}, epoch {pos.epoch + 1}")
        while pos.stage < len(self.stages):
            stage, block = self.stages[pos.stage], self.stages[pos.stage].blocks[pos.block]
            if pos.epoch == 0:
                self._mine_scores = None
                if not self._trunk_unchanged(pos):
                    self._frozen_feats = None
                    self._trunk_cache = {}
            t0 = time.perf_counter()
            loss = self._run_epoch(pos)
            row = {"size": stage.size, "block": pos.block + 1, "epoch": pos.epoch + 1,
                   "global_epoch": global_epoch(self.stages, pos) + 1, "lr": block.lr, "K": block.K,
                   "freeze_branch": block.freeze_branch, "loss": round(loss, 6),
                   "val_map5": float("nan"), "threshold": float("nan")}
            nxt = self._next(pos)
            block_done = nxt.block != pos.block or nxt.stage != pos.stage
            sdir = stage_dir(self.run_dir, stage)
            if block_done:
                map5, threshold = self.validate(stage.size)
                row.update(val_map5=round(map5, 6), threshold=round(threshold, 6))
                if map5 > self.best_map5:
                    self.best_map5 = map5
                    self._save(sdir / "best.pt", {"model": self.model.state_dict(), "val_map5": map5,
                                                       "threshold": threshold, "size": stage.size})
            row["seconds"] = round(time.perf_counter() - t0, 2)
            self.rows.append(row)
            self._log_row(row)
            if self._resumable_after(pos, block, block_done):
                self._save(sdir / "last.pt", self._state(nxt))
            self._write_metrics()
            if nxt.stage != pos.stage and nxt.stage < len(self.stages):
                self._start_stage(nxt.stage)
            pos = nxt
        return pd.DataFrame(self.rows)

    def _trunk_unchanged(self, pos: Position) -> bool:
        """True at the start of a frozen block that follows a frozen block of the same stage: the trunk has not
        changed since its cached features were computed, so they are kept."""
        blocks = self.stages[pos.stage].blocks
        return (pos.block > 0 and blocks[pos.block].freeze_branch and blocks[pos.block - 1].freeze_branch
                and self._frozen_feats is not None)

    def _begin(self) -> None:
        """Before the first epoch of a fresh run: fit the cosine head's scale and offset to the branch's
        features (``model.head_init: cosine``), and with ``train.validate_start`` score the untrained model
        as row ``block 0`` of the first stage, so that ``best.pt`` is never worse than where training began."""
        stage = self.stages[0]
        if self.cfg["model"].get("head_init", "mean") == "cosine":
            feats = self._head_features(self._mining_features(stage.size))
            scale, offset = calibrate_cosine_head(self.model.head, feats, self.mine_labels)
            self.log(f"cosine head: scale {scale:.2f}, offset {offset:.3f} (fitted on {len(feats)} images)")
        if not self.tcfg.get("validate_start", False):
            return
        t0 = time.perf_counter()
        map5, threshold = self.validate(stage.size)
        row = {"size": stage.size, "block": 0, "epoch": 0, "global_epoch": 0, "lr": 0.0, "K": float("nan"),
               "freeze_branch": True, "loss": float("nan"), "val_map5": round(map5, 6),
               "threshold": round(threshold, 6), "seconds": round(time.perf_counter() - t0, 2)}
        self.best_map5 = map5
        self._save(stage_dir(self.run_dir, stage) / "best.pt", {"model": self.model.state_dict(),
                                                                    "val_map5": map5, "threshold": threshold,
                                                                    "size": stage.size})
        self.rows.append(row)
        self.log(f"{stage.size}px before training: val MAP@5 {map5:.4f} (threshold {threshold:.3f})")
        self._write_metrics()

    def _resumable_after(self, pos: Position, block: Block, block_done: bool) -> bool:
        """``last.pt`` is written where a resumed run needs nothing that is not in it (no cached mining scores)."""
        mine_every = int(self.tcfg.get("mine_every", 1))
        return (block_done or block.K >= float(self.tcfg.get("random_k", 100))
                or (pos.epoch + 1) % mine_every == 0)

    def _log_row(self, row: dict) -> None:
        msg = (f"{row['size']}px block {row['block']} epoch {row['epoch']}: loss {row['loss']:.4f} "
               f"(lr {row['lr']:g}, K {row['K']:g}{', frozen branch' if row['freeze_branch'] else ''})")
        if not np.isnan(row["val_map5"]):
            msg += f"  val MAP@5 {row['val_map5']:.4f} (threshold {row['threshold']:.3f})"
        self.log(msg)


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


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """Freeze every BatchNorm of ``module``: eval mode (running statistics used, not updated) and no gradient
    for its scale and shift. The features of a fine-tuned branch then stay those its head was warmed up on
    (small batches of small images), and a drifting final BN shift cannot switch every feature off."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


def build_fold_data(catalog, train_df: pd.DataFrame, val_df: pd.DataFrame) -> FoldData:
    """FoldData from a validated catalog and one fold's training and validation rows (``Image, Id``)."""
    known = train_df[train_df["Id"] != NEW_WHALE]
    return FoldData(
        train_paths=[catalog.train_path(n) for n in known["Image"]],
        train_boxes=[catalog.box(n) for n in known["Image"]],
        train_labels=known["Id"].to_numpy(dtype=str),
        val_paths=[catalog.train_path(n) for n in val_df["Image"]],
        val_boxes=[catalog.box(n) for n in val_df["Image"]],
        val_labels=val_df["Id"].to_numpy(dtype=str),
    )


def run_complete(run_dir: Path) -> bool:
    """True when the run's config and the last stage's ``last.pt`` say the whole schedule is done."""
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        return False
    stages = parse_schedule(yaml.safe_load(cfg_path.read_text())["train"]["stages"], str(cfg_path), require_k=False)
    last = stage_dir(Path(run_dir), stages[-1]) / "last.pt"
    return last.is_file() and load_checkpoint(last)["position"][0] >= len(stages)
