"""The keypoint matcher as a model of the blend: ``scores/keypoints/{test,oof}.npz`` from homography inlier counts.

It is not trained, so there are no folds: one test x catalog matrix and one out-of-fold matrix whose rows are the
validation images of the folds (each scored against the whole catalog but itself). Inlier counts n become
probabilities by a logistic on sqrt(n) fitted on the out-of-fold matrix (``calibration.csv``), as the embedding
family's cosines are, so that the blend weighs comparable numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.catalog import NEW_WHALE
from data.distributed import SINGLE, Shards, stack_npz_rows
from data.io import load_npz, save_npz, write_csv
from matching.matrix import ScoreMatrix, mask_self, save_matrix, self_pairs
from matching.similarity.calibration import Logistic, fit_logistic, same_whale
from matching.similarity.keypoints import Keypoints, KeypointSettings, cached_keypoints, inlier_matrix

MODEL = "keypoints"
FALLBACK_HALF = 10.0  # without an out-of-fold matrix: p = n / (n + FALLBACK_HALF)


def _join(parts: Sequence[Keypoints], names: Sequence[str]) -> Keypoints:
    """Images of several sets, in the order of ``names``."""
    found = {}
    for kp in parts:
        for i, n in enumerate(kp.names):
            found[str(n)] = kp.image(i)
    return Keypoints.from_lists(names, [found[n] for n in names])


def calibrate(oof_inliers: np.ndarray, query_labels: Sequence[str], gallery_labels: Sequence[str],
              keep: np.ndarray) -> Logistic:
    """Logistic of same-whale on sqrt(inliers) over the kept out-of-fold pairs."""
    positive = same_whale(query_labels, gallery_labels)
    return fit_logistic(np.sqrt(oof_inliers[keep]), positive[keep])


def to_probability(inliers: np.ndarray, calib: Logistic | None) -> np.ndarray:
    if calib is None:
        return (inliers / (inliers + FALLBACK_HALF)).astype(np.float32)
    return calib(np.sqrt(inliers))


def write_calibrated_oof(out_dir: Path, counts: np.ndarray, val_names: Sequence[str], known: Sequence[str],
                         query_labels: Sequence[str], gallery_labels: Sequence[str], on: str
                         ) -> tuple[Logistic, list[Path]]:
    """Calibrate an untrained member's out-of-fold counts (self pairs left out) and write its ``oof.npz`` and
    ``calibration.csv`` (``on``: what the logistic reads); returns the map and the files."""
    keep = ~self_pairs(val_names, known)
    calib = calibrate(counts, query_labels, gallery_labels, keep)
    oof = mask_self(ScoreMatrix(to_probability(counts, calib), np.asarray(val_names, dtype=str),
                                np.asarray(known, dtype=str)))
    table = pd.DataFrame([{"a": calib.a, "b": calib.b, "on": on, "pairs": int(keep.sum())}])
    return calib, [save_matrix(Path(out_dir) / "oof.npz", oof), write_csv(table, Path(out_dir) / "calibration.csv")]


def drop_stale_oof(out_dir: Path, what: str, log=print) -> None:
    """Without validation photos: remove an earlier run's out-of-fold files (not of these test scores), say so."""
    for stale in ("oof.npz", "calibration.csv"):
        (Path(out_dir) / stale).unlink(missing_ok=True)
    log(f"  note: no out-of-fold matrix to calibrate the {what} scores on; p = n / (n + {FALLBACK_HALF:g})")


def sharded_inliers(path: Path, query: Keypoints, gallery: Keypoints, s: KeypointSettings, *, exclude_self: bool,
                    shards: Shards = SINGLE, desc: str = "matching") -> np.ndarray:
    """:func:`matching.similarity.keypoints.inlier_matrix`, each process scoring its share of the query rows; the whole
    matrix is written to ``path`` (``inliers``, ``names``) and returned on every process."""
    rows = shards.rows(len(query))

    def write_part(part: Path) -> None:
        mine = query.take(rows)
        save_npz(part, inliers=inlier_matrix(mine, gallery, s, exclude_self=exclude_self, desc=desc),
                 names=mine.names, gallery=gallery.names)

    def join(parts: list[Path], out: Path) -> None:
        save_npz(out, **stack_npz_rows(parts, ("inliers", "names")))

    shards.assemble(path, write_part, join)
    return load_npz(path)["inliers"]


