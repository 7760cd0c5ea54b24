"""The embedding family's parts on hand-worked cases: margin logits, sub-centres, losses, items, order, lr."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamese.arcface import ArcMarginHead, batch_hard_triplet, classification_loss, margin_logits
from siamese.objectives.margin import MIRROR_SUFFIX, class_items, epoch_order, lr_factor


def test_margin_adds_the_angle_to_the_true_class_only():
    cos = torch.tensor([[0.5, 0.5]])  # theta = 60 degrees for both classes
    logits = margin_logits(cos, torch.tensor([0]), s=10.0, m=math.pi / 6)
    # true class: cos(60 + 30 degrees) = 0; the other stays s * cos
    torch.testing.assert_close(logits, torch.tensor([[0.0, 5.0]]), atol=1e-6, rtol=0)


def test_past_pi_minus_m_the_target_logit_keeps_falling_instead_of_turning_back():
    m = math.pi / 6
    cos = torch.tensor([[-0.9]])  # theta ~ 154 degrees > 150: theta + m would pass 180
    hard = margin_logits(cos, torch.tensor([0]), s=1.0, m=m)
    assert hard.item() == pytest.approx(-0.9 - math.sin(math.pi - m) * m, abs=1e-6)
    easy = margin_logits(cos, torch.tensor([0]), s=1.0, m=m, easy_margin=True)
    assert easy.item() == pytest.approx(-0.9, abs=1e-6)  # easy margin: no margin where cos <= 0
    easy_pos = margin_logits(torch.tensor([[0.5]]), torch.tensor([0]), s=1.0, m=m, easy_margin=True)
    assert easy_pos.item() == pytest.approx(0.0, abs=1e-6)


def test_sub_center_cosine_is_the_best_centre_of_each_class():
    head = ArcMarginHead(2, classes=2, s=1.0, m=0.0, subcenters=2)
    with torch.no_grad():  # class 0: centres (1,0) and (0,1); class 1: (-1,0) and (0,-1)
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    cos = head.cosine(torch.tensor([[0.0, 2.0], [-3.0, 0.0]]))
    torch.testing.assert_close(cos, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert head(torch.tensor([[0.0, 2.0]]), torch.tensor([0])).shape == (1, 2)


def test_focal_factor_scales_cross_entropy_by_one_minus_p_to_gamma():
    logits, labels = torch.zeros(1, 2), torch.tensor([0])  # p_true = 0.5
    assert classification_loss(logits, labels).item() == pytest.approx(math.log(2))
    assert classification_loss(logits, labels, focal_gamma=2.0).item() == pytest.approx(0.25 * math.log(2))
    smooth = classification_loss(torch.tensor([[10.0, 0.0]]), labels, smoothing=0.2)
    plain = classification_loss(torch.tensor([[10.0, 0.0]]), labels)
    assert smooth.item() > plain.item()  # smoothing penalises over-confidence


def test_batch_hard_triplet_on_a_hand_worked_batch():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # anchor 0: hardest positive 1 (distance 1), hardest negative 2 (distance 0): 1 - 0 + 0.3
    # anchor 1: positive 0 (1), negative 2 (1): 0.3; anchor 2 has no positive and is left out
    assert batch_hard_triplet(e, labels, margin=0.3).item() == pytest.approx((1.3 + 0.3) / 2)
    assert batch_hard_triplet(e, torch.tensor([0, 1, 2])).item() == 0.0


def test_mirrored_photos_become_new_classes():
    index, flip, cls, classes = class_items(np.array(["b", "a", "b"]), mirror=True)
    assert classes == ["a", "b", "a" + MIRROR_SUFFIX, "b" + MIRROR_SUFFIX]
    assert index.tolist() == [0, 1, 2, 0, 1, 2]
    assert flip.tolist() == [False] * 3 + [True] * 3
    assert cls.tolist() == [1, 0, 1, 3, 2, 3]
    _, flip1, cls1, classes1 = class_items(np.array(["b", "a", "b"]), mirror=False)
    assert classes1 == ["a", "b"] and not flip1.any() and cls1.tolist() == [1, 0, 1]
    with pytest.raises(ValueError):
        class_items(np.array(["a", "new_whale"]), mirror=False)


def test_per_class_order_comes_in_runs_of_one_whale():
    classes = np.repeat(np.arange(5), [1, 2, 3, 4, 6])
    order = epoch_order(classes, np.random.default_rng(0), per_class=2)
    assert sorted(order.tolist()) == list(range(len(classes)))
    runs = [[classes[order[0]]]]
    for i in order[1:]:
        if classes[i] == runs[-1][0] and len(runs[-1]) < 2:
            runs[-1].append(classes[i])
        else:
            runs.append([classes[i]])
    assert len(runs) == sum(math.ceil(n / 2) for n in (1, 2, 3, 4, 6))


def test_lr_warms_up_then_follows_a_cosine():
    assert lr_factor(0.0, 10, 0.0, cosine=True, min_factor=0.0) == pytest.approx(1.0)
    assert lr_factor(5.0, 10, 5.0, cosine=True, min_factor=0.0) == pytest.approx(0.5)
    assert lr_factor(10.0, 10, 10.0, cosine=True, min_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(0.5, 10, 0.5, warmup=2.0, cosine=False) == pytest.approx(0.25)
    assert lr_factor(3.0, 10, 3.0, warmup=2.0, cosine=False) == pytest.approx(1.0)
