import importlib.util

import pytest
import torch
from torch import nn

from fastgdr._compat import import_timm
from fastgdr.checkpoint import save_checkpoint
from fastgdr.config import load_config
from fastgdr.errors import CheckpointError, UnknownNameError
from fastgdr.models import (
    BACKBONE_PRESETS,
    GDRNPoseNet,
    GeometricHead,
    PatchPnP,
    build_backbone,
    decode_pose,
    split_head_channels,
)
from fastgdr.geometry import rot6d_to_matrix, translation_to_site, matrix_to_rot6d, egocentric_to_allocentric

HAS_FASTERVIT = importlib.util.find_spec("fastervit") is not None


def preset_params():
    for name in BACKBONE_PRESETS:
        marks = []
        if BACKBONE_PRESETS.get(name).source == "fastervit" and not HAS_FASTERVIT:
            marks.append(pytest.mark.skip(reason="fastervit is not installed"))
        yield pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", list(preset_params()))
def test_every_preset_gives_stride32_features(name):
    module, info = build_backbone(name)
    with torch.inference_mode():
        features = module(torch.rand(1, 3, 256, 256))[-1]
    assert info.stride == 32
    assert features.shape == (1, info.channels, 8, 8)


def test_preset_channels_match_the_paper():
    expected = {"BM": 1024, "N": 640, "P": 512, "A": 320, "EB0": 192, "ES": 256, "R34": 512}
    for name, channels in expected.items():
        assert build_backbone(name)[1].channels == channels


@pytest.mark.parametrize("name", ["test_convnext", "test_resnet", "test_efficientnet"])
def test_any_timm_name_works_and_reads_feature_info(name):
    module, info = build_backbone(name)
    features = module(torch.rand(2, 3, 128, 128))[-1]
    assert features.shape == (2, info.channels, 128 // info.stride, 128 // info.stride)


def test_unknown_backbone_lists_presets():
    with pytest.raises(UnknownNameError) as err:
        build_backbone("convnext_bse")
    assert "BM" in str(err.value) and "P28" not in str(err.value) and "R34" in str(err.value)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found"):
        build_backbone("test_convnext", pretrained=tmp_path / "missing.pth")


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    timm = import_timm()  # with the torchvision repair, whatever ran before
    full = timm.create_model("test_convnext", pretrained=False)
    path = tmp_path / "test_convnext.pth"
    torch.save(full.state_dict(), path)
    module, _ = build_backbone("test_convnext", pretrained=path)
    assert torch.equal(module.state_dict()["stem_0.weight"], full.state_dict()["stem.0.weight"])


def test_backbone_weights_come_from_a_fastgdr_run(tmp_path, tiny_model_config):
    # a backbone pretraining is a fastgdr run: its checkpoint initialises later runs' backbones
    trained = GDRNPoseNet.from_config(tiny_model_config)
    path = save_checkpoint(tmp_path / "model_final.pth", trained)
    module, _ = build_backbone("test_convnext", pretrained=path)
    expected = trained.backbone.state_dict()
    assert module.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in module.state_dict().items())
    with pytest.raises(CheckpointError, match="another backbone"):
        build_backbone("resnet18", pretrained=path)
    save_checkpoint(tmp_path / "no_backbone.pth", nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="without backbone weights"):
        build_backbone("test_convnext", pretrained=tmp_path / "no_backbone.pth")


def test_bad_out_index_is_a_clear_error():
    with pytest.raises(UnknownNameError, match="not a feature level"):
        build_backbone("test_convnext", out_index=9)


# --------------------------------------------------------------------- geometric head


def test_head_shapes_and_channel_layout():
    c, r = 3, 8
    head = GeometricHead(32, widths=(16,) * 7, gn_groups=(4,) * 7, num_classes=c, num_regions=r)
    raw = head.forward_raw(torch.rand(2, 32, 8, 8))
    assert raw.shape == (2, (5 + r + 1) * c, 64, 64) == (2, head.out_channels, 64, 64)
    out = split_head_channels(raw, c, r)
    assert out.visible_mask.shape == (2, c, 64, 64)
    assert out.amodal_mask.shape == (2, c, 64, 64)
    assert out.xyz.shape == (2, 3, c, 64, 64)
    assert out.region.shape == (2, c, r + 1, 64, 64)
    # documented order: vis | amodal | x (all classes) | y | z | regions class-major
    k = 1
    assert torch.equal(out.visible_mask[:, k], raw[:, k])
    assert torch.equal(out.amodal_mask[:, k], raw[:, c + k])
    assert torch.equal(out.xyz[:, 1, k], raw[:, 3 * c + k])  # y of class k
    assert torch.equal(out.region[:, k, 0], raw[:, 5 * c + (r + 1) * k])  # its background


def test_head_upsampling_is_align_corners_bilinear():
    head = GeometricHead(8, widths=(8,) * 7, gn_groups=(2,) * 7)
    ups = [m for m in head.features if isinstance(m, nn.Upsample)]
    assert len(ups) == 2 and all(m.align_corners and m.mode == "bilinear" for m in ups)
    gelus = [m for m in head.modules() if isinstance(m, nn.GELU)]
    assert gelus and all(m.approximate == "none" for m in gelus)


def test_default_head_parameter_count_matches_gdrnpp():
    # 1024-channel input, C=21: deconv + 7 GroupNorms + 6 convs + out layer (1470 channels)
    head = GeometricHead(1024, num_classes=21)
    expected = 1024 * 256 * 9 + 7 * 2 * 256 + 6 * 256 * 256 * 9 + 1470 * 256 + 1470
    assert sum(p.numel() for p in head.parameters()) == expected


