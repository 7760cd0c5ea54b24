"""Learned local matching as a member of the blend: ``scores/<local.name>/{test,oof}.npz``.

Untrained, as the SIFT member (:mod:`matching.runs.keypoint_scores`): one test x catalog matrix and one
out-of-fold matrix whose rows are the folds' validation photos (each against the whole catalog but itself).

- ``local.matcher: mnn``: the mutual-nearest-neighbour count of every pair.
- ``local.matcher: lightglue``: LightGlue's confident matches on each query's shortlist only
  (``local.shortlist: {by, top}``): the top catalog photos by the member's own mutual-NN count (``by: mnn``),
  by another member's score matrix (``by: <model>``, read from ``scores/<model>/``), or every pair
  (``by: null``, or ``top`` at least the catalog size: brute force). Pairs outside the shortlist score 0
  matches, the least a pair can score, so they never outrank a matched pair.

Counts n become probabilities by a logistic on sqrt(n) fitted on the out-of-fold matrix (``calibration.csv``).
When LightGlue's shortlist comes from the mutual-NN count, that count is written too, as the member
``<local.name>_mnn``: the blend (or its tuned weights) can use both.
Local features are cached per part under ``features/<local.name>/``, keyed by the photos' files, their boxes
and the extractor's settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch

from data.cache import cached_pairs, row_keys
from data.catalog import NEW_WHALE
from data.config import deep_merge
from data.distributed import SINGLE, Shards
from data.errors import InputError
from data.io import write_text
from data.settings import Local, check
from matching.matrix import ScoreMatrix, load_matrix, save_matrix, self_pairs
from matching.runs.keypoint_scores import drop_stale_oof, to_probability, write_calibrated_oof
from matching.similarity.local_features import LocalSet, LocalSettings, cached_local, load_extractor
from matching.similarity.local_match import lightglue_counts, load_matcher, mnn_matrix, mnn_pairs, shortlist

SETTINGS = "settings.json"  # beside the member's matrices: its local: section and where its features are cached


def local_counts(query: LocalSet, gallery: LocalSet, cfg: dict, *, exclude_self: bool, base: np.ndarray | None = None,
                 device: torch.device | str = "cpu", matcher=None, desc: str = "local",
                 pair_cache=None, shards: Shards = SINGLE) -> dict[str, np.ndarray]:
    """The [Q, G] match counts of the ``local:`` section ``cfg`` by member name: ``cfg["name"]``, and
    ``<name>_mnn`` when LightGlue's shortlist came from the mutual-NN count (it was computed anyway). ``base``:
    the shortlist's score matrix when ``shortlist.by`` names another member (rows and columns as ``query`` and
    ``gallery``).

    ``matcher: mnn`` with ``by: mnn`` (or no shortlist) counts every pair; with ``by: <model>`` only that
    model's shortlist (the cheapest shortlisted member). ``matcher: lightglue`` runs on the shortlist.
    ``pair_cache(pairs, compute)``: LightGlue's counts of pairs seen before (:func:`data.cache.cached_pairs`, which
    splits the missing pairs over its processes). With several ``shards`` (torchrun) each process counts its share
    of the query rows (mutual NN); every process returns the whole matrices."""
    by, top = cfg["shortlist"]["by"], cfg["shortlist"]["top"]
    brute = by is None or top >= len(gallery)
    mnn = None
    if by == "mnn" or (cfg["matcher"] == "mnn" and brute):
        mine = query.take(np.arange(len(query))[shards.rows(len(query))])
        mnn = shards.gather_rows(mnn_matrix(mine, gallery, min_similarity=cfg["min_similarity"],
                                            exclude_self=exclude_self, desc=f"{desc} mutual NN"))
    if cfg["matcher"] == "mnn" and mnn is not None:
        return {cfg["name"]: mnn}
    if brute:
        base, top = np.zeros((len(query), len(gallery)), np.float32), len(gallery)
    elif by == "mnn":
        base = mnn
    elif base is None:
        raise InputError(None, f"local.shortlist.by: {by!r} gave no score matrix")
    pairs = _shortlisted(query, gallery, base, top, exclude_self)
    if cfg["matcher"] == "mnn":
        counts = mnn_pairs(query, gallery, pairs, min_similarity=cfg["min_similarity"])
    else:
        def glue(todo: np.ndarray) -> np.ndarray:
            return lightglue_counts(matcher or load_matcher(cfg["extractor"], device), query, gallery, todo,
                                    min_confidence=cfg["min_confidence"], batch=cfg["batch"], device=device,
                                    desc=f"{desc} LightGlue")

        counts = glue(pairs) if pair_cache is None else pair_cache(pairs, glue)
    result = np.zeros((len(query), len(gallery)), np.float32)
    result[pairs[:, 0], pairs[:, 1]] = counts
    return {cfg["name"]: result, **({f"{cfg['name']}_mnn": mnn} if mnn is not None else {})}


def _shortlisted(query: LocalSet, gallery: LocalSet, base: np.ndarray, top: int, exclude_self: bool) -> np.ndarray:
    """[P, 2] (query row, gallery row) of each query's ``top`` columns of ``base``, a query's own photo left out."""
    own = self_pairs(query.names, gallery.names) if exclude_self else np.zeros(np.shape(base), bool)
    cols = shortlist(np.where(own, -np.inf, np.asarray(base, np.float32)), top)
    pairs = np.stack([np.repeat(np.arange(len(query)), cols.shape[1]), cols.ravel()], 1)
    return pairs[~own[pairs[:, 0], pairs[:, 1]]]


def _aligned(path: Path, query: Sequence[str], gallery: Sequence[str]) -> np.ndarray:
    """The rows ``query`` and columns ``gallery`` of the score matrix at ``path``."""
    m = load_matrix(path)
    rows = {str(n): i for i, n in enumerate(m.query)}
    cols = {str(n): j for j, n in enumerate(m.gallery)}
    absent = [n for n in query if n not in rows] + [n for n in gallery if n not in cols]
    if absent:
        raise InputError(path, f"does not hold every photo the local member scores (first missing: {absent[0]})")
    return m.scores[np.ix_([rows[n] for n in query], [cols[n] for n in gallery])]


def score_local(catalog, val_names: Sequence[str] | None, work_dir: Path, cfg: dict, *,
                device: torch.device | str = "cpu", max_megapixels: float = 60.0, log=print,
                features_dir: Path | None = None, shards: Shards = SINGLE) -> list[Path]:
    """Write ``scores/<name>/oof.npz`` + ``calibration.csv`` (given validation photos) and ``test.npz`` for the
    completed ``local:`` section ``cfg``; features cached under ``<features_dir>/<name>/`` (default
    ``<work_dir>/features``). With several ``shards`` (torchrun) the processes share the photos, the mutual-NN
    rows and the LightGlue pairs; rank 0 writes the files (the others return no paths)."""
    name = cfg["name"]
    feat_dir = Path(features_dir or Path(work_dir) / "features") / name
    out_dir = Path(work_dir) / "scores" / name
    by = cfg["shortlist"]["by"]
    settings = LocalSettings.from_section(cfg)
    known_df = catalog.train[catalog.train["Id"] != NEW_WHALE]
    known, labels = known_df["Image"].tolist(), known_df["Id"].tolist()
    own = by in (None, "mnn") or cfg["shortlist"]["top"] >= len(known)  # no other member's matrix needed
    other = None if own else Path(work_dir) / "scores" / by
    truth = dict(zip(catalog.train["Image"], catalog.train["Id"]))

    @cache
    def extractor():
        return load_extractor(settings.extractor, settings.max_keypoints, device)

    def features(names, path_of, part) -> LocalSet:
        return cached_local(feat_dir / f"{part}.npz", extractor, [path_of(n) for n in names],
                            [catalog.box(n) for n in names], names, settings, device=device,
                            max_megapixels=max_megapixels, desc=f"{name} {part}", shards=shards)

    def keys_of(names, path_of) -> np.ndarray:
        return row_keys(settings.key(), [path_of(n) for n in names], [catalog.box(n) for n in names])

    gallery = features(known, catalog.train_path, "catalog")
    gallery_keys = keys_of(known, catalog.train_path)
    glue_settings = f"{cfg['matcher']}|{cfg['min_confidence']}"
    pairs_file = feat_dir / f"pairs_{hashlib.sha1(glue_settings.encode()).hexdigest()[:12]}.npz"

    def pair_cache(query_keys):
        return lambda pairs, compute: cached_pairs(pairs_file, query_keys, gallery_keys, pairs, compute,
                                                   shards=shards)

    matcher = None if cfg["matcher"] == "mnn" else load_matcher(settings.extractor, device)
    calibs: dict[str, object] = {}
    written = []
    if val_names:
        val_names = [str(n) for n in val_names]
        index = {str(n): i for i, n in enumerate(gallery.names)}
        extra_names = [n for n in val_names if n not in index]  # new_whale photos: the rest are in the catalog
        both = LocalSet.concat([gallery, features(extra_names, catalog.train_path, "oof_extra")])
        where = {**index, **{n: len(gallery) + i for i, n in enumerate(extra_names)}}
        query = both.take(np.asarray([where[n] for n in val_names], dtype=np.int64))
        base = None if other is None else _aligned(other / "oof.npz", val_names, known)
        for member, counts in local_counts(query, gallery, cfg, exclude_self=True, base=base, device=device,
                                            matcher=matcher, desc=f"{name} oof", shards=shards,
                                            pair_cache=pair_cache(keys_of(val_names, catalog.train_path))).items():
            if not shards.main:
                continue
            calibs[member], files = write_calibrated_oof(Path(work_dir) / "scores" / member, counts, val_names, known,
                                                         [truth[n] for n in val_names], labels, "sqrt(matches)")
            written += files
    elif shards.main:
        for member in (name, f"{name}_mnn"):  # the mutual-NN member of a LightGlue run too
            if member == name or (Path(work_dir) / "scores" / member).is_dir():
                drop_stale_oof(Path(work_dir) / "scores" / member, member, log)
    if catalog.test_images:
        test = features(catalog.test_images, catalog.test_path, "test")
        base = None if other is None else _aligned(other / "test.npz", catalog.test_images, known)
        for member, counts in local_counts(test, gallery, cfg, exclude_self=False, base=base, device=device,
                                            matcher=matcher, desc=f"{name} test", shards=shards,
                                            pair_cache=pair_cache(keys_of(catalog.test_images, catalog.test_path))
                                            ).items():
            if not shards.main:
                continue
            matrix = ScoreMatrix(to_probability(counts, calibs.get(member)),
                                 np.asarray(catalog.test_images, dtype=str), np.asarray(known, dtype=str))
            written.insert(0, save_matrix(Path(work_dir) / "scores" / member / "test.npz", matrix))
    if shards.main:  # how the review page finds and matches these features again
        written.append(write_text(json.dumps({"local": cfg, "features": str(feat_dir.resolve())}, indent=2) + "\n",
                                  out_dir / SETTINGS))
    shards.barrier()  # the next member may shortlist by these matrices
    return written


def local_settings(runs: Sequence, switch: str = "auto", overrides: dict | None = None) -> dict | None:
    """The completed ``local:`` section to score with: that of the first run whose config enables it, else (with
    ``switch`` on) the first run's or the defaults, enabled; ``overrides`` (``--set local.*``) on top. None when
    ``switch`` is off, or auto and no run enables it."""
    if switch not in ("auto", "on", "off"):
        raise ValueError(f"switch must be auto, on or off, not {switch!r}")
    if switch == "off":
        return None
    owner = _owner(runs)
    chosen = None if owner is None else owner.config["local"]
    if (chosen is None or not chosen["enabled"]) and switch == "auto":
        return None
    return check(deep_merge(dict(chosen or {}, enabled=True), dict(overrides or {})), Local, path="local")


def _owner(runs: Sequence):
    """The run whose config gives the local members: the first that enables ``local:``, else the first run."""
    return next((run for run in runs if run.config["local"]["enabled"]), runs[0] if runs else None)


def _enabled(first: dict, more: Sequence[dict]) -> list[dict]:
    """``first`` (an enabled ``local:`` section), then the enabled sections of ``more`` (``more_local:``)."""
    return [first] + [sec for sec in more if sec["enabled"]]


def local_members(runs: Sequence, switch: str = "auto", overrides: dict | None = None,
                  more: Sequence[dict] | None = None) -> list[dict]:
    """Every local member to score, in order: :func:`local_settings`, then the enabled ``more_local:`` sections of
    the same config (``more``: those of the command line's config when no run gives any). Names must be distinct;
    a member's ``shortlist.by`` may name an earlier member (its matrix is written first)."""
    first = local_settings(runs, switch, overrides)
    if first is None:
        return []
    owner = _owner(runs)
    extra = owner.config.get("more_local", []) if owner is not None else []
    members = _enabled(first, [check(sec, Local, path=f"more_local[{i}]") for i, sec in enumerate(extra or more or [])])
    names = [m["name"] for m in members]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise InputError(None, f"local members: the name {twice!r} is used twice (local.name, more_local[].name)")
    return members


def local_scores_done(cfg: dict, work_dir: Path) -> bool:
    """True unless ``cfg`` (a completed config) enables local matching and a member's ``test.npz`` is missing (the
    reuse test of the chain's score step)."""
    if not cfg["local"]["enabled"]:
        return True
    return all((Path(work_dir) / "scores" / sec["name"] / "test.npz").is_file()
               for sec in _enabled(cfg["local"], cfg.get("more_local", [])))
