"""Cosine matrices, whale centres, nearest-neighbour search and the logistic calibration on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from data.errors import InputError
from matching.matrix import own_columns
from matching.similarity import cosine as embed_scores
from matching.similarity.calibration import fit_logistic, same_whale
from matching.similarity.cosine import (
    FLOOR,
    centre_matrix,
    cosine_matrix,
    knn_cosine,
    meta_embedding,
    similarity,
)


def test_cosine_matrix_is_symmetric_scale_free_and_blockwise_exact():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    full = cosine_matrix(x, x)
    np.testing.assert_allclose(full, full.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(full), 1.0, atol=1e-6)
    np.testing.assert_allclose(cosine_matrix(3 * x, x), full, atol=1e-6)
    tiny_blocks = cosine_matrix(x, x, budget_mb=1e-5)  # one row per block
    np.testing.assert_allclose(tiny_blocks, full, atol=1e-6)


def test_centre_scores_give_each_photo_column_its_whale_centre():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    labels = ["a", "a", "b"]
    query = np.array([[1.0, 1.0]], dtype=np.float32)
    m = centre_matrix(query, gallery, labels)
    # centre of a: (1,1)/sqrt2, the query's own direction; centre of b: (-1, 0)
    np.testing.assert_allclose(m, [[1.0, 1.0, -np.sqrt(0.5)]], atol=1e-6)
    both = similarity(query, gallery, labels, scoring="both")
    np.testing.assert_allclose(both, 0.5 * (cosine_matrix(query, gallery) + m), atol=1e-6)
    with pytest.raises(InputError, match="scoring"):
        similarity(query, gallery, labels, scoring="mean")


def test_an_out_of_fold_query_is_left_out_of_its_own_whales_centre():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    labels = ["a", "a", "b"]
    own = own_columns(["p0", "q", "p2"], ["p0", "p1", "p2"])
    np.testing.assert_array_equal(own, [0, -1, 2])
    m = centre_matrix(gallery[[0, 2]], gallery, labels, own=own[[0, 2]])
    # p0 against whale a: a's centre without p0 is p1 itself (cosine 0), not (1, 1)/sqrt2 (0.707 with p0 in it)
    np.testing.assert_allclose(m[0], [0.0, 0.0, -1.0], atol=1e-6)
    # p2 is whale b's only photo: b's columns score 0 for it; a's centre is untouched by it
    np.testing.assert_allclose(m[1], [-np.sqrt(0.5), -np.sqrt(0.5), 0.0], atol=1e-6)
    leaky = centre_matrix(gallery[[0]], gallery, labels)
    assert leaky[0, 0] > m[0, 0] + 0.5
    both = similarity(gallery[[0]], gallery, labels, scoring="both", own=own[[0]])
    np.testing.assert_allclose(both, 0.5 * (cosine_matrix(gallery[[0]], gallery) + m[[0]]), atol=1e-6)


@pytest.mark.parametrize("use_faiss", [True, False])
def test_knn_keeps_the_k_best_cosines_and_floors_the_rest(use_faiss, monkeypatch):
    if not use_faiss:
        monkeypatch.setattr(embed_scores, "faiss", None)
    elif embed_scores.faiss is None:
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(4, 8)), rng.normal(size=(20, 8))
    full = cosine_matrix(q, g)
    knn = knn_cosine(q, g, 3)
    for i in range(4):
        top = np.argsort(-full[i])[:3]
        np.testing.assert_allclose(knn[i, top], full[i, top], atol=1e-5)
        rest = np.setdiff1d(np.arange(20), top)
        assert (knn[i, rest] == FLOOR).all()


def test_meta_embedding_cosine_is_the_mean_of_the_models_cosines():
    rng = np.random.default_rng(2)
    a1, a2 = rng.normal(size=(5, 4)), rng.normal(size=(5, 6))
    b1, b2 = rng.normal(size=(3, 4)), rng.normal(size=(3, 6))
    meta = cosine_matrix(meta_embedding([a1, a2]), meta_embedding([b1, b2]))
    np.testing.assert_allclose(meta, 0.5 * (cosine_matrix(a1, b1) + cosine_matrix(a2, b2)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(meta_embedding([a1, a2]), axis=1), 1.0, atol=1e-6)


def test_logistic_fit_recovers_a_known_map_and_is_increasing():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=200_000)
    p_true = 1 / (1 + np.exp(-(8 * x - 2)))
    y = rng.uniform(size=x.size) < p_true
    calib = fit_logistic(x, y)
    # balanced weights shift the intercept by log(n_neg / n_pos); the slope is the data's
    shift = np.log((~y).sum() / y.sum())
    assert calib.a == pytest.approx(8, rel=0.05)
    assert calib.b == pytest.approx(-2 + shift, abs=0.1)
    grid = np.linspace(-1, 1, 101)
    assert (np.diff(calib(grid)) > 0).all()
    assert calib(np.array([-1.0]))[0] < 0.01 and calib(np.array([1.0]))[0] > 0.99


def test_logistic_fit_needs_both_kinds_of_pair_and_stays_increasing_for_a_bad_model():
    with pytest.raises(InputError, match="matching and non-matching"):
        fit_logistic(np.array([0.1, 0.2]), np.array([False, False]))
    x = np.linspace(-1, 1, 1000)
    calib = fit_logistic(x, x < 0)  # higher cosine, fewer matches: a model worse than chance
    assert calib.a > 0 and (np.diff(calib(np.linspace(-1, 1, 11))) > 0).all()


def test_same_whale_never_matches_new_whale():
    m = same_whale(["a", "new_whale", "b"], ["a", "new_whale", "c"])
    assert m.tolist() == [[True, False, False], [False, False, False], [False, False, False]]


def test_simplex_grid_covers_every_weighting_summing_to_one():
    from matching.ranking.blend_weights import simplex_grid

    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66 and all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.0, 0.0, 1.0) in grid


def test_tuned_weights_favour_the_informative_model_and_never_blend_below_the_best_alone():
    from matching.matrix import ScoreMatrix
    from matching.ranking.blend_weights import tune_weights
    from matching.ranking.rank import tune_threshold

    rng = np.random.default_rng(4)
    gallery_labels = [f"w{i % 10}" for i in range(40)]
    truth = [f"w{i % 10}" for i in range(30)]
    good = rng.uniform(0, 0.5, size=(30, 40)).astype(np.float32)
    for q in range(30):
        good[q, [j for j in range(40) if gallery_labels[j] == truth[q]][q % 4]] += 0.5 * rng.uniform(0.5, 1)
    noise = rng.uniform(0, 1, size=(30, 40)).astype(np.float32)
    names_q, names_g = np.array([f"q{i}" for i in range(30)]), np.array([f"g{j}" for j in range(40)])
    mats = [ScoreMatrix(noise, names_q, names_g), ScoreMatrix(good, names_q, names_g)]
    weights, value = tune_weights(mats, gallery_labels, truth)
    assert weights[1] > weights[0] and abs(sum(weights) - 1) < 1e-9
    alone = max(tune_threshold(m.scores, gallery_labels, truth)[1] for m in mats)
    assert value >= alone


def test_run_ensemble_uses_tuned_weights_when_asked(tmp_path):
    from matching.matrix import ScoreMatrix, save_matrix
    from matching.ranking.ensemble import run_ensemble

    rng = np.random.default_rng(5)
    gallery = np.array([f"g{j}" for j in range(12)])
    whales = [f"w{j % 4}" for j in range(12)]
    oof_q, test_q = np.array([f"o{i}" for i in range(8)]), np.array([f"t{i}" for i in range(5)])
    labels = dict(zip(gallery, whales)) | {q: f"w{i % 4}" for i, q in enumerate(oof_q)}
    good = rng.uniform(0, 0.4, size=(8, 12)).astype(np.float32)
    for i in range(8):
        good[i, i % 4] = 0.9  # column i % 4 shows whale w{i % 4}
    for name, oof in (("good", good), ("noise", rng.uniform(0, 1, size=(8, 12)).astype(np.float32))):
        save_matrix(tmp_path / name / "oof.npz", ScoreMatrix(oof, oof_q, gallery))
        save_matrix(tmp_path / name / "test.npz", ScoreMatrix(rng.uniform(size=(5, 12)).astype(np.float32),
                                                              test_q, gallery))
    result = run_ensemble(tmp_path, ["good", "noise"], {"good": 0.5, "noise": 0.5}, labels, tune=True)
    weights = {m.name: m.weight for m in result.models}
    assert weights["good"] > weights["noise"] and sum(weights.values()) == pytest.approx(1.0)
    assert any("tuned" in n for n in result.notes)
    assert result.oof_map5 == pytest.approx(1.0)
