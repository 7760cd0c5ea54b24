"""The trained families behind one interface, chosen by ``model.family`` (one registry, read by
``scripts/train_fold.py`` and by the scoring of trained runs in :mod:`matching.runs`).

- ``siamese`` (the default): branch (+ optional neck) and the pair head, trained on lap-mined pairs with BCE
  (:class:`siamese.train.Trainer`); scored by the head over every query x catalog pair.
- ``arcface``: branch, neck and an angular-margin classifier over the fold's whales
  (:class:`siamese.embed_train.EmbedTrainer`); scored by the cosine of the neck's embeddings, calibrated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.distributed import SINGLE, Shards
from data.errors import InputError
from siamese.arcface import FAMILY as ARCFACE
from siamese.embed_train import EmbedTrainer
from siamese.model import build_model
from siamese.train import FoldData, Trainer

SIAMESE = "siamese"


@dataclass(frozen=True)
class Family:
    """What the scripts need to know of a family: how to build its trainer for a fold, and its limits."""

    name: str
    build: Callable[[dict, FoldData, Path, torch.device, Shards], Trainer]
    mines_pairs: bool  # trains on pairs of whales with 2+ photos (the fold needs two such whales)
    multi_process: bool  # trains under torchrun

    def trainer(self, cfg: dict, data: FoldData, run_dir: Path, device: torch.device,
                shards: Shards = SINGLE, source: str | Path | None = None) -> Trainer:
        """The fold trainer of a config of this family; a fold or launch it cannot train is an InputError."""
        if self.mines_pairs and len(data.mining_index) < 2:
            raise InputError(source, "the fold has fewer than two whales with 2+ training images")
        if shards.world > 1 and not self.multi_process:
            raise InputError(None, f"the {self.name} family trains in one process; run it without torchrun")
        return self.build(cfg, data, run_dir, device, shards)


def _siamese(cfg: dict, data: FoldData, run_dir: Path, device: torch.device, shards: Shards) -> Trainer:
    return Trainer(build_model(cfg["model"]), cfg, data, run_dir, device, shards=shards)


def _arcface(cfg: dict, data: FoldData, run_dir: Path, device: torch.device, shards: Shards) -> Trainer:
    return EmbedTrainer.create(cfg, data, run_dir, device)


FAMILIES: dict[str, Family] = {
    SIAMESE: Family(SIAMESE, _siamese, mines_pairs=True, multi_process=True),
    ARCFACE: Family(ARCFACE, _arcface, mines_pairs=False, multi_process=False),
}


def family_name(cfg: Mapping[str, Any]) -> str:
    """``model.family`` of a (run) config; ``siamese`` when unset; an unknown name is an InputError."""
    name = str((cfg.get("model") or {}).get("family", SIAMESE) or SIAMESE)
    if name not in FAMILIES:
        raise InputError(None, f"model.family must be one of {', '.join(FAMILIES)}, not {name!r}")
    return name


def family_of(cfg: Mapping[str, Any]) -> Family:
    return FAMILIES[family_name(cfg)]
