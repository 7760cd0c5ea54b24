"""The device to run on and mixed precision: CUDA when present, bf16 autocast (fp16 with loss scaling where
bf16 is missing), a no-op on the CPU."""

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
