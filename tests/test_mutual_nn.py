"""The mutual-nearest-neighbour count of local features (matching/similarity/local_match.py) against its
definition, on random descriptors padded as a LocalSet pads them."""

from __future__ import annotations

import numpy as np
import pytest

from matching.similarity.local_features import LocalSet
from matching.similarity.local_match import mnn_matrix, mnn_pairs


def _loop_mutual_counts(query: LocalSet, gallery: LocalSet, min_similarity: float) -> np.ndarray:
    """The mutual-NN count by its definition, one pair and one keypoint at a time (real keypoints only)."""
    out = np.zeros((len(query), len(gallery)), np.float32)
    for i in range(len(query)):
        for j in range(len(gallery)):
            q = query.descriptors[i][query.valid[i]]
            g = gallery.descriptors[j][gallery.valid[j]]
            sims = g @ q.T
            out[i, j] = sum(1 for k in range(len(g)) if sims[k].max() > min_similarity
                            and sims[:, sims[k].argmax()].argmax() == k)
    return out


@pytest.mark.parametrize("min_similarity", [0.0, 0.3, -1.0])
def test_the_mutual_nn_count_is_its_definition_with_padded_keypoints(min_similarity):
    rng = np.random.default_rng(0)

    def local_set(n: int, names: list[str]) -> LocalSet:
        descriptors = rng.normal(size=(n, 24, 8)).astype(np.float32)
        descriptors /= np.linalg.norm(descriptors, axis=2, keepdims=True)
        valid = np.arange(24)[None, :] < rng.integers(4, 25, size=n)[:, None]  # 4 to 24 real keypoints
        descriptors[~valid] = 0.0
        return LocalSet(np.asarray(names), np.zeros((n, 24, 2), np.float32), descriptors, valid,
                        np.full((n, 2), 64.0, np.float32))

    query, gallery = local_set(5, list("abcde")), local_set(7, list("fghijkl"))
    expected = _loop_mutual_counts(query, gallery, min_similarity)
    assert expected.max() > 0 and len(np.unique(expected)) > 3
    np.testing.assert_array_equal(mnn_matrix(query, gallery, min_similarity=min_similarity, chunk=3), expected)
    pairs = np.array([[0, 0], [4, 6], [2, 3]])
    np.testing.assert_array_equal(mnn_pairs(query, gallery, pairs, min_similarity=min_similarity),
                                  expected[pairs[:, 0], pairs[:, 1]])
