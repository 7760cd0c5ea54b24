"""The fold trainer of every family: stages by resolution, blocks of epochs, resume, checkpoints, metrics.csv.

What one epoch trains is the family's :class:`~siamese.objectives.Objective` (mined pairs and BCE for the
Siamese family, a margin classifier for the ArcFace one); this loop owns everything around it:

- the schedule (``train.stages``, :mod:`siamese.schedule`), the seeds of every epoch, the learning rate;
- the trunk cache of frozen blocks: the objective's trunk features, computed at the first frozen epoch and
  kept while the trunk stays frozen (consecutive frozen blocks of a stage), and the validation features;
- partial fine-tuning (``train.trainable_stages: N``, :mod:`siamese.stages`): the blocks that train the branch
  train its last N stages only, on cached stem maps of the same views a frozen block uses (a *tail block*);
- checkpoint averaging (``train.average_last: k``): the weights after each of a stage's last k epochs averaged
  into ``averaged.pt``, validated, and made the stage's ``best.pt`` where they validate better;
- validation after each block, ``best.pt`` per stage, ``last.pt`` where a resumed run needs nothing else,
  ``metrics.csv`` per stage, and a stage hand-over from the best weights of the stage before.

Under ``torchrun`` (``shards`` of several processes) every rank computes its rows of features and score
matrices and only rank 0 writes files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from data.catalog import NEW_WHALE
from data.checkpoint import load_checkpoint, save_checkpoint
from data.device import needs_grad_scaler
from data.distributed import SINGLE, Shards
from data.io import write_csv
from siamese.infer import Flipped, compute_features
from siamese.schedule import Position, Stage, epochs_before, global_epoch, parse_schedule
from siamese.stages import Stem, Tail, split_branch
from siamese.trunk_cache import store_for, through


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


def stage_dir(run_dir: Path, stage: Stage) -> Path:
    return run_dir / f"{stage.size}px"


def run_complete(run_dir: Path) -> bool:
    """True when the run's config and the last stage's ``last.pt`` say the whole schedule is done."""
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        return False
    stages = parse_schedule(yaml.safe_load(cfg_path.read_text())["train"]["stages"], str(cfg_path), require_k=False)
    last = stage_dir(Path(run_dir), stages[-1]) / "last.pt"
    return last.is_file() and load_checkpoint(last)["position"][0] >= len(stages)


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """Freeze every BatchNorm of ``module``: eval mode (running statistics used, not updated) and no gradient
    for its scale and shift. The features of a fine-tuned branch then stay those its head was warmed up on
    (small batches of small images), and a drifting final BN shift cannot switch every feature off."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)


