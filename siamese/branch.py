"""Branch networks: any timm backbone (or Piotte's kernel CNN) -> ReLU -> global pooling -> a D-vector."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

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

POOLS = ("max", "gem", "avg")
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


def make_pool(pool: str) -> nn.Module:
    if pool == "gem":
        return GeM()
    return SelectAdaptivePool2d(pool_type=pool, flatten=True)


class Branch(nn.Module):
    """``[B, C, H, W]`` images (normalised as :mod:`data.images` does) -> ``[B, out_dim]`` features.

    The buffers ``input_scale``/``input_shift`` turn the project's normalisation into the one the
    backbone's weights were trained with (identity unless pretrained weights expect another).
    """

    def __init__(self, backbone: nn.Module, *, name: str, in_chans: int, pool: str = "max",
                 weights_mean: tuple[float, ...] | None = None, weights_std: tuple[float, ...] | None = None,
                 normalize: bool = False):
        super().__init__()
        self.backbone = backbone
        self.pool = make_pool(pool)
        self.name = name
        self.in_chans = in_chans
        self.pool_type = pool
        self.out_dim = int(backbone.num_features)
        self.normalize = normalize
        scale, shift = _input_adapter(in_chans, weights_mean, weights_std)
        self.register_buffer("input_scale", scale)
        self.register_buffer("input_shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.input_shift.view(1, -1, 1, 1), x, self.input_scale.view(1, -1, 1, 1))
        features = self.pool(F.relu(self.backbone.forward_features(x)))
        if self.normalize:  # unit length times sqrt(D): each feature of order 1, x.y = D * cosine
            features = F.normalize(features.float(), dim=-1).to(features.dtype) * self.out_dim ** 0.5
        return features


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


def create_branch(name: str, *, in_chans: int = 3, pool: str = "max", pretrained: bool = False,
                  weights: str | Path | None = None, normalize: bool = False) -> Branch:
    """A branch by name: a timm backbone (``densenet121``, ``resnet18`` ...) or ``kernel``.

    Weights: ``weights`` (a local file, it overrides ``pretrained``), else ImageNet weights when
    ``pretrained`` (timm's download when the hub answers, else installed offline weights where there are
    some, see :mod:`siamese.pretrained`), else random. ``normalize`` scales every output vector to length
    ``sqrt(D)``. Bad choices raise :class:`InputError`.
    """
    if in_chans not in (1, 3):
        raise InputError(None, f"in_chans must be 1 or 3, not {in_chans!r}")
    if pool not in POOLS:
        raise InputError(None, f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
    mean = std = None
    if name == KERNEL:
        if pretrained and weights is None:
            raise InputError(None, "the kernel CNN has no pretrained weights: set pretrained: false or pass --weights")
        backbone: nn.Module = KernelCNN(in_chans)
    elif not timm.is_model(name):
        raise InputError(None, f"unknown branch {name!r}: neither 'kernel' nor a timm model name")
    elif pretrained and weights is None:
        backbone, mean, std = _pretrained_backbone(name, in_chans)
    else:
        backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
    branch = Branch(backbone, name=name, in_chans=in_chans, pool=pool, weights_mean=mean, weights_std=std,
                    normalize=normalize)
    if weights is not None:
        load_branch_weights(branch, weights)
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
