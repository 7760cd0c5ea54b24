"""The trainable neck of both families: ``BatchNorm1d(D) -> Dropout -> Linear(D, E) -> BatchNorm1d(E)``.

Between a (possibly frozen) trunk and what learns on its output: the embedding family's margin head, or the
Siamese pair head (``model.neck: {dim, dropout}``). On a CPU the trunk stays frozen and the neck trains on cached
trunk features of several augmented views in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from data.errors import InputError


class Neck(nn.Module):
    """Trunk features ``[B, D]`` -> ``[B, dim]``; ``out_dim`` is ``dim``."""

    def __init__(self, in_dim: int, dim: int = 512, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise InputError(None, f"neck dropout must be in [0, 1), not {dropout}")
        if dim < 1:
            raise InputError(None, f"neck dim must be >= 1, not {dim}")
        self.bn_in = nn.BatchNorm1d(in_dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, dim)
        self.bn_out = nn.BatchNorm1d(dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_out(self.fc(self.drop(self.bn_in(x.float()))))


def neck_settings(cfg: Mapping[str, Any]) -> tuple[int, float] | None:
    """``(dim, dropout)`` of a completed ``model`` section's ``neck: {dim, dropout}``, or None without a neck."""
    neck = cfg["neck"]
    return None if neck is None else (neck["dim"], neck["dropout"])
