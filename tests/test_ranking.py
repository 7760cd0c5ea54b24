import numpy as np
import pytest

from matching.metrics import map_at_5
from matching.ranking.rank import rank_queries, threshold_for_new_whale_share, tune_threshold

# Gallery: whale A has three images, B one, C two, D one, E one, F one, plus one new_whale image.
LABELS = ["A", "B", "A", "C", "new_whale", "A", "C", "D", "E", "F"]


def test_sum_mode_orders_whales_by_sum_of_scores_above_threshold():
    # A: 0.5+0.5+0.5 above 0.4 -> 1.5; B: 0.9; C: 0.6 (0.1 is below) ; new_whale column ignored.
    scores = np.array([[0.5, 0.9, 0.5, 0.6, 0.99, 0.5, 0.1, 0.3, 0.2, 0.05]], dtype=np.float32)
    assert rank_queries(scores, LABELS, 0.4, mode="sum") == [["A", "B", "C", "new_whale", "D"]]


def test_max_mode_orders_whales_by_best_image_score():
    scores = np.array([[0.5, 0.9, 0.5, 0.6, 0.99, 0.5, 0.1, 0.3, 0.2, 0.05]], dtype=np.float32)
    assert rank_queries(scores, LABELS, 0.4, mode="max") == [["B", "C", "A", "new_whale", "D"]]


def test_new_whale_goes_first_when_no_whale_is_above_threshold_then_best_scores_fill():
    scores = np.array([[0.1, 0.2, 0.3, 0.05, 0.9, 0.0, 0.0, 0.25, 0.15, 0.01]], dtype=np.float32)
    assert rank_queries(scores, LABELS, 0.5) == [["new_whale", "A", "D", "B", "E"]]


def test_new_whale_is_dropped_when_five_whales_are_above_threshold():
    scores = np.array([[0.9, 0.8, 0.1, 0.7, 0.0, 0.1, 0.1, 0.6, 0.55, 0.52]], dtype=np.float32)
    assert rank_queries(scores, LABELS, 0.5, mode="max") == [["A", "B", "C", "D", "E"]]


def test_no_threshold_means_no_new_whale_and_order_by_best_score():
    scores = np.array([[0.5, 0.9, 0.5, 0.6, 0.99, 0.5, 0.1, 0.3, 0.2, 0.05]], dtype=np.float32)
    assert rank_queries(scores, LABELS, None) == [["B", "C", "A", "D", "E"]]


def test_each_query_gets_five_distinct_labels():
    rng = np.random.default_rng(0)
    labels = [f"w{i % 37}" for i in range(200)]
    scores = rng.random((50, 200), dtype=np.float32)
    for t in (None, 0.0, 0.5, 0.99, 2.0):
        for mode in ("sum", "max"):
            for row in rank_queries(scores, labels, t, mode=mode):
                assert len(row) == 5 and len(set(row)) == 5


def test_fewer_than_five_whales_gives_all_whales_and_new_whale():
    scores = np.array([[0.2, 0.7, 0.9], [0.1, 0.1, 0.1]], dtype=np.float32)
    ranked = rank_queries(scores, ["X", "Y", "X"], 0.5)
    assert ranked == [["X", "Y", "new_whale"], ["new_whale", "X", "Y"]]


def test_ties_are_broken_by_label_so_ranking_is_deterministic():
    scores = np.full((1, 8), 0.3, dtype=np.float32)
    labels = ["h", "g", "f", "e", "d", "c", "b", "a"]
    assert rank_queries(scores, labels, None) == [["a", "b", "c", "d", "e"]]


