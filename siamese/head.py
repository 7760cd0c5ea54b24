"""The Siamese head: per-feature pair statistics -> a small shared MLP -> a learned weighted sum -> a logit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pair_stats(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` x2 -> ``[..., D, 4]``: ``x*y, x+y, |x-y|, (x-y)^2`` per feature (this order)."""
    d = x - y
    return torch.stack([x * y, x + y, d.abs(), d * d], dim=-1)


HEAD_INITS = ("mean", "cosine")


class PairHead(nn.Module):
    """``forward(x [B, D], y [B, D]) -> logits [B]``, symmetric in x and y (sigmoid left to the loss).

    Per feature d: ``mlp2(relu(mlp1(pair_stats(x_d, y_d))))`` with weights shared over the D features,
    then ``combine`` weighs and sums the D values (with a bias). The fast scorer in :mod:`matching.similarity.pair_head`
    relies on these attribute names and on the order of the four statistics.
    """

    def __init__(self, dim: int, hidden: int = 32, init: str = "mean"):
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"head init must be one of {', '.join(HEAD_INITS)}, not {init!r}")
        self.dim = dim
        self.hidden = hidden
        self.mlp1 = nn.Linear(4, hidden)
        self.mlp2 = nn.Linear(hidden, 1)
        self.combine = nn.Linear(dim, 1)
        # Start as the mean of the per-feature values: positive, small weights keep early logits moderate.
        nn.init.constant_(self.combine.weight, 1.0 / dim)
        nn.init.zeros_(self.combine.bias)
        if init == "cosine":
            self.init_cosine()

    @torch.no_grad()
    def init_cosine(self, scale: float = 10.0, offset: float = 0.5) -> None:
        """Make the head score ``scale * (x.y / D - offset)``: with features of length ``sqrt(D)`` (a branch
        with ``normalize``) that is a scaled cosine similarity, a ranking as good as the features' nearest
        neighbours from the first step. One hidden unit passes ``x*y`` through; the others start silent
        (zero output weight) and are learned from there."""
        self.mlp1.weight[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        self.mlp1.bias[0] = 0.0
        self.mlp2.weight.zero_()
        self.mlp2.weight[0, 0] = 1.0
        self.mlp2.bias.zero_()
        self.combine.weight.fill_(scale / self.dim)
        self.combine.bias.fill_(-scale * offset)

    def per_feature(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` values of the shared MLP, before ``combine``."""
        return self.mlp2(F.relu(self.mlp1(pair_stats(x, y)))).squeeze(-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.shape[-1] != self.dim:
            raise ValueError(f"features must both be [B, {self.dim}], got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.combine(self.per_feature(x, y)).squeeze(-1)
