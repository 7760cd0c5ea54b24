"""The device to run on, mixed precision and the layout of image batches: CUDA when present, bf16 autocast (fp16
with loss scaling where bf16 is missing, a no-op on the CPU), channels-last batches everywhere."""

from __future__ import annotations

import contextlib

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; any other value is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA where supported (fp16 otherwise); a no-op context on the CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool = True) -> bool:
    """True where :func:`autocast` runs in fp16 (CUDA without bf16): gradients then need loss scaling."""
    return device.type == "cuda" and enabled and not torch.cuda.is_bf16_supported()


def image_batch(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A ``[B, C, H, W]`` batch on ``device`` in channels-last layout, on the CPU as on CUDA: the convolutions of
    oneDNN and cuDNN run faster on it (the frozen Lite0 trunk at 192 px about 1.9x on 2 CPU cores, the kernel CNN's
    training step about 1.2x; BENCHMARKS.md), with the same values up to float rounding."""
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