def score_keypoints(catalog, val_names: Sequence[str] | None, work_dir: Path, s: KeypointSettings, *,
                    max_megapixels: float = 60.0, shards: Shards = SINGLE, log=print,
                    features_dir: Path | None = None) -> list[Path]:
    """Write ``<work_dir>/scores/keypoints/oof.npz`` + ``calibration.csv`` (given validation images) and
    ``test.npz``; keypoints and raw inlier counts are kept under ``<features_dir>/keypoints/`` (default
    ``<work_dir>/features``). With several
    ``shards`` (torchrun) the processes share the photos and the query rows; rank 0 writes the score files."""
    feat_dir = Path(features_dir or Path(work_dir) / "features") / MODEL
    out_dir = Path(work_dir) / "scores" / MODEL
    known_df = catalog.train[catalog.train["Id"] != NEW_WHALE]
    known, labels = known_df["Image"].tolist(), known_df["Id"].tolist()
    truth = dict(zip(catalog.train["Image"], catalog.train["Id"]))
    gallery_names = np.asarray(known, dtype=str)

    def keypoints_of(names, path_of, part):
        return cached_keypoints(feat_dir / f"{part}.npz", [path_of(n) for n in names],
                                [catalog.box(n) for n in names], names, s, shards=shards,
                                max_megapixels=max_megapixels, desc=f"keypoints {part}")

    gallery = keypoints_of(known, catalog.train_path, "catalog")
    calib = None
    written = []
    if val_names:
        val_names = [str(n) for n in val_names]
        in_gallery = set(gallery.names.tolist())
        missing = [n for n in val_names if n not in in_gallery]  # new_whale photos: the rest are in the catalog
        query = _join([gallery, keypoints_of(missing, catalog.train_path, "oof_extra")], val_names)
        inliers = sharded_inliers(feat_dir / "inliers_oof.npz", query, gallery, s, exclude_self=True,
                                  shards=shards, desc="keypoints oof")
        if shards.main:
            calib, files = write_calibrated_oof(out_dir, inliers, val_names, known, [truth[n] for n in val_names],
                                                labels, "sqrt(inliers)")
            written += files
    elif shards.main:
        drop_stale_oof(out_dir, "keypoint", log)
    if catalog.test_images:
        test = keypoints_of(catalog.test_images, catalog.test_path, "test")
        inliers = sharded_inliers(feat_dir / "inliers_test.npz", test, gallery, s, exclude_self=False,
                                  shards=shards, desc="keypoints test")
        if shards.main:
            matrix = ScoreMatrix(to_probability(inliers, calib), np.asarray(catalog.test_images, dtype=str),
                                 gallery_names)
            written.insert(0, save_matrix(out_dir / "test.npz", matrix))  # last: keypoint_scores_done looks for it
    shards.barrier()
    return written


def keypoint_settings(runs: Sequence, switch: str = "auto") -> KeypointSettings | None:
    """The settings of the first run whose config enables keypoint matching (``switch`` auto), of the first run
    with a ``keypoints`` section or the defaults (on), or None (off, or auto with no run enabling it)."""
    if switch not in ("auto", "on", "off"):
        raise ValueError(f"switch must be auto, on or off, not {switch!r}")
    if switch == "off":
        return None
    sections = [(run, run.config.get(MODEL)) for run in runs if run.config.get(MODEL) is not None]
    for run, section in sections:
        s = KeypointSettings.from_config(section, str(run.run_dir / "config.yaml"))
        if s.enabled or switch == "on":
            return s
    return KeypointSettings() if switch == "on" else None


def validation_images(folds: pd.DataFrame | None, runs: Sequence) -> list[str] | None:
    """The out-of-fold queries: validation images of the runs' folds (of every fold when there are no runs)."""
    if folds is None:
        return None
    wanted = {run.fold for run in runs}
    rows = folds["fold"].isin(wanted) if wanted else folds["fold"] >= 0
    return folds.loc[rows, "Image"].tolist() or None


def keypoint_scores_done(cfg: dict, work_dir: Path) -> bool:
    """True unless ``cfg`` (a completed config) enables keypoint matching and
    ``<work_dir>/scores/keypoints/test.npz`` is missing (the reuse test of the chain's score step)."""
    enabled = cfg[MODEL]["enabled"]
    return not enabled or (Path(work_dir) / "scores" / MODEL / "test.npz").is_file()
