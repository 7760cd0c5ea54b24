"""Branch networks: any timm backbone (or Piotte's kernel CNN) -> ReLU -> global pooling -> a D-vector."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file
from timm.layers import SelectAdaptivePool2d
from timm.models import adapt_input_conv
from torch import nn

from data.errors import InputError
from data.images import MEAN, STD
from siamese.kernel_cnn import KernelCNN
from siamese.pretrained import hub_reachable, offline_backbone

POOLS = ("max", "gem", "avg", "grid")
KERNEL = "kernel"


class GeM(nn.Module):
    """Generalised mean pooling with a learnable exponent: ``mean(x^p)^(1/p)`` over H, W -> ``[B, C]``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p).to(x.dtype)


class GridPool(nn.Module):
    """Average over each cell of a ``g x g`` grid, flattened: ``[B, C, H, W] -> [B, C * g * g]``. Keeps where on
    the crop a pattern lies (the crop is an upright, box-aligned fluke), which a global pool throws away."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


def make_pool(pool: str, grid: int = 4) -> nn.Module:
    if pool == "gem":
        return GeM()
    if pool == "grid":
        return GridPool(grid)
    return SelectAdaptivePool2d(pool_type=pool, flatten=True)


def truncate_backbone(backbone: nn.Module, blocks: int) -> int:
    """Keep the first ``blocks`` stages of a timm EfficientNet-style backbone (``conv_stem``, ``blocks``,
    ``conv_head``), dropping the rest and the 1x1 head convolution; returns the channels it now outputs.

    Mid-level block outputs keep the fine pattern detail that the last ImageNet layers trade for object
    categories (on the synthetic catalog, frozen Lite0 block 6 of 7 matches flukes better than the head)."""
    stages = getattr(backbone, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(backbone, "conv_head"):
        raise InputError(None, f"branch_blocks needs an EfficientNet/MobileNet-style backbone (blocks + conv_head), "
                               f"not {type(backbone).__name__}")
    if not 1 <= blocks <= len(stages):
        raise InputError(None, f"branch_blocks must be in 1..{len(stages)} for this backbone, not {blocks}")
    backbone.blocks = stages[:blocks]
    backbone.conv_head, backbone.bn2 = nn.Identity(), nn.Identity()
    was_training = backbone.training
    with torch.no_grad():
        probe = torch.zeros(1, backbone.conv_stem.in_channels, 64, 64)
        channels = int(backbone.eval().forward_features(probe).shape[1])
    backbone.train(was_training)
    backbone.num_features = channels
    return channels


class Branch(nn.Module):
    """``[B, C, H, W]`` images (normalised as :mod:`data.images` does) -> ``[B, out_dim]`` features.

    The buffers ``input_scale``/``input_shift`` turn the project's normalisation into the one the
    backbone's weights were trained with (identity unless pretrained weights expect another).
    """

    def __init__(self, backbone: nn.Module, *, name: str, in_chans: int, pool: str = "max",
                 weights_mean: tuple[float, ...] | None = None, weights_std: tuple[float, ...] | None = None,
                 normalize: bool = False, grid: int = 4):
        super().__init__()
        self.backbone = backbone
        self.pool = make_pool(pool, grid)
        self.name = name
        self.in_chans = in_chans
        self.pool_type = pool
        self.grid = grid
        self.relu = True  # off once truncated: a mid-level block's output is linear, its sign carries information
        self.normalize = normalize
        scale, shift = _input_adapter(in_chans, weights_mean, weights_std)
        self.register_buffer("input_scale", scale)
        self.register_buffer("input_shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled(self.backbone.forward_features(self.adapted(x)))

    def adapted(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the project's normalisation -> the one the backbone's weights expect."""
        return torch.addcmul(self.input_shift.view(1, -1, 1, 1), x, self.input_scale.view(1, -1, 1, 1))

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        """The backbone's output maps -> features: ReLU (not after a truncated stage), pooling, normalisation."""
        features = self.pool(F.relu(maps) if self.relu else maps)
        if self.normalize:  # unit length times sqrt(D): each feature of order 1, x.y = D * cosine
            features = F.normalize(features.float(), dim=-1).to(features.dtype) * self.out_dim ** 0.5
        return features

    @property
    def out_dim(self) -> int:
        channels = int(self.backbone.num_features)
        return channels * self.grid * self.grid if self.pool_type == "grid" else channels

    def truncate(self, blocks: int) -> None:
        """Keep the backbone's first ``blocks`` stages (:func:`truncate_backbone`), without the final ReLU."""
        truncate_backbone(self.backbone, blocks)
        self.relu = False


