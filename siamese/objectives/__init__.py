"""What one family trains inside the fold trainer (:class:`siamese.trainer.FoldTrainer`).

An objective is bound to its trainer (``bind``) and reads the fold, the model and the settings from it. The
trainer calls, in this order:

- ``optimizer()`` at every stage start (param groups may carry ``mult``, a multiple of the block's lr);
- ``begin(size)`` once before a fresh run's first epoch;
- ``new_block()`` at the first epoch of every block (cached mining scores are dropped);
- ``frozen_features(size)`` at the first epoch of a frozen stretch: the trunk features the frozen epochs train
  on, ``[1 + train.frozen_views, items, D]``; the trainer keeps them in ``trainer.frozen_feats``;
- ``epoch(pos, rng, g, desc)``: train one epoch, return its mean loss;
- ``validate(size)``: validation MAP@5 and the new_whale threshold;
- ``state_dict()`` / ``load_state_dict(state, path)``: what ``last.pt`` holds beside the model and optimizer;
- ``resumable_after(pos, block)``: whether ``last.pt`` can be written after this (not block-final) epoch.

The two families: :class:`siamese.objectives.pairs.PairObjective` (lap-mined pairs, BCE on the pair head) and
:class:`siamese.objectives.margin.MarginObjective` (ArcFace classifier over the fold's whales).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from siamese.schedule import Block, Position

if TYPE_CHECKING:
    from siamese.trainer import FoldTrainer


class Objective:
    """The defaults of the interface above; a family overrides what it needs."""

    mines_pairs = False  # schedule blocks carry K, the fold needs two whales with 2+ photos

    trainer: FoldTrainer

    def bind(self, trainer: FoldTrainer) -> None:
        self.trainer = trainer

    def optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def begin(self, size: int) -> None:
        pass

    def new_block(self) -> None:
        pass

    def frozen_features(self, size: int) -> torch.Tensor:
        raise NotImplementedError

    def epoch(self, pos: Position, rng, g: int, desc: str) -> float:
        raise NotImplementedError

    def validate(self, size: int) -> tuple[float, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, path: Path) -> None:
        pass

    def resumable_after(self, pos: Position, block: Block) -> bool:
        return True
