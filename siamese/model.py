"""The Siamese model: one branch shared by both images of a pair, and the pair head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from data.errors import InputError
from siamese.branch import Branch, branch_shape, create_branch
from siamese.head import HEAD_INITS, PairHead
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

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape == b.shape:  # one branch pass for both sides
            fa, fb = self.features(torch.cat([a, b])).split(len(a))
        else:
            fa, fb = self.features(a), self.features(b)
        return self.head(fa, fb)


def build_model(cfg: Mapping[str, Any]) -> SiameseModel:
    """A model from a config section: ``branch`` (required), ``in_chans`` (3), ``pool`` (max),
    ``pretrained`` (false), ``weights`` (null), ``normalize`` (false), ``head_hidden`` (32), ``head_init``
    (mean or cosine), ``neck`` (null, or ``{dim, dropout}``: a trainable neck before the head); other keys are
    ignored."""
    if not cfg.get("branch"):
        raise InputError(None, "the model config needs a 'branch' (a timm model name or 'kernel')")
    weights = cfg.get("weights")
    branch = create_branch(str(cfg["branch"]), in_chans=int(cfg.get("in_chans", 3)),
                           pool=str(cfg.get("pool", "max")), pretrained=bool(cfg.get("pretrained", False)),
                           weights=None if weights in (None, "") else weights,
                           normalize=bool(cfg.get("normalize", False)), **branch_shape(cfg))
    init = str(cfg.get("head_init", "mean"))
    if init not in HEAD_INITS:
        raise InputError(None, f"model.head_init must be one of {', '.join(HEAD_INITS)}, not {init!r}")
    settings = neck_settings(cfg)
    neck = None if settings is None else Neck(branch.out_dim, *settings)
    dim = branch.out_dim if neck is None else neck.out_dim
    return SiameseModel(branch, PairHead(dim, hidden=int(cfg.get("head_hidden", 32)), init=init), neck)