class FoldTrainer:
    """Runs a schedule for one fold; ``run_dir`` is ``runs/<model>/fold<k>``. ``model`` has a ``branch`` (the
    trunk) and a ``neck``; ``objective`` is the family's (it is bound to this trainer here); ``cfg`` is complete
    (every key of the schema, :func:`data.settings.check`), as :meth:`siamese.families.Family.trainer` makes it."""

    def __init__(self, model: torch.nn.Module, objective, cfg: dict, data: FoldData, run_dir: Path,
                 device: torch.device, log: Callable[[str], None] = print, shards: Shards = SINGLE,
                 trunk_dir: Path | None = None):
        self.cfg = cfg
        self.tcfg = self.cfg["train"]
        self.shards = shards
        self.model = model.to(device)
        # fp16 autocast (GPUs without bf16) underflows small gradients unless the loss is scaled
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, self.tcfg["amp"]))
        if self.tcfg["compile"]:
            self.model.branch.compile()  # in place: parameter names and checkpoints stay those of the module
        self.data = data
        self.run_dir = Path(run_dir)
        self.device = device
        self.log = log if shards.main else (lambda _: None)
        self.objective = objective
        self.stages = parse_schedule(self.tcfg["stages"], "train.stages", require_k=objective.mines_pairs)
        self.seed = self.tcfg["seed"]
        self.channels = self.cfg["model"]["in_chans"]
        self.frozen_views = self.tcfg["frozen_views"]
        self.rows: list[dict] = []
        self.best_map5 = -1.0
        self.frozen_feats: torch.Tensor | None = None  # the objective's trunk features of a frozen block
        self.trunk_cache: dict[str, np.ndarray] = {}  # validation trunk features while the trunk stays frozen
        self._ddp: DistributedDataParallel | None = None
        self.stem: Stem | None = None
        self.tail: Tail | None = None
        if self.tcfg["trainable_stages"]:
            self.stem, self.tail = split_branch(self.model.branch, self.tcfg["trainable_stages"])
        self.stem_cache: dict[tuple, np.ndarray] = {}  # stem maps per (images, size, view, mirrored)
        # a trunk that never trains: its test-time-crop features shared on disk with the other folds, the
        # other family's runs and scoring (siamese/trunk_cache.py)
        self.trunk_store = store_for(trunk_dir, self.model.branch, cfg)
        self.tail_block = False  # the current block trains the branch's tail on cached stem maps
        self.average = CheckpointAverage(self.tcfg["average_last"])
        objective.bind(self)
        self.optimizer = objective.optimizer()

    # ---- features -----------------------------------------------------------------------
    def features(self, paths, boxes, size: int, desc: str, view: int = 0,
                 module: torch.nn.Module | None = None, stem: bool = False) -> np.ndarray:
        """``module``'s features (the branch by default) of every image: the test-time crop, or random training
        view ``view``; with several ranks each computes its rows and all get the whole.

        With ``train.trainable_stages`` the branch (or its mirror, ``Flipped``) runs as the cached stem maps
        through the tail; ``stem``: the stem maps themselves (what a tail block trains on). The test-time crops
        of a frozen trunk come from the trunk store: the branch's features, or ``module``'s neck over them."""
        if self.stem is not None and (module is None or getattr(module, "module", None) is self.model.branch):
            flipped = module is not None
            key = (hash(tuple(map(str, paths))), hash(tuple(map(str, boxes))), size, view, flipped)
            if key not in self.stem_cache:
                self.stem_cache[key] = self._computed(paths, boxes, size, f"{desc} (stem)", view,
                                                      Flipped(self.stem) if flipped else self.stem)
            maps = self.stem_cache[key]
            return maps if stem else self.tail_features(torch.from_numpy(maps)).cpu().numpy()
        branch = self.model.branch
        if view == 0 and self.trunk_store is not None and (
                module is None or module is branch or getattr(module, "branch", None) is branch):
            t = self.tcfg
            trunk = self.trunk_store.features(paths, boxes, size, device=self.device, batch=t["feature_batch"],
                                              workers=t["workers"], amp=t["amp"], desc=desc, shards=self.shards)
            return trunk if module is None or module is branch else through(module.neck, trunk, self.device)
        return self._computed(paths, boxes, size, desc, view, self.model.branch if module is None else module)

    def _computed(self, paths, boxes, size: int, desc: str, view: int, module: torch.nn.Module) -> np.ndarray:
        rows = self.shards.rows(len(paths))
        paths, boxes = list(paths)[rows], list(boxes)[rows]
        t = self.tcfg
        part = compute_features(module, paths, boxes, size,
                                channels=self.channels, batch=t["feature_batch"], device=self.device,
                                workers=t["workers"], amp=t["amp"], max_megapixels=self.cfg["data"]["max_megapixels"],
                                desc=desc, view=view, seed=self.seed, augment_strength=t["augment_strength"],
                                augment=t["augment"])
        return self.shards.gather_rows(part)

    def cached_trunk(self, key: str, paths, boxes, size: int, desc: str) -> np.ndarray:
        """Trunk features of test-time crops, computed once per frozen stretch of the schedule (``key``)."""
        key = f"{key}|{size}"
        if key not in self.trunk_cache:
            self.trunk_cache[key] = self.features(paths, boxes, size, desc)
        return self.trunk_cache[key]

    @torch.no_grad()
    def tail_features(self, maps: torch.Tensor) -> torch.Tensor:
        """The tail (in eval mode) over stem maps, in batches of ``train.feature_batch``, on the device."""
        tail, batch = self.tail, self.tcfg["feature_batch"]
        was_training = tail.training
        tail.eval()
        try:
            parts = [tail(maps[i:i + batch].to(self.device)).float() for i in range(0, len(maps), batch)]
        finally:
            tail.train(was_training)
        return torch.cat(parts) if parts else torch.zeros((0, tail.out_dim), device=self.device)

    def cached_block(self, block) -> bool:
        """Whether ``block`` trains on cached inputs: trunk features (frozen) or stem maps (a tail block)."""
        return block.freeze_branch or self.stem is not None

    def cached_view(self, view: int) -> torch.Tensor:
        """Trunk features of cached view ``view`` of the objective's items (through the tail in a tail block)."""
        cached = self.frozen_feats[view]
        return self.tail_features(cached) if self.tail_block else cached

    def cached_forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """A batch of cached inputs to trunk features, with gradients through the tail in a tail block."""
        return self.tail(inputs) if self.tail_block else inputs

    def cached_parameters(self) -> list[torch.nn.Parameter]:
        """What trains besides the objective's own modules in a cached block: the tail's stages in a tail block."""
        return self.tail.stage_parameters() if self.tail_block else []

    def cached_train_mode(self) -> None:
        """Modes for an epoch on cached inputs: the branch in eval, or its tail training in a tail block (batch
        norm frozen with ``train.freeze_bn``)."""
        if self.tail_block:
            self.train_branch_mode()
        else:
            self.model.branch.eval()

    @torch.no_grad()
    def neck_features(self, trunk: np.ndarray | torch.Tensor) -> np.ndarray:
        """The neck (in eval mode) over trunk features, in chunks."""
        return through(self.model.neck, trunk, self.device)

    # ---- optimisation -------------------------------------------------------------------
    def step(self, loss: torch.Tensor, sync: list[torch.nn.Parameter] | None = None) -> None:
        """One optimizer step on ``loss``. Image batches go through the fp16 gradient scaler (a pass-through
        where autocast needs none) and DistributedDataParallel; ``sync``: the parameters whose gradients are
        summed over ranks here instead (batches of cached features, no DDP wrapper)."""
        self.optimizer.zero_grad(set_to_none=True)
        if sync is None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        loss.backward()
        if self.shards.world > 1:
            for p in sync:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
        self.optimizer.step()

    def wrapped(self) -> torch.nn.Module:
        """The model for image batches: wrapped in DistributedDataParallel under torchrun (built after batch
        norm is frozen, so that it syncs exactly the parameters that learn)."""
        if self.shards.world == 1:
            return self.model
        if self._ddp is None:
            self._ddp = self.distributed(self.model)
        return self._ddp

    def distributed(self, module: torch.nn.Module) -> DistributedDataParallel:
        """``module`` in DistributedDataParallel on this process's device (buffers not broadcast)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def train_branch_mode(self) -> None:
        """Training mode for an image epoch, batch norm frozen with ``train.freeze_bn``."""
        self.model.train()
        if self.tcfg["freeze_bn"]:
            freeze_batchnorm(self.model.branch)

    def epoch_loss(self, total: float, n: int) -> float:
        """The mean loss of an epoch from each rank's summed loss and item count."""
        total, n = self.shards.sum([total, float(n)])
        return total / max(n, 1.0)

    # ---- one epoch ----------------------------------------------------------------------
    def run_epoch(self, pos: Position) -> float:
        """Train the epoch at ``pos`` (seeded by the seed and the epoch's index in the schedule); its mean loss."""
        stage, block = self.stages[pos.stage], self.stages[pos.stage].blocks[pos.block]
        g = global_epoch(self.stages, pos)
        rng = np.random.default_rng([self.seed, g])
        torch.manual_seed(self.seed * 1_000_003 + g)
        self.tail_block = self.stem is not None and not block.freeze_branch
        if self.cached_block(block) and self.frozen_feats is None:
            self.frozen_feats = self.objective.frozen_features(stage.size)
        for group in self.optimizer.param_groups:
            group["lr"] = block.lr * group.get("mult", 1.0)
        desc = f"{stage.size}px block {pos.block + 1}/{len(stage.blocks)} epoch {pos.epoch + 1}/{block.epochs}"
        return self.objective.epoch(pos, rng, g, desc)

    def validate(self, size: int) -> tuple[float, float]:
        """Validation MAP@5 of the fold (threshold tuned for ``new_whale``) and that threshold."""
        return self.objective.validate(size)

    # ---- checkpoints --------------------------------------------------------------------
    def _save(self, path: Path, state: dict) -> None:
        if self.shards.main:
            save_checkpoint(path, state)

    def _state(self, nxt: Position) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "average": self.average.state_dict(),
                "position": [nxt.stage, nxt.block, nxt.epoch], "best_map5": self.best_map5, "rows": self.rows,
                "seed": self.seed, "torch_rng": torch.get_rng_state(), **self.objective.state_dict()}

    def _write_metrics(self) -> None:
        if not self.shards.main:
            return
        frame = pd.DataFrame(self.rows)
        for stage in self.stages:
            part = frame[frame["size"] == stage.size] if len(frame) else frame
            if len(part):
                write_csv(part, stage_dir(self.run_dir, stage) / "metrics.csv")

    def start_stage(self, s: int) -> None:
        """A stage starts from the best weights of the stage before, with a fresh optimizer."""
        if s > 0:
            self.shards.barrier()  # rank 0 has written the stage's best.pt
            best = load_checkpoint(stage_dir(self.run_dir, self.stages[s - 1]) / "best.pt", self.device)
            self.model.load_state_dict(best["model"])
        self.optimizer = self.objective.optimizer()
        self.best_map5 = -1.0
        self.average.reset()
        self.stem_cache = {}  # another size

    def resume(self) -> Position | None:
        """Load the newest ``last.pt`` of this run; the position to continue from, or None when there is none."""
        for si in reversed(range(len(self.stages))):
            path = stage_dir(self.run_dir, self.stages[si]) / "last.pt"
            if not path.is_file():
                continue
            state = load_checkpoint(path, self.device)
            self.objective.load_state_dict(state, path)
            pos = Position(*state["position"])
            if pos.stage != si and pos.stage < len(self.stages):
                self.start_stage(pos.stage)  # saved at the end of a stage: the next starts from its best
            else:
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                if state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
                self.best_map5 = float(state["best_map5"])
                self.average.load_state_dict(state.get("average", {}))
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
            self.start_stage(0)
            self._begin()
        else:
            self.log(f"resuming at stage {pos.stage + 1}, block {pos.block + 1}, epoch {pos.epoch + 1}")
        while pos.stage < len(self.stages):
            stage, block = self.stages[pos.stage], self.stages[pos.stage].blocks[pos.block]
            if pos.epoch == 0:
                self.objective.new_block()
                if not self._trunk_unchanged(pos):
                    self.frozen_feats = None
                    self.trunk_cache = {}
            t0 = time.perf_counter()
            loss = self.run_epoch(pos)
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
            in_stage = epochs_before(stage, pos.block) + pos.epoch
            if self.average.k and in_stage >= epochs_before(stage, len(stage.blocks)) - self.average.k:
                self.average.add(self.model.state_dict())
            if nxt.stage != pos.stage and self.average.count:
                self._averaged(stage)
            if block_done or self.objective.resumable_after(pos, block):
                self._save(sdir / "last.pt", self._state(nxt))
            self._write_metrics()
            if nxt.stage != pos.stage and nxt.stage < len(self.stages):
                self.start_stage(nxt.stage)
            pos = nxt
        return pd.DataFrame(self.rows)

    def _averaged(self, stage: Stage) -> None:
        """The stage's averaged weights: validated, written to ``averaged.pt``, and to ``best.pt`` where they
        validate better than the best epoch; the model keeps its last weights (``last.pt``)."""
        t0 = time.perf_counter()
        last = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.average.mean())
        self.frozen_feats, self.trunk_cache = None, {}  # the tail may have changed: no cached trunk features
        map5, threshold = self.validate(stage.size)
        sdir = stage_dir(self.run_dir, stage)
        state = {"model": self.model.state_dict(), "val_map5": map5, "threshold": threshold, "size": stage.size,
                 "epochs_averaged": self.average.count}
        self._save(sdir / "averaged.pt", state)
        kept = map5 > self.best_map5
        if kept:
            self.best_map5 = map5
            self._save(sdir / "best.pt", state)
        self.model.load_state_dict(last)
        self.frozen_feats, self.trunk_cache = None, {}
        prev = self.rows[-1]
        row = {**prev, "lr": float("nan"), "loss": float("nan"), "val_map5": round(map5, 6),
               "threshold": round(threshold, 6), "seconds": round(time.perf_counter() - t0, 2),
               "averaged": self.average.count}
        self.rows.append(row)
        self.log(f"{stage.size}px, the last {self.average.count} epochs averaged: val MAP@5 {map5:.4f} "
                 f"(threshold {threshold:.3f}){', now best.pt' if kept else ''}")

    def _trunk_unchanged(self, pos: Position) -> bool:
        """True at the start of a frozen block that follows a frozen block of the same stage: the trunk has not
        changed since its cached features were computed, so they are kept."""
        blocks = self.stages[pos.stage].blocks
        return (pos.block > 0 and blocks[pos.block].freeze_branch and blocks[pos.block - 1].freeze_branch
                and self.frozen_feats is not None)

    def _begin(self) -> None:
        """Before the first epoch of a fresh run: the objective's own start (the Siamese cosine head's fit), and
        with ``train.validate_start`` the untrained model scored as row ``block 0`` of the first stage, so that
        ``best.pt`` is never worse than where training began."""
        stage = self.stages[0]
        self.objective.begin(stage.size)
        if not self.tcfg["validate_start"]:
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

    def _log_row(self, row: dict) -> None:
        k = f", K {row['K']:g}" if self.objective.mines_pairs else ""
        msg = (f"{row['size']}px block {row['block']} epoch {row['epoch']}: loss {row['loss']:.4f} "
               f"(lr {row['lr']:g}{k}{', frozen branch' if row['freeze_branch'] else ''})")
        if not np.isnan(row["val_map5"]):
            msg += f"  val MAP@5 {row['val_map5']:.4f} (threshold {row['threshold']:.3f})"
        self.log(msg)


class CheckpointAverage:
    """The running sum of a model's weights over the last ``k`` epochs of a stage (``train.average_last``).
    Floating-point tensors are averaged; integer ones (batch norm's counters) keep their latest value."""

    def __init__(self, k: int):
        self.k = k
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.total: dict[str, torch.Tensor] = {}

    def add(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            value = value.detach()
            if value.is_floating_point():
                value = value.double()
                self.total[name] = self.total[name] + value if name in self.total else value.clone()
            else:
                self.total[name] = value.clone()
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        return {k: (v / self.count).float() if v.is_floating_point() else v for k, v in self.total.items()}

    def state_dict(self) -> dict:
        return {"count": self.count, "total": self.total} if self.count else {}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        if state:
            self.count, self.total = int(state["count"]), dict(state["total"])
