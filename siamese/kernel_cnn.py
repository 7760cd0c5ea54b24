"""The small from-scratch CNN of Martin Piotte's Siamese kernel (the 5th place's "kernel" branch).

A 9x9 stride-2 stem, then stages separated by 2x2 max pooling; each stage widens the features with a
1x1 convolution and refines them with bottleneck residual subblocks. Output: a 512-channel feature map
(the :class:`siamese.branch.Branch` adds ReLU and global pooling). Total stride 64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (channels, bottleneck width) of each stage after the stem, as in the kernel.
KERNEL_STAGES: tuple[tuple[int, int], ...] = ((128, 64), (256, 64), (384, 96), (512, 128))


class Subblock(nn.Module):
    """Bottleneck residual subblock: BN, 1x1 reduce, BN, 3x3, BN, 1x1 expand, add the input, ReLU."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(channels)
        self.reduce = nn.Conv2d(channels, width, 1)
        self.bn_mid = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_in(x)
        y = F.relu(self.reduce(x))
        y = F.relu(self.conv(self.bn_mid(y)))
        y = self.expand(self.bn_out(y))
        return F.relu(x + y)


def _stage(in_ch: int, out_ch: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(2), nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, out_ch, 1), nn.ReLU()]
    layers += [Subblock(out_ch, width) for _ in range(depth)]
    return nn.Sequential(*layers)


class KernelCNN(nn.Module):
    """Piotte's branch CNN without its pooling: ``[B, in_chans, H, W] -> [B, 512, H/64, W/64]``."""

    def __init__(self, in_chans: int = 1, stages: tuple[tuple[int, int], ...] = KERNEL_STAGES, depth: int = 4):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 64, 9, stride=2, padding=4), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        blocks, prev = [], 64
        for channels, width in stages:
            blocks.append(_stage(prev, channels, width, depth))
            prev = channels
        self.stages = nn.Sequential(*blocks)
        self.num_features = prev

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
