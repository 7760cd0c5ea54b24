"""The Siamese model: one branch shared by both images of a pair, and the pair head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from data.errors import InputError
from siamese.branch import Branch, branch_shape, create_branch
from siamese.head import HEAD_INITS, PairHead


class SiameseModel(nn.Module):
    """``forward(a, b) -> logits [B]`` for image pairs; ``features`` and ``score`` for the two halves."""

    def __init__(self, branch: Branch, head: PairHead):
        super().__init__()
        self.branch = branch
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.branch(images)

    def score(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        return self.head(fa, fb)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape == b.shape:  # one branch pass for both sides
            fa, fb = self.branch(torch.cat([a, b])).split(len(a))
        else:
            fa, fb = self.branch(a), self.branch(b)
        return self.head(fa, fb)


def build_model(cfg: Mapping[str, Any]) -> SiameseModel:
    """A model from a config section: ``branch`` (required), ``in_chans`` (3), ``pool`` (max),
    ``pretrained`` (false), ``weights`` (null), ``normalize`` (false), ``head_hidden`` (32), ``head_init``
    (mean or cosine); other keys are ignored."""
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
    return SiameseModel(branch, PairHead(branch.out_dim, hidden=int(cfg.get("head_hidden", 32)), init=init))