# --------------------------------------------------------------------------- Patch-PnP


def test_patch_pnp_shapes_and_denormalization():
    pnp = PatchPnP(num_regions=4, widths=(8, 8, 8), gn_groups=(2, 2, 2), fc_widths=(16, 8))
    xyz = torch.full((2, 3, 64, 64), 0.5)
    rot, site = pnp(xyz, torch.rand(2, 2, 64, 64), torch.rand(2, 4, 64, 64), torch.rand(2, 3))
    assert rot.shape == (2, 6) and site.shape == (2, 3)
    assert pnp.fc1.in_features == 8 * 8 * 8
    assert pnp.features[0].in_channels == 3 + 2 + 4

    # xyz = 0.5 is the model origin whatever the extent: outputs must not depend on extents
    seen = []
    hook = pnp.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0][:, :3]))
    pnp(xyz, torch.rand(2, 2, 64, 64), torch.rand(2, 4, 64, 64), torch.rand(2, 3))
    hook.remove()
    assert torch.count_nonzero(seen[0]) == 0

    # a normalized coordinate of 1.0 is half the extent (in m)
    ext = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])
    seen.clear()
    hook = pnp.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0][:, :3]))
    pnp(torch.ones(2, 3, 64, 64), torch.rand(2, 2, 64, 64), torch.rand(2, 4, 64, 64), ext)
    hook.remove()
    assert torch.allclose(seen[0][:, :, 0, 0], ext / 2)


def test_default_patch_pnp_parameter_count_matches_gdrnpp():
    pnp = PatchPnP()
    expected = (
        69 * 128 * 9 + 2 * 128 * 9 * 128 + 3 * 2 * 128
        + 8192 * 1024 + 1024 + 1024 * 256 + 256 + 256 * 6 + 6 + 256 * 3 + 3
    )
    assert sum(p.numel() for p in pnp.parameters()) == expected


# ---------------------------------------------------------------------- full network


def test_pose_net_forward_shapes(tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    out = model(torch.rand(2, 3, 256, 256), torch.tensor([0, 2]), torch.rand(2, 2, 64, 64), torch.rand(2, 3))
    assert out.visible_mask.shape == out.amodal_mask.shape == (2, 1, 64, 64)
    assert out.xyz.shape == (2, 3, 64, 64)
    assert out.region.shape == (2, 9, 64, 64)
    assert out.rot6d.shape == (2, 6) and out.site.shape == (2, 3)
    assert out.features.shape == (2, model.backbone_info.channels, 8, 8)


def test_pose_net_selects_each_rois_class(tiny_model_config):
    torch.manual_seed(0)
    model = GDRNPoseNet.from_config(tiny_model_config).eval()
    images = torch.rand(3, 3, 256, 256)
    classes = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = model(images, classes, torch.rand(3, 2, 64, 64), torch.rand(3, 3))
        dense = model.geo_head_net(model.extract_features(images))
    for i, k in enumerate(classes.tolist()):
        assert torch.equal(out.visible_mask[i, 0], dense.visible_mask[i, k])
        assert torch.equal(out.amodal_mask[i, 0], dense.amodal_mask[i, k])
        assert torch.equal(out.xyz[i], dense.xyz[i, :, k])
        assert torch.equal(out.region[i], dense.region[i, k])


def test_class_agnostic_head(tiny_model_config):
    tiny_model_config.class_aware = False
    model = GDRNPoseNet.from_config(tiny_model_config)
    assert model.geo_head_net.out_channels == 5 + 8 + 1
    out = model(torch.rand(2, 3, 256, 256), torch.zeros(2, dtype=torch.long), torch.rand(2, 2, 64, 64), torch.rand(2, 3))
    assert out.region.shape == (2, 9, 64, 64)


def test_input_normalization_is_applied_and_not_saved(tiny_model_config):
    tiny_model_config.input.mean = (0.5, 0.5, 0.5)
    tiny_model_config.input.std = (0.25, 0.25, 0.25)
    model = GDRNPoseNet.from_config(tiny_model_config).eval()
    plain = GDRNPoseNet.from_config(load_config(None, ["model.backbone.name=test_convnext"]).model)
    assert not any("pixel" in k for k in model.state_dict())
    images = torch.rand(1, 3, 256, 256)
    expected = model.backbone((images - 0.5) / 0.25)[-1]
    assert torch.allclose(model.extract_features(images), expected)
    assert not plain.normalize_input


def test_decode_pose_inverts_the_targets():
    torch.manual_seed(1)
    K = torch.tensor([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
    R = rot6d_to_matrix(torch.randn(4, 6))
    t = torch.tensor([[0.05, -0.02, 0.8], [-0.1, 0.05, 1.2], [0.0, 0.0, 0.5], [0.2, 0.1, 1.5]])
    centers = torch.rand(4, 2) * 300 + 100
    whs = torch.rand(4, 2) * 100 + 20
    ratios = 64.0 / (whs.max(dim=1).values * 1.5)
    site = translation_to_site(t, centers, whs, ratios, K)
    rot6d = matrix_to_rot6d(egocentric_to_allocentric(R, t))
    R_dec, t_dec = decode_pose(rot6d, site, centers, whs, ratios, K)
    assert torch.allclose(t_dec, t, atol=1e-5)
    assert torch.allclose(R_dec, R, atol=1e-5)
