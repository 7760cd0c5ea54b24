"""Match lines of the review page: for each query and candidate photo, the keypoints the local matcher paired.

Read from the local member that scored the batch (``scores/<name>/settings.json``, written by
:func:`matching.runs.local_scores.score_local`): its features come back from the per-photo cache, and the same
matcher (LightGlue, or mutual nearest neighbours) runs again on the pairs the page shows, a few per query.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np

from matching.runs.local_scores import SETTINGS


def local_member(scores_dir: Path) -> dict | None:
    """The settings of the first local member under ``scores_dir`` (None when no local member scored)."""
    found = sorted(Path(scores_dir).glob(f"*/{SETTINGS}"))
    return json.loads(found[0].read_text()) if found else None


def match_lines(member: dict, pairs: Sequence[tuple[str, str]], query_path: Callable[[str], Path],
                gallery_path: Callable[[str], Path], box_of: Callable[[str], object], *, limit: int = 40,
                device: str = "cpu") -> dict[tuple[str, str], list[float]]:
    """``(query, catalog photo) -> [qx, qy, gx, gy, ...]`` (fractions of each crop, 3 decimals) of ``pairs``."""
    from matching.similarity.local_features import LocalSettings, cached_local, load_extractor
    from matching.similarity.local_match import load_matcher, pair_matches

    cfg = member["local"]
    settings = LocalSettings.from_section(cfg)
    features = Path(member["features"])

    @cache
    def extractor():
        return load_extractor(settings.extractor, settings.max_keypoints, device)

    queries = list(dict.fromkeys(q for q, _ in pairs))
    photos = list(dict.fromkeys(g for _, g in pairs))
    if not pairs:
        return {}
    q_set = cached_local(features / "test.npz", extractor, [query_path(n) for n in queries],
                         [box_of(n) for n in queries], queries, settings, desc="match lines: queries")
    g_set = cached_local(features / "catalog.npz", extractor, [gallery_path(n) for n in photos],
                         [box_of(n) for n in photos], photos, settings, desc="match lines: catalog")
    qi, gi = {n: i for i, n in enumerate(queries)}, {n: i for i, n in enumerate(photos)}
    rows = np.asarray([(qi[q], gi[g]) for q, g in pairs], dtype=np.int64)
    matcher = load_matcher(settings.extractor, device) if cfg["matcher"] == "lightglue" else None
    found = pair_matches(q_set, g_set, rows, matcher=matcher, min_confidence=cfg["min_confidence"],
                         min_similarity=cfg["min_similarity"], limit=limit, device=device)
    return {pair: np.round(lines, 3).ravel().tolist() for pair, lines in zip(pairs, found, strict=True)}
