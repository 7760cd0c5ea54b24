"""Calibrated fusion (WildFusion's): isotonic maps are monotone and fitted out of fold, and the mean of
calibrated members is not ruled by the member with the widest raw scale."""

from __future__ import annotations

import numpy as np
import pytest

from matching.matrix import ScoreMatrix, save_matrix
from matching.ranking.ensemble import calibrate_members, run_ensemble
from matching.similarity.calibration import fit_isotonic


def test_isotonic_calibration_is_monotone_and_follows_the_positive_rate():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(2.0, 1.0, 500), rng.normal(0.0, 1.0, 20_000)]
    y = np.r_[np.ones(500, bool), np.zeros(20_000, bool)]
    iso = fit_isotonic(x, y)
    grid = np.linspace(-4, 6, 200)
    p = iso(grid)
    assert (np.diff(p) >= 0).all() and p.min() >= 0 and p.max() <= 1
    assert p[grid < -1].max() < 0.1 and p[grid > 4].min() > 0.9  # balanced: high scores are near certain
    counts = np.r_[np.zeros(5000), np.full(100, 12.0)]
    assert fit_isotonic(counts, np.r_[np.zeros(5000, bool), np.ones(100, bool)])(np.array([0.0, 12.0])).tolist() \
        == pytest.approx([0.0, 1.0])


def _members(rng, n_query=40, whales=10, per=3):
    gallery = [f"g{w}_{k}.jpg" for w in range(whales) for k in range(per)]
    labels = {g: g.split("_")[0] for g in gallery}
    query = [f"q{i}.jpg" for i in range(n_query)]
    truth = {q: f"g{i % whales}" for i, q in enumerate(query)}
    labels.update(truth)
    g_id = np.array([labels[g] for g in gallery])
    same = np.array([[truth[q] == w for w in g_id] for q in query])
    good = np.where(same, rng.uniform(0.05, 0.1, same.shape), rng.uniform(0.0, 0.07, same.shape))  # narrow scale
    noisy = rng.uniform(0.0, 1.0, same.shape) + 0.1 * same  # wide scale, little signal
    make = lambda s: ScoreMatrix(s.astype(np.float32), np.array(query), np.array(gallery))  # noqa: E731
    return make(good), make(noisy), labels


def test_the_out_of_fold_map_of_a_row_is_fitted_without_that_row():
    rng = np.random.default_rng(1)
    good, _, labels = _members(rng)
    _, (before,) = calibrate_members([good], [good], labels)
    flipped = dict(labels, **{"q1.jpg": "g5"})  # an odd row's truth changes: only the even rows' map may change
    _, (after,) = calibrate_members([good], [good], flipped)
    np.testing.assert_array_equal(after.scores[1::2], before.scores[1::2])
    assert not np.array_equal(after.scores[0::2], before.scores[0::2])


def test_mean_calibrated_fusion_is_not_ruled_by_the_widest_raw_scale(tmp_path):
    rng = np.random.default_rng(2)
    good, noisy, labels = _members(rng)
    for name, m in (("good", good), ("noisy", noisy)):
        save_matrix(tmp_path / name / "test.npz", m)
        save_matrix(tmp_path / name / "oof.npz", m)
    weights = {"good": 1.0, "noisy": 1.0}
    plain = run_ensemble(tmp_path, ["good", "noisy"], weights, labels, new_whale_share=0.0)
    fused = run_ensemble(tmp_path, ["good", "noisy"], weights, labels, fusion="mean_calibrated", new_whale_share=0.0)
    assert fused.oof_map5 > plain.oof_map5 + 0.2
    assert any("calibrated" in note for note in fused.notes)
