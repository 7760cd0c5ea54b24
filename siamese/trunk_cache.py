"""Test-time-crop features of a frozen trunk, kept on disk and shared by folds, families and scoring.

A run whose branch never trains (every block ``freeze_branch``, no ``train.trainable_stages``) computes the same
trunk features of a photo in every fold, in the other family's run on the same trunk and again when it is
scored. :class:`TrunkStore` keeps them in ``<work>/features/trunk/`` (:mod:`data.cache` rows: a row's key is the
digest of the trunk's weights, its shape settings, the size, the crop margin, the photo's bytes and its box), so
each photo's crop goes through a given trunk once per work folder. Random training views are not shared: they
are drawn by each fold's position of the photo.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.cache import Rows, cached_rows, row_keys
from data.distributed import SINGLE, Shards
from data.images import TEST_MARGIN
from siamese.infer import Flipped, compute_features
from siamese.schedule import parse_schedule

TRUNK_DIR = "trunk"  # under a work folder's features/
_SHAPE_KEYS = ("branch", "in_chans", "pool", "normalize", "branch_blocks", "grid", "kernel_depth")


def frozen_trunk(cfg: Mapping[str, Any]) -> bool:
    """Whether a (completed) config's branch never trains: every block ``freeze_branch``, no trainable stages."""
    t = cfg["train"]
    if t["trainable_stages"] or not t["stages"]:
        return False
    stages = parse_schedule(t["stages"], "train.stages", require_k=False)
    return all(block.freeze_branch for stage in stages for block in stage.blocks)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-1 of a module's state (names, shapes, dtypes and bytes of every parameter and buffer)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class TrunkStore:
    """The trunk features of test-time crops for one trunk (``branch`` with the ``model`` section that shaped it),
    under ``folder``. ``features`` computes only the photos no earlier call (any fold, run or family) stored."""

    def __init__(self, folder: str | Path, branch: torch.nn.Module, model_cfg: Mapping[str, Any], *,
                 max_megapixels: float):
        self.folder = Path(folder)
        self.branch = branch
        self.channels = int(model_cfg["in_chans"])
        self.max_megapixels = float(max_megapixels)
        self.shape = json.dumps({k: model_cfg[k] for k in _SHAPE_KEYS}, sort_keys=True)

    def features(self, paths: Sequence[Path], boxes: Sequence, size: int, *, device: torch.device,
                 batch: int = 64, workers: int | None = None, amp: bool = True, mirrored: bool = False,
                 desc: str = "trunk features", shards: Shards = SINGLE) -> np.ndarray:
        """``[N, D]`` trunk features of the test-time crops of ``paths`` at ``size`` (``mirrored``: of their
        mirror images), in input order. The trunk's weights are digested at each call (milliseconds), so a
        branch changed since the store was made never reads another's rows."""
        paths, boxes = [Path(p) for p in paths], list(boxes)
        digest = weights_digest(self.branch)
        settings = f"trunk {digest}|{self.shape}|margin {TEST_MARGIN}|max_mp {self.max_megapixels}|{size}"
        keys = row_keys(f"{settings}|mirrored {mirrored}", paths, boxes)
        names = np.asarray([str(p) for p in paths], dtype=str)
        # one file per set of photos (a cache file that holds none of a set is replaced, so sets do not share
        # one); a set's rows are found in the other files of the folder
        set_id = hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]
        cache = self.folder / f"{digest[:12]}_{size}px_{set_id}.npz"
        module = Flipped(self.branch) if mirrored else self.branch

        def compute(rows: np.ndarray) -> Rows:
            feats = compute_features(module, [paths[i] for i in rows], [boxes[i] for i in rows], size,
                                     channels=self.channels, batch=batch, device=device, workers=workers,
                                     max_megapixels=self.max_megapixels, amp=amp, desc=desc)
            return Rows(names[rows], features=feats)

        return cached_rows(cache, keys, names, compute, shards=shards)["features"]


def store_for(folder: str | Path | None, branch: torch.nn.Module, cfg: Mapping[str, Any]) -> TrunkStore | None:
    """A :class:`TrunkStore` under ``folder`` for a (completed) config whose trunk is frozen; None otherwise."""
    if folder is None or not frozen_trunk(cfg):
        return None
    return TrunkStore(folder, branch, cfg["model"], max_megapixels=cfg["data"]["max_megapixels"])


@torch.no_grad()
def through(module: torch.nn.Module, trunk: np.ndarray, device: torch.device, chunk: int = 4096) -> np.ndarray:
    """``module`` (a neck, in eval mode) over trunk features, in chunks, float32 on the CPU."""
    was_training = module.training
    module.eval()
    try:
        x = torch.as_tensor(trunk).to(device)
        if not len(x):
            return np.zeros((0, int(getattr(module, "out_dim", x.shape[1]))), np.float32)
        return torch.cat([module(x[i:i + chunk]).float() for i in range(0, len(x), chunk)]).cpu().numpy()
    finally:
        module.train(was_training)
