"""The training schedule from YAML: stages by resolution, each a list of blocks of epochs."""

from __future__ import annotations

from dataclasses import dataclass

from data.errors import InputError


@dataclass(frozen=True)
class Block:
    epochs: int
    lr: float
    K: float
    freeze_branch: bool
    batch: int


@dataclass(frozen=True)
class Stage:
    size: int
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Position:
    """Where a run is: stage index, block index in the stage, epochs of that block already done."""

    stage: int
    block: int
    epoch: int


def parse_schedule(stages: list, source: str = "config", *, require_k: bool = True) -> list[Stage]:
    """Validate ``train.stages`` of a config into :class:`Stage` objects (one clear error per problem).

    ``require_k``: every block states the mining noise ``K`` (the Siamese family); without it (the embedding
    family, or a reader that wants only the sizes) a block has no ``K`` and reads as 0."""
    if not isinstance(stages, list) or not stages:
        raise InputError(source, "train.stages must be a non-empty list of {size, blocks}")
    out = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict) or "size" not in st or not st.get("blocks"):
            raise InputError(source, f"train.stages[{i}] needs 'size' and a non-empty 'blocks' list")
        blocks = []
        for j, bl in enumerate(st["blocks"]):
            missing = {"epochs", "lr", "batch", *(["K"] if require_k else [])} - set(bl or {})
            if missing:
                raise InputError(source, f"train.stages[{i}].blocks[{j}] lacks {', '.join(sorted(missing))}")
            block = Block(int(bl["epochs"]), float(bl["lr"]), float(bl.get("K", 0.0)),
                          bool(bl.get("freeze_branch", False)), int(bl["batch"]))
            if block.epochs < 1 or block.batch < 1 or block.lr <= 0 or block.K < 0:
                raise InputError(source, f"train.stages[{i}].blocks[{j}] has a non-positive epochs/batch/lr or K < 0")
            blocks.append(block)
        out.append(Stage(int(st["size"]), tuple(blocks)))
    return out


def epochs_before(stage: Stage, block: int) -> int:
    """Epochs of ``stage``'s blocks before block ``block`` (``len(stage.blocks)``: the whole stage)."""
    return sum(b.epochs for b in stage.blocks[:block])


def global_epoch(stages: list[Stage], pos: Position) -> int:
    """Epochs run before ``pos`` over the whole schedule (the augmentation and mining seed index)."""
    done = 0
    for si, st in enumerate(stages):
        for bi, bl in enumerate(st.blocks):
            if (si, bi) == (pos.stage, pos.block):
                return done + pos.epoch
            done += bl.epochs
    return done
