"""The trained families behind one interface, chosen by ``model.family`` (one registry, read by
``scripts/train_fold.py`` and by the scoring of trained runs in :mod:`matching.runs`).

A family is a model builder and a training objective; the fold loop around the objective is one
(:class:`siamese.trainer.FoldTrainer`) for every family.

- ``siamese`` (the default): branch (+ optional neck) and the pair head, trained on lap-mined pairs with BCE
  (:class:`siamese.objectives.pairs.PairObjective`); scored by the head over every query x catalog pair.
- ``arcface``: branch, neck and an angular-margin classifier over the fold's whales
  (:class:`siamese.objectives.margin.MarginObjective`); scored by the cosine of the neck's embeddings, calibrated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.distributed import SINGLE, Shards
from data.errors import InputError
from data.settings import Settings, check
from siamese.arcface import FAMILY as ARCFACE
from siamese.arcface import build_embedding_model
from siamese.model import build_model
from siamese.objectives import Objective
from siamese.objectives.margin import MarginObjective, fold_classes
from siamese.objectives.pairs import PairObjective
from siamese.trainer import FoldData, FoldTrainer

SIAMESE = "siamese"

Source = str | Path | None


@dataclass(frozen=True)
class Family:
    """A family: its model for a fold (``model(cfg, data, source)``) and its objective class."""

    name: str
    model: Callable[[dict, FoldData, Source], torch.nn.Module]
    objective: type[Objective]

    def trainer(self, cfg: dict, data: FoldData, run_dir: Path, device: torch.device, *,
                shards: Shards = SINGLE, source: Source = None, log: Callable[[str], None] = print,
                trunk_dir: Path | None = None) -> FoldTrainer:
        """The fold trainer of a config of this family; a fold or launch it cannot train is an InputError
        naming ``source`` (the folds file). ``trunk_dir``: where a frozen trunk's features are shared
        (``<work>/features/trunk``; None: kept in memory only)."""
        cfg = check(cfg, Settings)
        objective = self.objective(data, cfg, source)  # checks the fold before a model is built
        return FoldTrainer(self.model(cfg, data, source), objective, cfg, data, run_dir, device, log=log,
                           shards=shards, trunk_dir=trunk_dir)


def _arcface_model(cfg: dict, data: FoldData, source: Source) -> torch.nn.Module:
    return build_embedding_model(cfg["model"], len(fold_classes(data, cfg, source)))


FAMILIES: dict[str, Family] = {
    SIAMESE: Family(SIAMESE, lambda cfg, data, source: build_model(cfg["model"]), PairObjective),
    ARCFACE: Family(ARCFACE, _arcface_model, MarginObjective),
}


def family_name(cfg: Mapping[str, Any]) -> str:
    """``model.family`` of a (run) config; ``siamese`` when unset; an unknown name is an InputError."""
    name = str((cfg.get("model") or {}).get("family") or SIAMESE)
    if name not in FAMILIES:
        raise InputError(None, f"model.family must be one of {', '.join(FAMILIES)}, not {name!r}")
    return name


def family_of(cfg: Mapping[str, Any]) -> Family:
    return FAMILIES[family_name(cfg)]
