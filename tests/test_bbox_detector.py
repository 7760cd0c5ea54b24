"""The detector: wide anchors, backbone weights from a local file, clear failures, checkpoints."""

import numpy as np
import pytest
import timm
import torch

import bbox.detector as detector
from bbox.detector import build_detector, load_backbone_weights, load_detector, wide_anchor_generator
from data.checkpoint import save_checkpoint
from data.errors import InputError

TINY = {
    "backbone": "mobilenetv3_small_050",
    "weights": None,  # the default is efficientnet_lite0's shipped weights
    "fpn_channels": 16,
    "box_head": 32,
    "min_size": 64,
    "max_size": 96,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run faster on one thread than on two cores shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _anchor_shapes(generator) -> np.ndarray:
    anchors = torch.cat(generator.cell_anchors)
    return torch.stack([anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]], 1).numpy()


def test_anchor_generator_has_wide_anchors_up_to_eight_to_one():
    shapes = _anchor_shapes(wide_anchor_generator([32, 64], [1, 2, 4, 8]))
    ratios = shapes[:, 0] / shapes[:, 1]  # torchvision rounds anchor corners to whole pixels
    for wanted in (1, 2, 4, 8):
        assert np.isclose(ratios, wanted, rtol=0.1).sum() == 2  # once per level
    widest = shapes[np.argmax(shapes[:, 0] / shapes[:, 1])]
    assert widest[0] > widest[1]  # wide (width 8 x height), not tall


def test_anchor_of_size_s_keeps_area_s_squared():
    shapes = _anchor_shapes(wide_anchor_generator([64], [8]))
    assert shapes[0, 0] * shapes[0, 1] == pytest.approx(64 * 64, rel=0.05)  # corners rounded to pixels
    assert shapes[0, 0] == pytest.approx(64 * 8**0.5, abs=1)


def test_built_detector_uses_the_configured_wide_ratios_on_every_level():
    model = build_detector({**TINY, "anchor_ratios": [1, 2, 4, 8]})
    generator = model.rpn.anchor_generator
    assert len(generator.cell_anchors) == 4
    assert generator.num_anchors_per_location() == [4, 4, 4, 4]
    shapes = _anchor_shapes(generator)
    assert max(shapes[:, 0] / shapes[:, 1]) == pytest.approx(8, rel=0.05)


def test_retinanet_gets_the_same_wide_anchors():
    model = build_detector({**TINY, "arch": "retinanet", "anchor_ratios": [1, 4, 8]})
    assert model.anchor_generator.num_anchors_per_location() == [3, 3, 3, 3]


def test_anchor_sizes_must_match_the_pyramid_levels():
    with pytest.raises(InputError, match="one per pyramid level"):
        build_detector({**TINY, "anchor_sizes": [32, 64]})


def test_backbone_weights_from_another_implementation_load_by_position(tmp_path):
    full = timm.create_model("efficientnet_lite0", pretrained=False)
    torch.manual_seed(1)
    foreign = {
        f"_layer{i}.{k.split('.')[-1]}": torch.randn_like(v.float()).to(v.dtype)
        for i, (k, v) in enumerate(full.state_dict().items())
    }
    path = tmp_path / "other_names.pth"
    torch.save(foreign, path)
    body = timm.create_model(
        "efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3, 4)
    )
    load_backbone_weights(body, "efficientnet_lite0", path)
    first = next(iter(foreign.values()))
    assert torch.equal(body.state_dict()["conv_stem.weight"], first)


def test_backbone_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    body = timm.create_model(
        "efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3, 4)
    )
    with pytest.raises(InputError, match="does not fit backbone 'efficientnet_lite0'"):
        load_backbone_weights(body, "efficientnet_lite0", path)


def test_missing_weights_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="weights file not found"):
        build_detector({**TINY, "weights": str(tmp_path / "nope.pth")})


def test_unreachable_pretrained_weights_fail_with_one_clear_line(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(detector.timm, "create_model", offline)
    with pytest.raises(InputError, match="model.pretrained=false") as err:
        build_detector({**TINY, "pretrained": True})
    assert "\n" not in str(err.value)


def test_loaded_weights_freeze_batch_norm_and_the_named_layers(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(timm.create_model(TINY["backbone"], pretrained=False).state_dict(), path)
    model = build_detector({**TINY, "weights": str(path), "freeze": ["conv_stem", "blocks.0"]})
    trainable = {n for n, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("conv_stem", "blocks.0.")) for n in trainable)
    assert any(n.startswith("blocks.2.") for n in trainable)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.body.modules())


def test_checkpoint_round_trip_gives_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = build_detector(TINY).eval()
    path = save_checkpoint(
        tmp_path / "bbox" / "fold0.pt", {"model": model.state_dict(), "config": {"model": TINY}, "done": True}
    )
    assert torch.load(path, weights_only=True)["done"] is True
    loaded, state = load_detector(path)
    image = [torch.rand(3, 60, 90, generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        a, b = model(image)[0], loaded(image)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "fold0.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_detector(bad)
