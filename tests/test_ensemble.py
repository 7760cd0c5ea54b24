"""Blending several models' matrices, the threshold from out-of-fold rows, and the submission ranking."""

from __future__ import annotations

import numpy as np
import pytest

from data.errors import InputError
from matching.matrix import ScoreMatrix, load_matrix, save_matrix
from matching.ranking.ensemble import choose_weights, find_models, map5_against, run_ensemble, save_blends

GALLERY = np.array(["g0.jpg", "g1.jpg", "g2.jpg", "g3.jpg", "g4.jpg", "g5.jpg"])
WHALES = ["w_a", "w_a", "w_b", "w_c", "w_d", "w_e"]
LABELS = dict(zip(GALLERY, WHALES))


def matrix(rows: dict[str, int | None], rng, strong: float) -> ScoreMatrix:
    """Queries scoring ``strong`` on the columns of their whale (None: a new whale, all low) plus noise."""
    scores = rng.uniform(0.0, 0.3, (len(rows), len(GALLERY))).astype(np.float32)
    for i, col in enumerate(rows.values()):
        if col is not None:
            scores[i, [j for j, w in enumerate(WHALES) if w == WHALES[col]]] = strong
    return ScoreMatrix(scores, np.array(list(rows)), GALLERY)


@pytest.fixture
def scores_dir(tmp_path):
    rng = np.random.default_rng(0)
    oof_rows = {f"v{i}.jpg": (None if i % 3 == 0 else i % 6) for i in range(12)}
    test_rows = {f"t{i}.jpg": (None if i % 4 == 0 else i % 6) for i in range(8)}
    for model, strong in (("good", 0.9), ("weak", 0.35)):
        save_matrix(tmp_path / model / "oof.npz", matrix(oof_rows, rng, strong))
        save_matrix(tmp_path / model / "test.npz", matrix(test_rows, rng, strong))
    labels = dict(LABELS)
    labels.update({q: ("new_whale" if c is None else WHALES[c]) for q, c in oof_rows.items()})
    truth = {q: ("new_whale" if c is None else WHALES[c]) for q, c in test_rows.items()}
    return tmp_path, labels, truth


def test_weights_of_configured_models_are_renormalised_and_unknown_ones_fall_back_to_equal():
    weights, note = choose_weights(["a", "b"], {"a": 0.3, "b": 0.1, "c": 0.6})
    assert weights == pytest.approx({"a": 0.75, "b": 0.25}) and "c" in note
    weights, note = choose_weights(["x", "y"], {"a": 1.0})
    assert weights == {"x": 0.5, "y": 0.5} and "equal weights" in note


def test_blend_is_tuned_on_out_of_fold_rows_and_ranks_the_test_queries(scores_dir):
    path, labels, truth = scores_dir
    assert find_models(path) == ["good", "weak"]
    result = run_ensemble(path, ["good", "weak"], {"good": 0.7, "weak": 0.3}, labels)
    by_name = {m.name: m for m in result.models}
    assert by_name["good"].oof_map5 == pytest.approx(1.0)
    assert result.oof_map5 == pytest.approx(1.0)
    assert map5_against(result, truth, "truth.csv") == pytest.approx(1.0)
    assert all(len(r) == 5 == len(set(r)) for r in result.ranked)
    assert [r[0] for r in result.ranked] == [truth[q] for q in result.test.query]
    written = save_blends(result, path.parent / "ensemble")
    back = load_matrix(written[0])
    np.testing.assert_array_equal(back.scores, result.test.scores)
    assert list(back.query) == list(result.test.query) and len(written) == 2
    assert find_models(path) == ["good", "weak"]  # the blends are not taken for a model


def test_without_out_of_fold_rows_the_threshold_follows_the_new_whale_share(scores_dir):
    path, labels, truth = scores_dir
    for model in ("good", "weak"):
        (path / model / "oof.npz").unlink()
    result = run_ensemble(path, ["good"], {"good": 1.0}, labels, new_whale_share=0.25)
    assert result.oof_map5 is None and any("25.0% new_whale" in n for n in result.notes)
    assert sum(r[0] == "new_whale" for r in result.ranked) == 2


def test_auto_post_processing_is_dropped_where_it_does_not_raise_oof_map(scores_dir):
    path, labels, _ = scores_dir
    result = run_ensemble(path, ["good"], {"good": 1.0}, labels, post_auto=True)
    assert not result.post_applied and result.swapped == 0


def test_test_truth_must_cover_every_query(scores_dir):
    path, labels, truth = scores_dir
    result = run_ensemble(path, ["good"], {"good": 1.0}, labels)
    truth.pop("t1.jpg")
    with pytest.raises(InputError, match="no truth"):
        map5_against(result, truth, "truth.csv")


def test_out_of_fold_truth_without_new_whale_holds_individuals_out_whole(scores_dir):
    path, labels, truth = scores_dir
    known_only = {q: w for q, w in labels.items() if w != "new_whale"}
    for model in ("good", "weak"):
        oof = load_matrix(path / model / "oof.npz")
        keep = np.array([q in known_only for q in oof.query])
        save_matrix(path / model / "oof.npz", ScoreMatrix(oof.scores[keep], oof.query[keep], oof.gallery))
    result = run_ensemble(path, ["good"], {"good": 1.0}, known_only, new_whale_share=0.25)
    assert result.oof_map5 == pytest.approx(1.0)  # tuned alone, the threshold would never put new_whale first
    assert any("holds no new_whale" in n and "held out whole" in n for n in result.notes)
    # the held-out individuals' queries showed where unknown animals score: the test's new_whale photos are found
    assert map5_against(result, truth, "truth.csv") == pytest.approx(1.0)


def test_holdout_threshold_separates_known_from_held_out_individuals():
    from matching.ranking.rank import holdout_threshold

    rng = np.random.default_rng(0)
    gallery = np.repeat([f"w{k}" for k in range(20)], 2)
    truth = np.repeat([f"w{k}" for k in range(20)], 3)
    scores = rng.uniform(0.0, 0.3, (len(truth), len(gallery)))
    scores[truth[:, None] == gallery[None, :]] = rng.uniform(0.7, 1.0, (len(truth), 2)).ravel()
    threshold, map5, held = holdout_threshold(scores, gallery, truth, share=0.3)
    assert 0.3 <= threshold <= 0.7 and map5 == pytest.approx(1.0)
    assert held == 6  # 3 queries each: 6 individuals make 30% of the 60 rows
