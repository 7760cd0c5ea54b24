"""The embedding family (1st-3rd place, Happywhale 2022): branch -> GeM -> BN + linear neck -> 512-d embedding,
trained with an angular-margin (ArcFace) classifier, optionally beside a batch-hard triplet loss and focal loss.

Only the embedding is used at test time (cosine similarity); the margin head's class weights are training
machinery and depend on the fold's classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data.errors import InputError
from siamese.branch import Branch, branch_shape, create_branch
from siamese.model import model_section
from siamese.neck import Neck

FAMILY = "arcface"


class ArcMarginHead(nn.Module):
    """Additive angular margin logits, ``s * cos(theta + m)`` for the true class and ``s * cos(theta)`` for
    the others; with ``subcenters > 1`` each class keeps several centres and its cosine is their best
    (sub-center ArcFace). ``easy_margin`` applies the margin only where ``cos(theta) > 0``; otherwise, past
    ``theta = pi - m`` (where ``theta + m`` would turn back), the target logit is ``cos(theta) - m sin(m)``."""

    def __init__(self, dim: int, classes: int, *, s: float = 30.0, m: float = 0.5, easy_margin: bool = False,
                 subcenters: int = 1):
        super().__init__()
        if classes < 1 or subcenters < 1:
            raise InputError(None, f"the margin head needs classes >= 1 and subcenters >= 1 ({classes}, {subcenters})")
        self.classes, self.subcenters = classes, subcenters
        self.s, self.m, self.easy_margin = float(s), float(m), bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(classes * subcenters, dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, classes]`` cosine of each embedding with each class (best sub-centre)."""
        cos = F.linear(F.normalize(embeddings.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))
        if self.subcenters > 1:
            cos = cos.view(-1, self.classes, self.subcenters).amax(dim=-1)
        return cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin_logits(self.cosine(embeddings), labels, s=self.s, m=self.m, easy_margin=self.easy_margin)


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, *, s: float, m: float,
                  easy_margin: bool = False) -> torch.Tensor:
    """ArcFace logits from a ``[B, C]`` cosine table: the margin on each row's ``labels`` column, times ``s``."""
    cos = cos.clamp(-1.0, 1.0)
    sin = (1.0 - cos * cos).clamp(min=0.0).sqrt()
    phi = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
    if easy_margin:
        phi = torch.where(cos > 0, phi, cos)
    else:
        phi = torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
    target = F.one_hot(labels, cos.shape[1]).bool()
    return s * torch.where(target, phi, cos)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, *, smoothing: float = 0.0,
                        focal_gamma: float = 0.0) -> torch.Tensor:
    """Cross-entropy with label smoothing, times the focal factor ``(1 - p_true)^gamma`` per sample; mean."""
    ce = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="none")
    if focal_gamma > 0:
        p_true = F.softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
        ce = (1.0 - p_true).pow(focal_gamma) * ce
    return ce.mean()


def batch_hard_triplet(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on cosine distance ``1 - cos``: for each anchor with a positive in the batch,
    ``relu(hardest positive distance - hardest negative distance + margin)``; mean over those anchors
    (0 when no anchor has both)."""
    e = F.normalize(embeddings.float(), dim=-1)
    dist = 1.0 - e @ e.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not valid.any():
        return dist.sum() * 0.0
    hardest_pos = torch.where(pos_mask, dist, torch.full_like(dist, -1.0)).amax(1)
    hardest_neg = torch.where(neg_mask, dist, torch.full_like(dist, 3.0)).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


class Embedder(nn.Module):
    """Branch then neck: images to embeddings (the part kept for scoring)."""

    def __init__(self, branch: Branch, neck: Neck):
        super().__init__()
        self.branch = branch
        self.neck = neck
        self.out_dim = neck.out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.branch(images))


class EmbeddingModel(nn.Module):
    """``branch`` (GeM), ``neck`` (512-d embedding) and ``margin`` (ArcFace over the training classes)."""

    def __init__(self, branch: Branch, neck: Neck, margin: ArcMarginHead):
        super().__init__()
        self.branch = branch
        self.neck = neck
        self.margin = margin

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.branch(images))

    def embedder(self) -> Embedder:
        return Embedder(self.branch, self.neck)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)


def build_embedding_model(cfg: Mapping[str, Any], classes: int) -> EmbeddingModel:
    """A model from the ``model`` section (:class:`data.settings.Model`): the branch, the neck (``embedding_dim``,
    ``neck_dropout``) and the margin head (``arc_s``, ``arc_m``, ``easy_margin``, ``subcenters``); ``classes``
    comes from the fold (mirrored classes included)."""
    cfg = model_section(cfg)
    branch = create_branch(cfg["branch"], in_chans=cfg["in_chans"], pool=cfg["pool"], pretrained=cfg["pretrained"],
                           weights=cfg["weights"] or None, **branch_shape(cfg))
    neck = Neck(branch.out_dim, cfg["embedding_dim"], cfg["neck_dropout"])
    margin = ArcMarginHead(neck.out_dim, classes, s=cfg["arc_s"], m=cfg["arc_m"], easy_margin=cfg["easy_margin"],
                           subcenters=cfg["subcenters"])
    return EmbeddingModel(branch, neck, margin)


def classes_in_state(state: Mapping[str, torch.Tensor], cfg: Mapping[str, Any]) -> int:
    """The number of classes a saved model was trained on (rows of its margin weight / sub-centres)."""
    return int(state["margin.weight"].shape[0]) // model_section(cfg)["subcenters"]
