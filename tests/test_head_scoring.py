"""The Siamese head by score.scoring: each photo, its whale's mean features, or both; an out-of-fold query is
left out of its own whale's centre."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.errors import InputError
from matching.similarity.head_scoring import head_centre_matrix, head_similarity
from matching.similarity.pair_head import score_matrix
from siamese.head import PairHead


@pytest.fixture
def head() -> PairHead:
    torch.manual_seed(0)
    h = PairHead(6, hidden=4)
    with torch.no_grad():
        h.combine.weight.normal_()
    return h.eval()


def _prob(head: PairHead, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float(torch.sigmoid(head(torch.from_numpy(x[None]), torch.from_numpy(y[None])))[0])


def test_centre_columns_hold_the_head_over_the_whales_mean_features(head):
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(5, 6)).astype(np.float32)
    labels = ["a", "b", "a", "c", "a"]
    query = rng.normal(size=(2, 6)).astype(np.float32)
    m = head_centre_matrix(head, query, gallery, labels)
    mean_a = gallery[[0, 2, 4]].mean(0)
    for i in range(2):
        for j in (0, 2, 4):
            assert m[i, j] == pytest.approx(_prob(head, query[i], mean_a), abs=1e-4)
        assert m[i, 3] == pytest.approx(_prob(head, query[i], gallery[3]), abs=1e-4)
    both = head_similarity(head, query, gallery, labels, scoring="both")
    np.testing.assert_allclose(both, 0.5 * (score_matrix(head, query, gallery) + m), atol=1e-5)
    with pytest.raises(InputError, match="scoring"):
        head_similarity(head, query, gallery, labels, scoring="mean")


def test_an_out_of_fold_query_is_left_out_of_its_own_whales_centre(head):
    rng = np.random.default_rng(2)
    gallery = rng.normal(size=(4, 6)).astype(np.float32)
    labels = ["a", "a", "a", "b"]
    query = gallery[[0, 3]]  # catalog photos 0 (whale a) and 3 (b's only photo) as out-of-fold rows
    m = head_centre_matrix(head, query, gallery, labels, own=np.array([0, 3]))
    rest = gallery[[1, 2]].mean(0)
    for j in (0, 1, 2):
        assert m[0, j] == pytest.approx(_prob(head, gallery[0], rest), abs=1e-4)
    assert m[0, 3] == pytest.approx(_prob(head, gallery[0], gallery[3]), abs=1e-4)
    assert m[1, 3] == 0.0  # b has no photo but the query
    mean_a = gallery[:3].mean(0)
    assert m[1, 0] == pytest.approx(_prob(head, gallery[3], mean_a), abs=1e-4)  # a's centre holds all of a
    leaky = head_centre_matrix(head, query, gallery, labels)
    assert abs(leaky[0, 0] - m[0, 0]) > 1e-3
