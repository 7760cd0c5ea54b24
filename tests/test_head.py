"""The pair head and the Siamese model around it."""

from __future__ import annotations

import pytest
import torch

from data.errors import InputError
from siamese.head import PairHead
from siamese.model import SiameseModel, build_model


def _features(batch: int, dim: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, dim, generator=torch.Generator().manual_seed(seed)) * 3


def _perturbed_head(dim: int, hidden: int = 8) -> PairHead:
    head = PairHead(dim, hidden=hidden)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in head.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen))
    return head


def test_head_is_symmetric_in_its_two_inputs():
    head = _perturbed_head(16)
    x, y = _features(5, 16, 0), _features(5, 16, 1)
    assert torch.allclose(head(x, y), head(y, x), atol=1e-6)
    assert not torch.allclose(head(x, y), head(x, x))


def test_head_matches_a_manual_per_feature_computation():
    head = _perturbed_head(6, hidden=4)
    x, y = _features(3, 6, 2), _features(3, 6, 3)
    w1, b1 = head.mlp1.weight, head.mlp1.bias  # [4 hidden, 4 stats]
    w2, b2 = head.mlp2.weight[0], head.mlp2.bias[0]
    wc, bc = head.combine.weight[0], head.combine.bias[0]
    expected = torch.empty(3)
    for b in range(3):
        total = bc.clone()
        for d in range(6):
            xd, yd = x[b, d], y[b, d]
            stats = torch.stack([xd * yd, xd + yd, (xd - yd).abs(), (xd - yd) ** 2])
            hidden = torch.relu(w1 @ stats + b1)
            total = total + wc[d] * (w2 @ hidden + b2)
        expected[b] = total
    assert torch.allclose(head(x, y), expected, atol=1e-5)


def test_head_starts_as_a_positive_average_over_features():
    head = PairHead(64)
    assert torch.allclose(head.combine.weight, torch.full((1, 64), 1 / 64))
    assert torch.equal(head.combine.bias.detach(), torch.zeros(1))
    x, y = _features(4, 64, 4), _features(4, 64, 5)
    assert torch.allclose(head(x, y), head.per_feature(x, y).mean(1), atol=1e-6)


def test_head_refuses_features_of_the_wrong_size():
    with pytest.raises(ValueError, match="features must both be"):
        PairHead(8)(_features(2, 8, 0), _features(2, 7, 1))


def _small_model() -> SiameseModel:
    return build_model({"name": "demo", "branch": "resnet18", "in_chans": 1, "pool": "max",
                        "pretrained": False, "weights": None, "head_hidden": 8}).eval()


def test_build_model_reads_the_config_section():
    model = _small_model()
    assert model.branch.in_chans == 1 and model.branch.out_dim == 512
    assert model.head.dim == 512 and model.head.hidden == 8
    with pytest.raises(InputError, match="needs a 'branch'"):
        build_model({"in_chans": 3})


def test_model_scores_a_pair_as_the_head_on_both_branch_features():
    model = _small_model()
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, 64, 64, generator=gen), torch.randn(2, 1, 64, 64, generator=gen)
    with torch.no_grad():
        logits = model(a, b)
        assert logits.shape == (2,)
        assert torch.allclose(logits, model.score(model.features(a), model.features(b)), atol=1e-5)
        assert torch.allclose(logits, model(b, a), atol=1e-5)
        # different shapes take two branch passes and still give the same logits
        assert torch.allclose(model(a[:1], b[:1, :, :48, :48]),
                              model.score(model.features(a[:1]), model.features(b[:1, :, :48, :48])), atol=1e-5)


def test_cosine_init_scores_scaled_cosine_of_normalised_features():
    dim = 12
    head = PairHead(dim, hidden=8, init="cosine")
    head.init_cosine(scale=7.0, offset=0.4)
    x, y = _features(6, dim, 3), _features(6, dim, 4)
    xn = torch.nn.functional.normalize(x, dim=-1) * dim**0.5
    yn = torch.nn.functional.normalize(y, dim=-1) * dim**0.5
    expected = 7.0 * (torch.nn.functional.cosine_similarity(x, y) - 0.4)
    torch.testing.assert_close(head(xn, yn), expected, rtol=1e-5, atol=1e-5)
    # the silent hidden units still learn: their output weights get a gradient
    head(xn, yn).sum().backward()
    assert head.mlp2.weight.grad[0, 1:].abs().sum() > 0


def test_unknown_head_init_is_refused():
    with pytest.raises(ValueError, match="head init"):
        PairHead(4, init="xavier")
    with pytest.raises(InputError, match="head_init"):
        build_model({"branch": "resnet18", "head_init": "xavier"})