def _input_adapter(in_chans: int, mean: tuple[float, ...] | None,
                   std: tuple[float, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``x_weights = x_project * scale + shift``."""
    ones, zeros = torch.ones(in_chans), torch.zeros(in_chans)
    if mean is None or std is None or (tuple(mean) == MEAN[3] and tuple(std) == STD[3]):
        return ones, zeros
    m_w, s_w = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    if in_chans == 1:
        m_w, s_w = m_w.mean(0, keepdim=True), s_w.mean(0, keepdim=True)
    m_p, s_p = torch.tensor(MEAN[in_chans]), torch.tensor(STD[in_chans])
    return s_p / s_w, (m_p - m_w) / s_w


def branch_shape(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``blocks``, ``grid`` and ``kernel_depth`` for :func:`create_branch` from a completed ``model`` section."""
    return {"blocks": cfg["branch_blocks"], "grid": cfg["grid"], "kernel_depth": cfg["kernel_depth"]}


def create_branch(name: str, *, in_chans: int = 3, pool: str = "max", pretrained: bool = False,
                  weights: str | Path | None = None, normalize: bool = False, blocks: int | None = None,
                  grid: int = 4, kernel_depth: int = 4) -> Branch:
    """A branch by name: a timm backbone (``densenet121``, ``resnet18`` ...) or ``kernel``.

    Weights: ``weights`` (a local file, it overrides ``pretrained``), else ImageNet weights when
    ``pretrained`` (timm's download when the hub answers, else installed offline weights where there are
    some, see :mod:`siamese.pretrained`), else random. ``normalize`` scales every output vector to length
    ``sqrt(D)``. ``blocks`` keeps only the backbone's first stages (after the weights are loaded); pool
    ``grid`` averages a ``grid x grid`` layout of cells; ``kernel_depth``: subblocks per stage of the kernel CNN.
    Bad choices raise :class:`InputError`.
    """
    if in_chans not in (1, 3):
        raise InputError(None, f"in_chans must be 1 or 3, not {in_chans!r}")
    if pool not in POOLS:
        raise InputError(None, f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    if not isinstance(grid, int) or grid < 1:
        raise InputError(None, f"grid must be a whole number >= 1, not {grid!r}")
    mean = std = None
    if name == KERNEL:
        if pretrained and weights is None:
            raise InputError(None, "the kernel CNN has no pretrained weights: set pretrained: false or pass --weights")
        backbone: nn.Module = KernelCNN(in_chans, depth=kernel_depth)
    elif not timm.is_model(name):
        raise InputError(None, f"unknown branch {name!r}: neither 'kernel' nor a timm model name")
    elif pretrained and weights is None:
        backbone, mean, std = _pretrained_backbone(name, in_chans)
    else:
        backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
    branch = Branch(backbone, name=name, in_chans=in_chans, pool=pool, weights_mean=mean, weights_std=std,
                    normalize=normalize, grid=grid)
    if weights is not None:
        load_branch_weights(branch, weights)
    if blocks is not None:
        branch.truncate(int(blocks))
    return branch


def _pretrained_backbone(name: str, in_chans: int) -> tuple[nn.Module, tuple, tuple]:
    """timm's ImageNet weights when its download source answers, else offline weights, else InputError."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        raise InputError(None, f"timm has no pretrained weights for {name!r}; set pretrained: false or pass --weights")
    source = hf_constants.ENDPOINT if cfg.hf_hub_id else str(cfg.url)
    problem = f"{source} is not reachable"
    if hf_constants.HF_HUB_OFFLINE or hub_reachable(source):
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, global_pool="", in_chans=in_chans)
            return model, tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])
        except Exception as err:  # noqa: BLE001 - any download/cache failure means: no weights this way
            problem = f"the download failed ({type(err).__name__}: {err})"
    offline = offline_backbone(name, in_chans)
    if offline is not None:
        return offline
    raise InputError(None, f"ImageNet weights for {name!r} are not available: {problem}. Pass a local weights "
                           "file with --weights FILE (config model.weights), or set model.pretrained: false")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors (by suffix) or ``torch.load(weights_only=True)``.

    A checkpoint that nests it under ``model`` or ``state_dict`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt or foreign file is bad user input
        raise InputError(path, f"not a readable weights file ({type(err).__name__})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "does not hold a state dict (names -> tensors)")
    return dict(state)


def load_branch_weights(branch: Branch, path: str | Path) -> None:
    """Load a file holding a bare backbone state dict, a Branch one (``backbone.*``) or a SiameseModel one.

    The backbone must match exactly (a timm classifier in the file is ignored; a 3-channel input conv is
    adapted to a 1-channel branch); pooling and input buffers are taken when the file has them.
    """
    state = read_weights_file(path)
    if any(k.startswith("branch.") for k in state):
        state = {k[len("branch."):]: v for k, v in state.items() if k.startswith("branch.")}
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    own = branch.state_dict()
    cfg = getattr(branch.backbone, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = {k: v for k, v in state.items()
             if k in own or (k.startswith("backbone.") and not any(k.startswith(f"backbone.{h}.") for h in heads))}
    first = f"backbone.{cfg.get('first_conv')}.weight"
    if first in state and first in own and state[first].shape[1] != own[first].shape[1]:
        state[first] = adapt_input_conv(own[first].shape[1], state[first])
    want = {k for k in own if k.startswith("backbone.")}
    missing, extra = sorted(want - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise InputError(path, f"does not fit branch {branch.name!r}: {len(missing)} missing keys {missing[:3]}, "
                               f"{len(extra)} unexpected keys {extra[:3]}")
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise InputError(path, f"{len(wrong)} tensors of the wrong shape for branch {branch.name!r}, e.g. {k}: "
                               f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the branch")
    branch.load_state_dict(state, strict=False)
