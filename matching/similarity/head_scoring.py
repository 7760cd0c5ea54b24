"""The Siamese pair head by ``score.scoring``, as :func:`matching.similarity.cosine.similarity` is for embeddings:
``image`` (the head over the query and each catalog photo), ``centre`` (over the query and the mean head
features of that photo's whale) or ``both`` (the mean of the two probabilities).

An out-of-fold query is a catalog photo itself: ``own`` (its column, :func:`matching.matrix.own_columns`)
leaves it out of its own whale's centre, which would otherwise contain the very photo it is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data.errors import InputError
from matching.similarity.cosine import SCORINGS, fill_whale_columns, whale_sums, without_own
from matching.similarity.pair_head import score_matrix


def head_centre_matrix(head: torch.nn.Module, query: np.ndarray, gallery: np.ndarray, labels: Sequence[str], *,
                       own: np.ndarray | None = None, device: torch.device | str = "cpu",
                       budget_mb: float = 512) -> np.ndarray:
    """``[Q, G]``: each column holds the head's probability for the query and the mean features of that column's
    whale (without the query's own photo where ``own`` gives one; 0 where that leaves the whale no photo)."""
    sums, counts, column = whale_sums(gallery, labels, unit=False)
    centres = (sums / counts[:, None]).astype(np.float32)
    out = score_matrix(head, query, centres, device=device, budget_mb=budget_mb)[:, column]
    if own is None:
        return out
    rows, whale, rest = without_own(np.asarray(gallery, np.float32), sums, column, own)
    left = counts[whale] - 1
    q = torch.as_tensor(np.asarray(query, np.float32)[rows], device=device)
    r = torch.as_tensor((rest / np.maximum(left, 1)[:, None]).astype(np.float32), device=device)
    was = head.training
    head.eval()
    with torch.no_grad():
        probs = [torch.sigmoid(head(q[i:i + 4096], r[i:i + 4096]).float()) for i in range(0, len(q), 4096)]
    head.train(was)
    probs = torch.cat(probs).cpu().numpy() if probs else np.zeros(0, np.float32)
    return fill_whale_columns(out, rows, whale, column, np.where(left > 0, probs, 0.0))


def head_similarity(head: torch.nn.Module, query: np.ndarray, gallery: np.ndarray, labels: Sequence[str], *,
                    scoring: str = "image", own: np.ndarray | None = None, device: torch.device | str = "cpu",
                    budget_mb: float = 512) -> np.ndarray:
    """The head's ``[Q, G]`` probabilities by ``scoring`` (see the module)."""
    if scoring not in SCORINGS:
        raise InputError(None, f"score.scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    if scoring == "centre":
        return head_centre_matrix(head, query, gallery, labels, own=own, device=device, budget_mb=budget_mb)
    image = score_matrix(head, query, gallery, device=device, budget_mb=budget_mb)
    if scoring == "image":
        return image
    return 0.5 * (image + head_centre_matrix(head, query, gallery, labels, own=own, device=device, budget_mb=budget_mb))