def test_rank_queries_matches_a_plain_python_ranking_on_random_input():
    rng = np.random.default_rng(1)
    labels = [f"w{i}" for i in rng.integers(0, 12, 60)]
    scores = rng.random((30, 60), dtype=np.float32)
    t = 0.8
    got = rank_queries(scores, labels, t, mode="sum")
    for q in range(30):
        whales = sorted(set(labels))
        pairs = list(zip(scores[q], labels, strict=True))
        best = {w: max(s for s, lab in pairs if lab == w) for w in whales}
        total = {w: sum(s for s, lab in pairs if lab == w and s > t) for w in whales}
        above = sorted((w for w in whales if best[w] > t), key=lambda w: -total[w])
        rest = sorted((w for w in whales if best[w] <= t), key=lambda w: -best[w])
        assert got[q] == (above + ["new_whale"] + rest)[:5]


def test_tuned_threshold_beats_ranking_without_new_whale():
    # Queries 0-2 have their whale in the gallery with a high score; queries 3-5 are new whales
    # whose best score is mediocre. A threshold between the two groups gets everything right.
    rng = np.random.default_rng(2)
    labels = [f"w{i}" for i in range(10)]
    scores = rng.uniform(0.0, 0.2, (6, 10)).astype(np.float32)
    scores[0, 0], scores[1, 1], scores[2, 2] = 0.95, 0.9, 0.85
    scores[3, 5], scores[4, 6], scores[5, 7] = 0.5, 0.45, 0.4
    truth = ["w0", "w1", "w2", "new_whale", "new_whale", "new_whale"]
    none_map = map_at_5(truth, rank_queries(scores, labels, None))
    t, tuned_map = tune_threshold(scores, labels, truth)
    assert none_map == pytest.approx(0.5)
    assert tuned_map == pytest.approx(1.0)
    assert 0.5 <= t < 0.85
    assert map_at_5(truth, rank_queries(scores, labels, t)) == pytest.approx(tuned_map)


def test_tune_threshold_uses_the_given_candidates():
    scores = np.array([[0.9, 0.1], [0.3, 0.2]], dtype=np.float32)
    t, value = tune_threshold(scores, ["a", "b"], ["a", "new_whale"], candidates=np.array([0.95, 0.1]))
    assert t == pytest.approx(0.95)
    assert value == pytest.approx((0.5 + 1.0) / 2)


def test_threshold_for_share_puts_new_whale_first_for_that_share_of_queries():
    rng = np.random.default_rng(3)
    labels = [f"w{i % 20}" for i in range(100)]
    scores = rng.random((200, 100), dtype=np.float32) ** 4
    for share in (0.0, 0.276, 0.5, 1.0):
        t = threshold_for_new_whale_share(scores, labels, share)
        first = [row[0] for row in rank_queries(scores, labels, t)]
        assert first.count("new_whale") == round(share * 200)


def test_scores_and_labels_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="columns"):
        rank_queries(np.zeros((2, 3)), ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="mode"):
        rank_queries(np.zeros((2, 2)), ["a", "b"], 0.5, mode="mean")


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_tuned_map_equals_map_of_the_ranking_at_that_threshold_even_with_ties(mode):
    rng = np.random.default_rng(4)
    labels = [f"w{i}" for i in rng.integers(0, 15, 80)] + ["new_whale"] * 5
    scores = np.round(rng.random((60, 85), dtype=np.float32) ** 2, 1)  # coarse values: many ties
    truth = [str(x) for x in rng.choice(labels[:40] + ["new_whale"] * 10 + ["unseen"], 60)]
    for t in (0.05, 0.3, 0.5, 0.85):
        _, value = tune_threshold(scores, labels, truth, mode=mode, candidates=np.array([t]))
        assert value == pytest.approx(map_at_5(truth, rank_queries(scores, labels, t, mode=mode)))


def test_nan_scores_are_refused():
    scores = np.array([[0.5, np.nan]], dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        rank_queries(scores, ["a", "b"], 0.5)


def test_default_candidates_allow_never_putting_new_whale_first():
    from matching.ranking.rank import default_candidates, tune_threshold

    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5]], dtype=np.float32)
    threshold, value = tune_threshold(scores, ["w_a", "w_b"], ["w_a", "w_b", "w_a"])
    assert value == pytest.approx(1.0)
    assert threshold < scores.max(axis=1).min()
    assert default_candidates(scores).min() < 0.6
