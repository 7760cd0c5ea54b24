"""A branch cut in two for partial fine-tuning (``train.trainable_stages: N``): a frozen *stem* (the input
adapter and every stage but the last N) and a trainable *tail* (the last N stages, the head convolution, ReLU,
pooling, normalisation), with ``tail(stem(x)) == branch(x)``.

The stem's output maps of each photo and view are computed once and cached; an epoch then runs the tail only,
which on a CPU costs a fraction of the whole trunk (the last stages work at the smallest resolution). Both halves
share the branch's modules: training the tail trains the branch, and checkpoints keep the branch's keys.

Backbones with stages to cut: timm's EfficientNet / MobileNet family (``conv_stem``, ``bn1``, ``blocks``,
``conv_head``, ``bn2``) and the kernel CNN (``stem``, ``stages``).
"""

from __future__ import annotations

import torch
from torch import nn

from data.errors import InputError
from siamese.branch import Branch
from siamese.kernel_cnn import KernelCNN


def stage_list(branch: Branch) -> nn.Sequential:
    """The backbone's sequence of stages; a backbone without one is an InputError."""
    backbone = branch.backbone
    if isinstance(backbone, KernelCNN):
        return backbone.stages
    stages = getattr(backbone, "blocks", None)
    if isinstance(stages, nn.Sequential) and all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "conv_head")):
        return stages
    raise InputError(None, f"train.trainable_stages needs an EfficientNet/MobileNet-style or kernel branch, "
                           f"not {type(backbone).__name__} ({branch.name})")


class Stem(nn.Module):
    """Images -> the maps entering the tail's first stage. Never trained: keep it in eval mode."""

    def __init__(self, branch: Branch, first_trainable: int):
        super().__init__()
        self.branch = branch
        self.first = first_trainable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.branch.backbone
        x = self.branch.adapted(x)
        x = bb.stem(x) if isinstance(bb, KernelCNN) else bb.bn1(bb.conv_stem(x))
        return stage_list(self.branch)[:self.first](x)


class Tail(nn.Module):
    """Stem maps -> the branch's features (last stages, head convolution, ReLU, pooling, normalisation)."""

    def __init__(self, branch: Branch, first_trainable: int):
        super().__init__()
        self.branch = branch
        self.first = first_trainable
        self.out_dim = branch.out_dim

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, bb = self.branch, self.branch.backbone
        x = stage_list(b)[self.first:](maps)
        if not isinstance(bb, KernelCNN):
            x = bb.bn2(bb.conv_head(x))
        return b.pooled(x)

    def stage_parameters(self) -> list[nn.Parameter]:
        """The parameters that train: the last stages' and the head convolution's (pooling's, e.g. GeM's p)."""
        bb = self.branch.backbone
        parts: list[nn.Module] = [stage_list(self.branch)[self.first:], self.branch.pool]
        if not isinstance(bb, KernelCNN):
            parts += [bb.conv_head, bb.bn2]
        return [p for m in parts for p in m.parameters()]


def split_branch(branch: Branch, trainable: int) -> tuple[Stem, Tail]:
    """``(stem, tail)`` of ``branch`` with its last ``trainable`` stages in the tail; an InputError when the
    backbone has no stages to cut or fewer than ``trainable + 1``."""
    stages = stage_list(branch)
    if not 1 <= trainable < len(stages):
        raise InputError(None, f"train.trainable_stages must be in 1..{len(stages) - 1} for this branch "
                               f"({len(stages)} stages), not {trainable}")
    first = len(stages) - trainable
    return Stem(branch, first), Tail(branch, first)
