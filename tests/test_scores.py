import numpy as np
import pytest
import torch
from torch import nn

import matching.similarity.pair_head as scores_module
from matching.similarity.pair_head import (
    AUTOCAST_ATOL,
    CPU_ATOL,
    HeadParams,
    _bytes_per_pair,
    _score_block_cuda,
    block_shape,
    score_matrix,
    score_matrix_naive,
    split_evenly,
)


class ReferenceHead(nn.Module):
    """The head as the design states it, with the attribute names score_matrix reads."""

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.mlp1 = nn.Linear(4, hidden)
        self.mlp2 = nn.Linear(hidden, 1)
        self.combine = nn.Linear(dim, 1)


def random_head(dim: int, hidden: int, seed: int) -> ReferenceHead:
    torch.manual_seed(seed)
    head = ReferenceHead(dim, hidden)
    with torch.no_grad():
        head.combine.weight.normal_(0.0, 2.0 / dim**0.5)
    return head


def pair_by_pair(head: ReferenceHead, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Each pair on its own, in float64, straight from the head's definition."""
    w1 = head.mlp1.weight.detach().double().numpy()
    b1 = head.mlp1.bias.detach().double().numpy()
    w2 = head.mlp2.weight.detach().double().numpy()[0]
    b2 = float(head.mlp2.bias.detach())
    wc = head.combine.weight.detach().double().numpy()[0]
    bc = float(head.combine.bias.detach())
    out = np.empty((len(query), len(gallery)))
    for i, x in enumerate(query.astype(np.float64)):
        for j, y in enumerate(gallery.astype(np.float64)):
            inputs = np.stack([x * y, x + y, np.abs(x - y), (x - y) ** 2], axis=1)  # [D, 4]
            per_feature = np.maximum(inputs @ w1.T + b1, 0.0) @ w2 + b2  # [D]
            out[i, j] = 1.0 / (1.0 + np.exp(-(per_feature @ wc + bc)))
    return out


def features(n: int, dim: int, seed: int) -> np.ndarray:
    """Non-negative like max-pooled ReLU features."""
    return np.random.default_rng(seed).uniform(0.0, 2.0, (n, dim)).astype(np.float32)


SHAPES = [(3, 5, 8, 32), (7, 13, 20, 32), (1, 1, 4, 8), (17, 9, 33, 16)]


@pytest.mark.parametrize(("n_q", "n_g", "dim", "hidden"), SHAPES)
def test_score_matrix_matches_pair_by_pair_head(n_q, n_g, dim, hidden):
    head = random_head(dim, hidden, seed=n_q + dim)
    q, g = features(n_q, dim, 1), features(n_g, dim, 2)
    expected = pair_by_pair(head, q, g)
    got = score_matrix(head, q, g, compile=False)
    assert got.dtype == np.float32 and got.shape == (n_q, n_g)
    assert np.abs(got - expected).max() < CPU_ATOL
    assert expected.size < 4 or expected.std() > 0.05  # probabilities spread, not all saturated


@pytest.mark.parametrize(("n_q", "n_g", "dim", "hidden"), SHAPES)
def test_naive_score_matrix_matches_pair_by_pair_head(n_q, n_g, dim, hidden):
    head = random_head(dim, hidden, seed=3)
    q, g = features(n_q, dim, 3), features(n_g, dim, 4)
    assert np.abs(score_matrix_naive(head, q, g) - pair_by_pair(head, q, g)).max() < CPU_ATOL


def test_tiny_budget_forces_many_blocks_and_gives_the_same_matrix():
    head = random_head(16, 32, seed=5)
    q, g = features(11, 16, 5), features(13, 16, 6)
    assert block_shape("loop", 11, 13, 16, 32, budget_mb=1e-4) == (1, 1)
    small = score_matrix(head, q, g, budget_mb=1e-4, compile=False)
    odd = score_matrix(head, q, g, block=(4, 7), compile=False)
    large = score_matrix(head, q, g, budget_mb=512, compile=False)
    np.testing.assert_allclose(small, large, atol=1e-6)
    np.testing.assert_allclose(odd, large, atol=1e-6)
    naive_small = score_matrix_naive(head, q, g, budget_mb=1e-4)
    np.testing.assert_allclose(naive_small, large, atol=CPU_ATOL)


@pytest.mark.parametrize("path", ["compiled", "loop", "naive", "cuda"])
@pytest.mark.parametrize("budget_mb", [0.5, 64, 512])
def test_block_shape_keeps_block_memory_within_budget(path, budget_mb):
    bq, bg = block_shape(path, 7960, 15697, 1024, 32, budget_mb)
    assert 1 <= bq <= 7960 and 1 <= bg <= 15697
    assert bq * bg * _bytes_per_pair(path, 1024, 32) <= budget_mb * 2**20


def test_head_params_fold_into_a_quadratic_in_sum_and_absolute_difference():
    head = random_head(6, 8, seed=7)
    p = HeadParams.from_module(head)
    coef, v, w, bias = p.folded()
    x, y = torch.rand(6) * 2, torch.rand(6) * 2
    s, u = (x + y)[:, None], (x - y).abs()[:, None]
    pre = coef[0] * s**2 + coef[1] * s + coef[2] * u + coef[3] * u**2 + coef[4]
    inputs = torch.stack([x * y, x + y, (x - y).abs(), (x - y) ** 2], dim=1)
    np.testing.assert_allclose(pre.numpy(), (inputs @ p.w1.T + p.b1).numpy(), atol=1e-5, rtol=1e-5)
    logit = torch.relu(pre) @ v @ w + bias
    expected = head.combine(head.mlp2(torch.relu(head.mlp1(inputs))).T)[0, 0]
    np.testing.assert_allclose(float(logit), float(expected.detach()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_block_matches_reference_within_autocast_tolerance(dtype):
    head = random_head(24, 32, seed=8)
    q, g = features(5, 24, 8), features(6, 24, 9)
    with torch.inference_mode():
        logits = _score_block_cuda(HeadParams.from_module(head), torch.from_numpy(q), torch.from_numpy(g), dtype)
    probs = torch.sigmoid(logits).numpy()
    assert np.abs(probs - pair_by_pair(head, q, g)).max() < AUTOCAST_ATOL


def test_torch_tensor_inputs_and_float64_are_accepted():
    head = random_head(8, 32, seed=9)
    q, g = features(4, 8, 10), features(5, 8, 11)
    from_np = score_matrix(head, q, g, compile=False)
    from_torch = score_matrix(head, torch.from_numpy(q).double(), torch.from_numpy(g), compile=False)
    np.testing.assert_allclose(from_np, from_torch, atol=1e-6)


def test_feature_dimension_mismatch_is_refused():
    head = random_head(8, 32, seed=0)
    with pytest.raises(ValueError, match="dimension 9"):
        score_matrix(head, features(2, 9, 0), features(2, 9, 1))


def test_empty_query_gives_empty_matrix():
    head = random_head(8, 32, seed=0)
    assert score_matrix(head, np.zeros((0, 8), np.float32), features(3, 8, 0)).shape == (0, 3)


@pytest.mark.slow
def test_compiled_kernel_matches_pair_by_pair_head_across_partial_blocks():
    head = random_head(40, 32, seed=12)
    q, g = features(70, 40, 12), features(37, 40, 13)
    expected = pair_by_pair(head, q, g)
    got = score_matrix(head, q, g, compile=True, block=(16, 16))
    assert np.abs(got - expected).max() < CPU_ATOL
    tiny = score_matrix(head, q, g, compile=True, budget_mb=0.002)
    assert np.abs(tiny - expected).max() < CPU_ATOL


def test_score_matrix_agrees_with_the_project_pair_head_forward():
    head_module = pytest.importorskip("siamese.head", reason="siamese/head.py not present")
    torch.manual_seed(13)
    head = head_module.PairHead(12, hidden=32)
    with torch.no_grad():
        head.combine.weight.normal_(0.0, 0.5)
    q, g = features(6, 12, 14), features(9, 12, 15)
    xx = torch.from_numpy(q).repeat_interleave(9, dim=0)
    yy = torch.from_numpy(g).repeat(6, 1)
    with torch.no_grad():
        expected = torch.sigmoid(head(xx, yy)).reshape(6, 9).numpy()
    assert np.abs(score_matrix(head, q, g, compile=False) - expected).max() < CPU_ATOL
    assert np.abs(score_matrix_naive(head, q, g) - expected).max() < CPU_ATOL
    assert expected.std() > 0.05


def test_failed_compile_warns_and_falls_back_to_the_eager_loop(monkeypatch):
    def broken():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(scores_module, "_compiled", broken)
    head = random_head(8, 32, seed=16)
    q, g = features(5, 8, 16), features(7, 8, 17)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        got = score_matrix(head, q, g, compile=True, block=(2, 3))
    assert np.abs(got - pair_by_pair(head, q, g)).max() < CPU_ATOL


@pytest.mark.parametrize(("n", "most"), [(10, 3), (7960, 64), (15697, 256), (5, 10), (1, 1)])
def test_split_evenly_covers_everything_in_near_equal_blocks_within_the_limit(n, most):
    parts = split_evenly(n, most)
    sizes = [s.stop - s.start for s in parts]
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))
    assert max(sizes) <= most and max(sizes) - min(sizes) <= 1
    assert len(parts) == -(-n // most)
