"""Blend the score matrices of several models, tune ``new_whale`` on out-of-fold rows, rank and post-process;
the summary ``scripts/final_ensemble.py`` prints and writes to ``ensemble/summary.json`` (read by run_chain.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data.catalog import NEW_WHALE
from data.errors import InputError
from matching.matrix import ScoreMatrix, align, blend, load_matrix, mask_self, save_matrix, self_pairs
from matching.metrics import map_at_5
from matching.ranking.blend_weights import MAX_MODELS, tune_weights
from matching.ranking.postprocess import ColumnPass, apply_column_pass, column_pass_effect
from matching.ranking.rank import (
    DEFAULT_NEW_WHALE_SHARE,
    holdout_threshold,
    rank_queries,
    threshold_for_new_whale_share,
    tune_threshold,
)
from matching.similarity.calibration import fit_isotonic, fit_logistic, same_whale


@dataclass
class ModelScore:
    name: str
    weight: float
    oof_map5: float | None
    threshold: float | None


@dataclass
class EnsembleResult:
    models: list[ModelScore]
    threshold: float
    oof_map5: float | None
    oof_map5_post: float | None
    test: ScoreMatrix
    ranked: list[list[str]]
    swapped: int
    notes: list[str] = field(default_factory=list)
    post_applied: bool = True
    oof: ScoreMatrix | None = None


def choose_weights(available: Sequence[str], weights: Mapping[str, float] | None) -> tuple[dict[str, float], str]:
    """Weights of the configured models that have matrices, renormalised; equal weights when none is configured."""
    weights = dict(weights or {})
    chosen = {m: float(weights[m]) for m in available if m in weights and float(weights[m]) > 0}
    if chosen:
        note = "" if len(chosen) == len([w for w in weights.values() if w > 0]) else \
            f"configured models without matrices left out: {sorted(set(weights) - set(chosen))}"
    else:
        chosen = {m: 1.0 for m in available}
        note = "no configured model has matrices: equal weights over " + ", ".join(available)
    total = sum(chosen.values())
    return {m: w / total for m, w in chosen.items()}, note


def _labels_of(names, labels: Mapping[str, str], source: str | None, what: str) -> list[str]:
    missing = [n for n in names if n not in labels]
    if missing:
        raise InputError(source, f"{len(missing)} {what} images are not in train.csv (first: {missing[0]})")
    return [labels[n] for n in names]


def _truth_of(matrix: ScoreMatrix, labels: Mapping[str, str]) -> list[str]:
    return _labels_of(matrix.query, labels, matrix.source, "out-of-fold")


def calibrate_members(tests: list[ScoreMatrix], oofs: list[ScoreMatrix], labels: Mapping[str, str],
                      method: str = "isotonic") -> tuple[list[ScoreMatrix], list[ScoreMatrix]]:
    """Every member's scores mapped to same-whale probabilities (WildFusion's fusion input), fitted out of fold:
    a test matrix through the map fitted on all of its member's out-of-fold pairs, an out-of-fold matrix
    cross-fitted (the map of its even query rows applied to its odd rows and the other way round), so that
    out-of-fold MAP@5 never sees a map fitted on its own rows. Self pairs stay 0."""
    fit = fit_isotonic if method == "isotonic" else fit_logistic
    out_tests, out_oofs = [], []
    for test, oof in zip(tests, oofs):
        truth = same_whale(_truth_of(oof, labels), _labels_of(oof.gallery, labels, oof.source, "catalog"))
        keep = ~self_pairs(oof.query, oof.gallery)
        halves = np.arange(len(oof.query)) % 2
        mapped = np.zeros_like(oof.scores)
        for h in (0, 1):
            train = keep & (halves != h)[:, None]
            if not truth[train].any():
                train = keep  # too few rows to split: the whole out-of-fold matrix
            mapped[halves == h] = fit(oof.scores[train], truth[train])(oof.scores[halves == h])
        out_oofs.append(mask_self(ScoreMatrix(mapped, oof.query, oof.gallery, oof.source)))
        whole = fit(oof.scores[keep], truth[keep])
        out_tests.append(ScoreMatrix(whole(test.scores), test.query, test.gallery, test.source))
    return out_tests, out_oofs


def run_ensemble(scores_dir: Path, models: Sequence[str], weights: Mapping[str, float], labels: Mapping[str, str],
                 *, mode: str = "sum", post: ColumnPass | None = None, post_auto: bool = False,
                 new_whale_share: float | None = None, tune: bool = False, fusion: str = "weighted",
                 calibration: str = "isotonic") -> EnsembleResult:
    """Blend ``scores/<model>/{test,oof}.npz``; the threshold comes from the blended OOF matrix (else a share).

    With ``post_auto`` the column-wise pass is applied to the test ranking only where it raised the
    out-of-fold MAP@5. With ``tune`` the weights are chosen on the out-of-fold matrices
    (:func:`matching.ranking.blend_weights.tune_weights`) instead of taken from the config. With ``fusion:
    mean_calibrated`` every member is first mapped to probabilities out of fold (:func:`calibrate_members`,
    isotonic or logistic), then blended by the same weights."""
    post = post or ColumnPass()
    chosen, note = choose_weights(models, weights)
    notes = [note] if note else []
    tests = [load_matrix(scores_dir / m / "test.npz") for m in chosen]
    oof_paths = [scores_dir / m / "oof.npz" for m in chosen]
    oofs = [load_matrix(p) for p in oof_paths] if all(p.is_file() for p in oof_paths) else None
    if fusion == "mean_calibrated":
        if oofs is None:
            raise InputError(oof_paths[0].parent, "ensemble.fusion: mean_calibrated needs every member's oof.npz")
        tests, oofs = calibrate_members(tests, oofs, labels, calibration)
        notes.append(f"fusion: every member's scores calibrated ({calibration}, out of fold), then blended")
    if tune and oofs is not None and 1 < len(chosen) <= MAX_MODELS:
        tuned, _ = tune_weights([align(o, oofs[0]) for o in oofs],
                                _labels_of(oofs[0].gallery, labels, oofs[0].source, "catalog"),
                                _truth_of(oofs[0], labels), mode=mode)
        chosen = dict(zip(chosen, tuned))
        notes.append("weights tuned on the out-of-fold matrices: "
                     + ", ".join(f"{m} {w:.2f}" for m, w in chosen.items()))
    results = []
    for i, (name, weight) in enumerate(chosen.items()):
        thr = map5 = None
        if oofs is not None:
            oof = oofs[i]
            thr, map5 = tune_threshold(oof.scores, _labels_of(oof.gallery, labels, oof.source, "catalog"),
                                       _truth_of(oof, labels), mode=mode)
        results.append(ModelScore(name, weight, map5, thr))
    test = blend(tests, list(chosen.values()))
    whales = _labels_of(test.gallery, labels, tests[0].source, "catalog")
    oof_map5 = oof_post = oof = None
    if oofs is not None:
        oof = blend([align(o, oofs[0]) for o in oofs], list(chosen.values()))
        truth = _truth_of(oof, labels)
        oof_whales = _labels_of(oof.gallery, labels, oof_paths[0], "catalog")
        threshold, oof_map5 = tune_threshold(oof.scores, oof_whales, truth, mode=mode)
        ranked_oof = rank_queries(oof.scores, oof_whales, threshold, mode=mode)
        oof_post = column_pass_effect(ranked_oof, oof.scores, oof_whales, truth, post).map_after
        if post_auto and post.enabled and oof_post <= oof_map5:
            post = replace(post, enabled=False)
            notes.append("column pass left out of the submission: it did not raise the out-of-fold MAP@5")
        if NEW_WHALE not in truth:  # a catalog of known whales only: hold individuals out to play new_whale
            share = DEFAULT_NEW_WHALE_SHARE if new_whale_share is None else new_whale_share
            threshold, held_map5, held = holdout_threshold(oof.scores, oof_whales, truth, share=share, mode=mode)
            notes.append(f"the out-of-fold truth holds no new_whale: threshold tuned with {held} individuals held "
                         f"out whole (their queries {share:.1%} of the rows play new_whale; MAP@5 {held_map5:.4f})")
    else:
        threshold = _share_threshold(test, whales, new_whale_share, mode, notes, "no out-of-fold matrices")
    ranked = rank_queries(test.scores, whales, threshold, mode=mode)
    ranked, swapped = apply_column_pass(ranked, test.scores, whales, post)
    return EnsembleResult(results, float(threshold), oof_map5, oof_post, test, ranked, int(swapped.sum()), notes,
                          post.enabled, oof)


def _share_threshold(test: ScoreMatrix, whales: list[str], share: float | None, mode: str, notes: list[str],
                     why: str) -> float:
    share = DEFAULT_NEW_WHALE_SHARE if share is None else share
    notes.append(f"{why}: threshold set for {share:.1%} new_whale at rank 1 of the test queries")
    return threshold_for_new_whale_share(test.scores, whales, share, mode=mode)


def save_blends(result: EnsembleResult, out_dir: Path) -> list[Path]:
    """Write the blended ``test.npz`` (and ``oof.npz``) to ``out_dir`` (not under ``scores/``: not a model)."""
    written = [save_matrix(Path(out_dir) / "test.npz", result.test)]
    if result.oof is not None:
        written.append(save_matrix(Path(out_dir) / "oof.npz", result.oof))
    return written


def map5_against(result: EnsembleResult, truth: Mapping[str, str], source: str) -> float:
    """MAP@5 of the ranked test queries against a truth table (every query must be in it)."""
    missing = [q for q in result.test.query if q not in truth]
    if missing:
        raise InputError(source, f"{len(missing)} test images have no truth (first: {missing[0]})")
    return map_at_5([truth[q] for q in result.test.query], result.ranked)


def find_models(scores_dir: Path) -> list[str]:
    """Models under ``scores_dir`` with a fold-averaged ``test.npz``, sorted."""
    return sorted(p.parent.name for p in Path(scores_dir).glob("*/test.npz"))



def ensemble_from_config(scores_dir: Path, models: Sequence[str], cfg: Mapping, labels: Mapping[str, str]
                         ) -> EnsembleResult:
    """:func:`run_ensemble` with the settings of a completed ``ensemble:`` section (``postprocess.enabled:
    auto`` applies the column pass only where it raises the out-of-fold MAP@5)."""
    post_cfg = dict(cfg["postprocess"])
    auto = post_cfg["enabled"] == "auto"
    post = ColumnPass(**dict(post_cfg, enabled=bool(post_cfg["enabled"])))
    return run_ensemble(scores_dir, models, cfg["weights"], labels, mode=cfg["mode"], post=post, post_auto=auto,
                        new_whale_share=cfg["new_whale_share"], tune=cfg["tune_weights"], fusion=cfg["fusion"],
                        calibration=cfg["calibration"])


def ensemble_summary(result: EnsembleResult, test_map5: float | None = None, truth: str | None = None) -> dict:
    """What final_ensemble.py writes to ``ensemble/summary.json``: ``models`` (each ``name``, ``weight``,
    ``oof_map5`` and ``threshold``, null without out-of-fold matrices), the blend's ``oof_map5`` and
    ``oof_map5_post`` (with the column-wise pass), ``post_applied``, ``threshold``, ``swapped`` (test queries
    the column pass changed), ``queries``, ``test_map5`` and ``truth`` (null without truth.csv), ``notes``."""
    def num(value) -> float | None:
        return None if value is None else float(value)

    return {
        "models": [{"name": m.name, "weight": float(m.weight), "oof_map5": num(m.oof_map5),
                    "threshold": num(m.threshold)} for m in result.models],
        "oof_map5": num(result.oof_map5), "oof_map5_post": num(result.oof_map5_post),
        "post_applied": bool(result.post_applied), "threshold": float(result.threshold),
        "swapped": int(result.swapped), "queries": len(result.ranked), "test_map5": num(test_map5),
        "truth": None if test_map5 is None else truth, "notes": list(result.notes),
    }


def summary_lines(summary: Mapping | None, model: str | None = None) -> list[str]:
    """The result table of a summary as final_ensemble.py prints it: each model's weight and out-of-fold
    MAP@5 (only ``model``'s when given), the blend's with and without the column-wise pass, the threshold."""
    if not summary:
        return []
    lines = [] if model is not None else [f"{'model':<16}{'weight':>8}{'OOF MAP@5':>12}"]
    for m in summary["models"]:
        if model is None or m["name"] == model:
            oof = "-" if m["oof_map5"] is None else f"{m['oof_map5']:.4f}"
            lines.append(f"{m['name']:<16}{m['weight']:>8.2f}{oof:>12}")
    if summary["oof_map5"] is not None:
        lines.append(f"{'blend':<24}{summary['oof_map5']:>12.4f}")
        lines.append(f"{'blend + column pass':<24}{summary['oof_map5_post']:>12.4f}"
                     f"{'' if summary['post_applied'] else '  (not applied to the submission)'}")
    lines.append(f"threshold {summary['threshold']:.4f}; column pass swapped {summary['swapped']} test queries")
    return lines
