"""Pairs of an epoch: derangement positives, assignment negatives (dense, sparse, segmented, random)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from siamese.pairs import NegativeMiner, pair_noise, positive_pairs, whale_ids


def _labels(seed: int = 0, whales: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, whales)
    labels = np.repeat([f"w_{i:03d}" for i in range(whales)], sizes)
    return labels[rng.permutation(len(labels))]


def _scores(labels: np.ndarray, seed: int = 0, dim: int = 8) -> np.ndarray:
    """Probabilities from noisy whale embeddings: same-whale pairs high, a few hard negatives."""
    rng = np.random.default_rng(seed)
    ids = whale_ids(labels)
    emb = rng.standard_normal((ids.max() + 1, dim))[ids] + 0.5 * rng.standard_normal((len(ids), dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return (1 / (1 + np.exp(-6 * (emb @ emb.T - 0.3)))).astype(np.float32)


def _assert_valid_negatives(pairs: np.ndarray, labels: np.ndarray) -> None:
    n = len(labels)
    assert pairs.shape == (n, 2)
    assert np.array_equal(np.sort(pairs[:, 0]), np.arange(n))  # every image once first ...
    assert np.array_equal(np.sort(pairs[:, 1]), np.arange(n))  # ... and once second
    assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all()


def _as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in pairs} | {(int(b), int(a)) for a, b in pairs}


def _best_total(scores: np.ndarray, labels: np.ndarray) -> float:
    masked = np.where(labels[:, None] == labels[None, :], -1e6, scores.astype(np.float64))
    rows, cols = linear_sum_assignment(masked, maximize=True)
    return float(masked[rows, cols].sum())


def test_positive_pairs_are_derangements_within_each_whale():
    labels = np.array(["a", "b", "a", "new_whale", "c", "a", "b", "new_whale", "d", "c", "c", "c"])
    pairs = positive_pairs(labels, np.random.default_rng(0))
    multi = [i for i, lab in enumerate(labels) if lab != "new_whale" and (labels == lab).sum() >= 2]
    assert sorted(pairs[:, 0]) == multi  # every image of a whale with 2+ images once as first
    assert sorted(pairs[:, 1]) == multi  # a permutation within the whales ...
    assert (pairs[:, 0] != pairs[:, 1]).all()  # ... with no image paired with itself
    assert (labels[pairs[:, 0]] == labels[pairs[:, 1]]).all()


def test_positive_pairs_are_seeded_and_vary_between_epochs():
    labels = _labels(1)
    first = positive_pairs(labels, np.random.default_rng(5))
    assert np.array_equal(first, positive_pairs(labels, np.random.default_rng(5)))
    assert not np.array_equal(first, positive_pairs(labels, np.random.default_rng(6)))


def test_new_whale_images_never_pair_as_the_same_whale():
    ids = whale_ids(np.array(["new_whale", "a", "new_whale", "a"]))
    assert ids[0] != ids[2] and ids[1] == ids[3]
    assert len(positive_pairs(np.array(["new_whale", "new_whale"]), np.random.default_rng(0))) == 0


@pytest.mark.parametrize("options", [{}, {"sparse_k": 300}])
def test_negatives_with_k0_are_the_hardest_assignment(options):
    labels = _labels(2)
    scores = _scores(labels, 2)
    miner = NegativeMiner(labels, **options)
    pairs = miner.mine(scores, 0.0, np.random.default_rng(0))
    _assert_valid_negatives(pairs, labels)
    chosen = float(scores[pairs[:, 0], pairs[:, 1]].astype(np.float64).sum())
    assert chosen == pytest.approx(_best_total(scores, labels), rel=1e-9)
    assert miner.last_solvers == ["sparse" if options else "dense"]


def test_sparse_top_k_negatives_are_as_hard_as_dense_ones_with_noise():
    labels = _labels(3, whales=60)
    scores = _scores(labels, 3)
    dense = NegativeMiner(labels).mine(scores, 0.3, np.random.default_rng(7))
    sparse_miner = NegativeMiner(labels, sparse_k=8)
    sparse = sparse_miner.mine(scores, 0.3, np.random.default_rng(7))
    _assert_valid_negatives(sparse, labels)
    seed = int(np.random.default_rng(7).integers(0, 2**63))  # the noise the miners drew

    def objective(p):
        return float((scores[p[:, 0], p[:, 1]] + 0.3 * pair_noise(seed, p[:, 0], p[:, 1])).sum())

    assert sparse_miner.last_solvers == ["sparse"]
    assert objective(sparse) >= 0.99 * objective(dense)
    assert objective(sparse) <= objective(dense) + 1e-9


def test_noise_is_a_pure_function_of_the_pair():
    rows, cols = np.arange(300), np.arange(300)
    grid = pair_noise(11, rows[:, None], cols[None, :])
    assert grid.shape == (300, 300) and grid.min() >= 0 and grid.max() < 1
    assert abs(grid.mean() - 0.5) < 0.01
    assert np.array_equal(pair_noise(11, [5, 17], [250, 3]), grid[[5, 17], [250, 3]])
    assert not np.allclose(grid, grid.T)
    assert not np.allclose(grid, pair_noise(12, rows[:, None], cols[None, :]))


def test_negatives_are_not_repeated_across_epochs_while_possible():
    labels = _labels(4)
    scores = _scores(labels, 4)
    for options in ({}, {"sparse_k": 6}):
        miner = NegativeMiner(labels, **options)
        seen: set[tuple[int, int]] = set()
        for epoch in range(4):
            pairs = miner.mine(scores, 0.0, np.random.default_rng(epoch))
            _assert_valid_negatives(pairs, labels)
            assert not _as_set(pairs) & seen
            seen |= _as_set(pairs)


def test_oldest_history_is_forgotten_when_no_unused_assignment_is_left():
    labels = np.array(["a", "a", "b", "b"])  # cross pairs 0-2, 1-3 (best) and 0-3, 1-2
    scores = np.zeros((4, 4))
    scores[0, 2] = scores[2, 0] = scores[1, 3] = scores[3, 1] = 1.0
    for options in ({}, {"sparse_k": 1}):
        miner = NegativeMiner(labels, **options)
        epochs = [miner.mine(scores, 0.0, np.random.default_rng(e)) for e in range(3)]
        for pairs in epochs:
            _assert_valid_negatives(pairs, labels)
        assert _as_set(epochs[0]) == {(0, 2), (2, 0), (1, 3), (3, 1)}
        assert not _as_set(epochs[0]) & _as_set(epochs[1])
        assert _as_set(epochs[2]) == _as_set(epochs[0])  # epoch 1 forgotten, epoch 2 still masked
        miner.reset()
        assert miner.history == []


def test_memory_limits_how_many_epochs_are_masked():
    labels = _labels(5)
    miner = NegativeMiner(labels, memory=1)
    scores = _scores(labels, 5)
    for epoch in range(3):
        miner.mine(scores, 0.0, np.random.default_rng(epoch))
    assert len(miner.history) == 1


def test_sparse_mode_falls_back_to_dense_when_its_candidates_allow_no_assignment():
    labels = np.array(["a", "b", "c", "d", "e", "f"])
    scores = np.zeros((6, 6))
    scores[:, 0] = 1.0  # every row's single best candidate is image 0
    scores[0, 1] = 1.0
    miner = NegativeMiner(labels, sparse_k=1)
    pairs = miner.mine(scores, 0.0, np.random.default_rng(0))
    assert miner.last_solvers == ["dense"]
    _assert_valid_negatives(pairs, labels)
    assert float(scores[pairs[:, 0], pairs[:, 1]].sum()) == pytest.approx(_best_total(scores, labels))


@pytest.mark.parametrize("options", [{"segments": 3}, {"segments": 3, "sparse_k": 10}])
def test_segmented_mining_assigns_within_random_chunks(options):
    labels = _labels(6, whales=60)
    miner = NegativeMiner(labels, **options)
    pairs = miner.mine(_scores(labels, 6), 0.1, np.random.default_rng(0))
    _assert_valid_negatives(pairs, labels)
    chunks = miner.last_segments
    assert len(chunks) == 3 and len(miner.last_solvers) == 3
    assert np.array_equal(np.sort(np.concatenate(chunks)), np.arange(len(labels)))
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1
    owner = np.empty(len(labels), int)
    for i, chunk in enumerate(chunks):
        owner[chunk] = i
    assert (owner[pairs[:, 0]] == owner[pairs[:, 1]]).all()
    assert not np.array_equal(chunks[0], np.arange(len(chunks[0])))


def test_random_negatives_without_scores_are_valid_seeded_and_varied():
    labels = _labels(7, whales=80)
    miner = NegativeMiner(labels)
    first = miner.mine(None, 1000.0, np.random.default_rng(0))
    _assert_valid_negatives(first, labels)
    assert miner.last_solvers == ["random"]
    assert np.array_equal(first, NegativeMiner(labels).mine(None, 1000.0, np.random.default_rng(0)))
    second = miner.mine(None, 1000.0, np.random.default_rng(1))
    _assert_valid_negatives(second, labels)
    assert not _as_set(first) & _as_set(second)


def test_miner_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    labels = _labels(8)
    scores = _scores(labels, 8)
    miner = NegativeMiner(labels, sparse_k=6)
    for epoch in range(2):
        miner.mine(scores, 0.0, np.random.default_rng(epoch))
    torch.save({"miner": miner.state_dict()}, tmp_path / "last.pt")
    resumed = NegativeMiner(labels, sparse_k=6)
    resumed.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=True)["miner"])
    assert np.array_equal(resumed.mine(scores, 0.0, np.random.default_rng(9)),
                          miner.mine(scores, 0.0, np.random.default_rng(9)))


def test_mine_refuses_scores_of_the_wrong_shape_or_a_negative_k():
    miner = NegativeMiner(_labels(9))
    with pytest.raises(ValueError, match="scores must be"):
        miner.mine(np.zeros((3, 3)), 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="K must be"):
        miner.mine(None, -1.0, np.random.default_rng(0))
