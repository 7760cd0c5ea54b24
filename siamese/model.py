"""The Siamese model: one branch shared by both images of a pair, and the pair head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from data.errors import InputError
from data.settings import Model, check
from siamese.branch import Branch, branch_shape, create_branch
from siamese.head import PairHead
from siamese.neck import Neck, neck_settings


class Encoder(nn.Module):
    """Branch then neck (identity without one): images to the features the pair head reads."""

    def __init__(self, branch: Branch, neck: nn.Module):
        super().__init__()
        self.branch = branch
        self.neck = neck
        self.out_dim = int(getattr(neck, "out_dim", branch.out_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.branch(images))


class SiameseModel(nn.Module):
    """``forward(a, b) -> logits [B]`` for image pairs; ``features`` and ``score`` for the two halves.

    ``neck`` (optional, :class:`siamese.neck.Neck`) sits between the branch and the head; without one it is
    an identity with no parameters, so checkpoints of neck-less models keep their keys."""

    def __init__(self, branch: Branch, head: PairHead, neck: nn.Module | None = None):
        super().__init__()
        self.branch = branch
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head

    @property
    def has_neck(self) -> bool:
        return not isinstance(self.neck, nn.Identity)

    def encoder(self) -> Encoder:
        """Images -> head features (branch and neck, sharing this model's modules), in this model's mode."""
        return Encoder(self.branch, self.neck).train(self.training)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.branch(images))

    def score(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        return self.head(fa, fb)

    def forward(self, a: torch.Tensor, b: torch.Tensor, features: bool = False):
        """The pair logits; ``features``: ``(logits, fa, fb)``, with the head features of both sides."""
        if a.shape == b.shape:  # one branch pass for both sides
            fa, fb = self.features(torch.cat([a, b])).split(len(a))
        else:
            fa, fb = self.features(a), self.features(b)
        logits = self.head(fa, fb)
        return (logits, fa, fb) if features else logits


def build_model(cfg: Mapping[str, Any]) -> SiameseModel:
    """A model from a ``model`` section (the keys of :class:`data.settings.Model`, defaults filled in there):
    the branch, an optional neck (``neck: {dim, dropout}``) and the pair head (``head_hidden``, ``head_init``)."""
    cfg = model_section(cfg)
    branch = create_branch(cfg["branch"], in_chans=cfg["in_chans"], pool=cfg["pool"], pretrained=cfg["pretrained"],
                           weights=cfg["weights"] or None, normalize=cfg["normalize"], **branch_shape(cfg))
    settings = neck_settings(cfg)
    neck = None if settings is None else Neck(branch.out_dim, *settings)
    dim = branch.out_dim if neck is None else neck.out_dim
    return SiameseModel(branch, PairHead(dim, hidden=cfg["head_hidden"], init=cfg["head_init"]), neck)


def model_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model`` section validated and completed with the schema's defaults (a partial one from a test or a
    caller is fine); no branch is an InputError."""
    if not cfg.get("branch"):
        raise InputError(None, "the model config needs a 'branch' (a timm model name or 'kernel')")
    return check(dict(cfg), Model, path="model")
