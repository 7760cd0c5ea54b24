import numpy as np
import pytest

from matching.ranking.postprocess import ColumnPass, apply_column_pass, column_pass_effect, column_votes
from matching.ranking.rank import rank_queries

# Catalog: two images of A, one of B, one of C, one of D, one new_whale.
GALLERY = ["A", "A", "B", "C", "D", "new_whale"]


def scores_for(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_column_votes_give_each_query_the_whale_of_the_strongest_catalog_image_choosing_it():
    scores = scores_for([
        [0.9, 0.2, 0.7, 0.1, 0.0, 0.99],  # A's first image and B choose query 0; A is stronger
        [0.1, 0.8, 0.6, 0.3, 0.2, 0.00],  # A's second image chooses query 1
        [0.0, 0.1, 0.1, 0.4, 0.3, 0.00],  # C (0.4) and D (0.3) choose query 2, both below 0.46
    ])
    vote, score = column_votes(scores, GALLERY, min_score=0.46)
    assert list(vote) == ["A", "A", ""]
    np.testing.assert_allclose(score[:2], [0.9, 0.8])


def test_whale_at_rank_two_voted_by_the_catalog_is_swapped_to_rank_one():
    # Query 0 ranks A first (two moderate images sum higher) but B's only image picks query 0.
    scores = scores_for([
        [0.50, 0.50, 0.70, 0.1, 0.1, 0.0],
        [0.95, 0.90, 0.10, 0.1, 0.1, 0.0],
    ])
    ranked = rank_queries(scores, GALLERY, 0.45, mode="sum")
    assert ranked[0][:2] == ["A", "B"]
    out, swapped = apply_column_pass(ranked, scores, GALLERY)
    assert out[0][:2] == ["B", "A"] and out[0][2:] == ranked[0][2:]
    assert out[1] == ranked[1]
    assert list(swapped) == [True, False]


def test_no_swap_when_the_vote_is_weak_or_not_for_rank_two():
    ranked = [["A", "B", "new_whale", "C", "D"], ["A", "C", "B", "new_whale", "D"]]
    weak = scores_for([[0.5, 0.5, 0.40, 0.1, 0.1, 0.0], [0.9, 0.9, 0.1, 0.1, 0.1, 0.0]])
    out, swapped = apply_column_pass(ranked, weak, GALLERY)
    assert out == ranked and not swapped.any()
    rank3 = scores_for([[0.9, 0.9, 0.1, 0.1, 0.1, 0.0], [0.5, 0.5, 0.70, 0.6, 0.1, 0.0]])
    out, swapped = apply_column_pass(ranked, rank3, GALLERY)  # B votes for query 1, where B is rank 3
    assert out == ranked and not swapped.any()


def test_disabled_pass_returns_the_ranking_unchanged():
    scores = scores_for([[0.50, 0.50, 0.70, 0.1, 0.1, 0.0], [0.95, 0.90, 0.10, 0.1, 0.1, 0.0]])
    ranked = [["A", "B", "new_whale", "C", "D"], ["A", "new_whale", "B", "C", "D"]]
    out, swapped = apply_column_pass(ranked, scores, GALLERY, ColumnPass(enabled=False))
    assert out == ranked and not swapped.any()


def test_new_whale_at_rank_one_is_swapped_only_when_the_whale_is_nobody_elses_rank_one():
    scores = scores_for([[0.1, 0.1, 0.60, 0.1, 0.1, 0.0], [0.2, 0.2, 0.50, 0.9, 0.1, 0.0]])
    ranked = [["new_whale", "B", "A", "C", "D"], ["C", "A", "B", "new_whale", "D"]]
    out, swapped = apply_column_pass(ranked, scores, GALLERY)
    assert out[0][:2] == ["B", "new_whale"] and list(swapped) == [True, False]
    ranked_b_first = [["new_whale", "B", "A", "C", "D"], ["B", "A", "C", "new_whale", "D"]]
    out, swapped = apply_column_pass(ranked_b_first, scores, GALLERY)
    assert out == ranked_b_first and not swapped.any()


@pytest.mark.parametrize(("vote_score", "expect_swap"), [(0.5, False), (0.7, True)])
def test_whale_crowding_rank_two_needs_a_strong_vote_to_displace_new_whale(vote_score, expect_swap):
    scores = np.full((4, 6), 0.05, dtype=np.float32)
    scores[0, 2] = vote_score  # B's only image votes for query 0
    ranked = [["new_whale", "B", "A", "C", "D"]] + [["A", "B", "new_whale", "C", "D"]] * 2 + [
        ["C", "A", "new_whale", "B", "D"]]
    out, swapped = apply_column_pass(ranked, scores, GALLERY)  # B is rank 2 of three queries
    assert swapped[0] == expect_swap
    relaxed = ColumnPass(crowd_rank2=None)
    assert apply_column_pass(ranked, scores, GALLERY, relaxed)[1][0]


def test_margin_guard_keeps_a_clearly_better_rank_one():
    # A's images both prefer query 1; on query 0 A's best (0.75) leads B's (0.6) by 0.15.
    scores = scores_for([[0.75, 0.1, 0.60, 0.1, 0.1, 0.0], [0.8, 0.99, 0.1, 0.1, 0.1, 0.0]])
    ranked = [["A", "B", "new_whale", "C", "D"], ["A", "new_whale", "B", "C", "D"]]
    assert apply_column_pass(ranked, scores, GALLERY)[1][0]
    assert not apply_column_pass(ranked, scores, GALLERY, ColumnPass(margin=0.1))[1][0]
    assert apply_column_pass(ranked, scores, GALLERY, ColumnPass(margin=0.2))[1][0]


def test_effect_reports_map_before_and_after_and_the_swaps_that_helped_or_hurt():
    scores = scores_for([[0.50, 0.50, 0.70, 0.1, 0.1, 0.0], [0.1, 0.1, 0.1, 0.8, 0.1, 0.0]])
    ranked = [["A", "B", "new_whale", "C", "D"], ["A", "C", "new_whale", "B", "D"]]
    effect = column_pass_effect(ranked, scores, GALLERY, ["B", "A"])
    assert effect.swapped == 2 and effect.helped == 1 and effect.hurt == 1
    assert effect.map_before == pytest.approx((0.5 + 1.0) / 2)
    assert effect.map_after == pytest.approx((1.0 + 0.5) / 2)
