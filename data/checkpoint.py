"""Checkpoints: model, optimizer, schedule position and sampler state, atomic, loadable with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data.errors import InputError
from data.io import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts only) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling/zip failure is a bad file for the user
        raise InputError(path, f"not a readable checkpoint ({type(err).__name__})") from None
