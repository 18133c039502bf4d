"""Inference fusion of ConvNeXt blocks against timm's blocks (the reference)."""

import copy

import numpy as np
import pytest
import torch

from fastgdr._compat import import_timm
from fastgdr.bench import BenchSettings
from fastgdr.bench.runner import prepare_config
from fastgdr.config import load_config
from fastgdr.data.detections import Detection
from fastgdr.inference import PosePredictor
from fastgdr.models import GDRNPoseNet
from fastgdr.models.fusion import FusedConvNeXtBlock, fuse_for_inference, why_not_fusable

from conftest import TINY_MODEL_OVERRIDES

convnext = import_timm().models.convnext


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn away from its init (LayerNorm affine, GRN γ/β and layer scale
    start at 1/0 in timm: folding them would otherwise go untested)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0) * 0.2)
    return module


def timm_block(conv_mlp: bool, use_grn: bool, layer_scale: bool, act: str = "gelu") -> torch.nn.Module:
    block = convnext.ConvNeXtBlock(16, conv_mlp=conv_mlp, use_grn=use_grn, ls_init_value=1.0 if layer_scale else None,
                                   act_layer=act)
    return randomize_(block).eval().double()


VARIANTS = {
    "v2 (conv MLP, GRN)": dict(conv_mlp=True, use_grn=True, layer_scale=False),
    "v2 (linear MLP, GRN)": dict(conv_mlp=False, use_grn=True, layer_scale=False),
    "v1 (linear MLP, layer scale)": dict(conv_mlp=False, use_grn=False, layer_scale=True),
    "v1 (conv MLP, layer scale)": dict(conv_mlp=True, use_grn=False, layer_scale=True),
    "GRN and layer scale, tanh GELU": dict(conv_mlp=False, use_grn=True, layer_scale=True, act="gelu_tanh"),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("side", [2, 9])  # GRN's scale on the activation (2×2 < 16 channels) / on fc2's weight
def test_fused_block_computes_the_reference_in_float64(variant, batch, side):
    block = timm_block(**VARIANTS[variant])
    fused = FusedConvNeXtBlock.from_block(block)
    x = torch.randn(batch, 16, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = block(x), fused(x)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_grn_samples_are_scaled_separately():
    """GRN normalizes per sample: a batch must give what each sample gives alone."""
    fused = FusedConvNeXtBlock.from_block(timm_block(conv_mlp=True, use_grn=True, layer_scale=False))
    x = torch.randn(4, 16, 9, 9, dtype=torch.float64)
    x[1] *= 10.0
    with torch.no_grad():
        together = fused(x)
        alone = torch.cat([fused(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backbone", ["test_convnext", "convnext_atto", "convnextv2_atto"])
def test_fused_network_gives_the_reference_outputs(backbone):
    cfg = load_config(None, [*TINY_MODEL_OVERRIDES, f"model.backbone.name={backbone}", "model.num_classes=3",
                                   "model.input_res=64"]).model
    torch.manual_seed(0)
    reference = randomize_(GDRNPoseNet.from_config(cfg)).eval()
    fused = copy.deepcopy(reference)
    blocks = sum(isinstance(m, convnext.ConvNeXtBlock) for m in reference.modules())
    assert fuse_for_inference(fused) == blocks > 0
    assert not any(isinstance(m, convnext.ConvNeXtBlock) for m in fused.modules())
    args = (torch.rand(2, 3, 64, 64), torch.tensor([2, 0]), torch.rand(2, 2, 16, 16), torch.rand(2, 3))
    with torch.inference_mode():
        expected, got = reference(*args), fused(*args)
    scale = expected.features.abs().max()
    torch.testing.assert_close(got.features, expected.features, rtol=1e-4, atol=1e-4 * float(scale))
    for name in ("xyz", "region", "visible_mask", "rot6d", "site"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-3, atol=1e-3)


def test_blocks_it_cannot_fuse_are_left_alone():
    timm = import_timm()
    silu = timm.create_model("test_convnext3", features_only=True).eval()  # SiLU MLP
    block = next(m for m in silu.modules() if isinstance(m, convnext.ConvNeXtBlock))
    assert "GELU" in why_not_fusable(block)
    assert fuse_for_inference(silu) == 0
    assert fuse_for_inference(timm.create_model("test_resnet", features_only=True).eval()) == 0
    strided = convnext.ConvNeXtBlock(16, 16, stride=2).eval()
    assert "strided" in why_not_fusable(strided)
    with pytest.raises(ValueError, match="cannot fuse"):
        FusedConvNeXtBlock.from_block(strided)


def test_half_precision_grn_does_not_overflow():
    block = timm_block(conv_mlp=True, use_grn=True, layer_scale=False)
    fused = FusedConvNeXtBlock.from_block(block).half()
    x = 40.0 * torch.randn(2, 16, 9, 9, dtype=torch.float64)  # squares of the hidden units pass fp16's 65504
    with torch.no_grad():
        expected, got = block(x), fused(x.half())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=2e-2, atol=2e-2 * float(expected.abs().max()))


@pytest.mark.parametrize("variant", ["v2 (conv MLP, GRN)", "v1 (linear MLP, layer scale)"])
def test_autocast_keeps_timm_residual_precision(variant):
    block = timm_block(**VARIANTS[variant]).float()
    fused = FusedConvNeXtBlock.from_block(block)
    x = torch.randn(2, 16, 9, 9)  # an fp32 input, as the stem's LayerNorm gives under autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = block(x), fused(x)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-2 * float(expected.abs().max()))


def test_blocks_that_compute_something_else_are_not_fused():
    timm = import_timm()
    with_act_norm = timm_block(conv_mlp=False, use_grn=False, layer_scale=True).float()
    with_act_norm.norm = timm.layers.LayerNormAct(16)  # LayerNorm followed by an activation
    assert "plain LayerNorm" in why_not_fusable(with_act_norm)

    class Subclass(convnext.ConvNeXtBlock):
        pass

    assert "not a timm ConvNeXtBlock" in why_not_fusable(Subclass(16))
    glu = timm_block(conv_mlp=False, use_grn=False, layer_scale=True)
    glu.mlp = timm.layers.GluMlp(16, 64)
    assert "GluMlp" in why_not_fusable(glu)
    network = timm.create_model("test_convnext", features_only=True).eval()
    next(m for m in network.modules() if isinstance(m, convnext.ConvNeXtBlock)).train()
    with pytest.raises(ValueError, match="every submodule"):
        fuse_for_inference(network)


def test_fused_networks_are_not_exported(tmp_path):
    from fastgdr.export import ExportError, export_onnx

    cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "model.input_res=64"]).model
    model = GDRNPoseNet.from_config(cfg).eval()
    fuse_for_inference(model)
    with pytest.raises(ExportError, match="before fuse_for_inference"):
        export_onnx(model, tmp_path / "fused.onnx", 64)


def test_fusion_needs_eval_mode_and_is_not_saved():
    model = import_timm().create_model("test_convnext", features_only=True)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_for_inference(model)
    keys = set(model.state_dict())
    fuse_for_inference(model.eval())
    fused_keys = set(model.state_dict())
    assert fused_keys < keys and not any(".conv_dw." in k or ".mlp." in k for k in fused_keys)
    model.to(torch.float64)  # the folded tensors are buffers: they follow the module
    block = next(m for m in model.modules() if isinstance(m, FusedConvNeXtBlock))
    assert block.fc1_weight.dtype == torch.float64


def test_predictor_poses_do_not_change_when_fused():
    cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "model.num_classes=2", "model.input_res=64"]).model
    torch.manual_seed(0)
    reference = randomize_(GDRNPoseNet.from_config(cfg)).eval()
    fused = copy.deepcopy(reference)
    fuse_for_inference(fused)
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    K = np.array([[200.0, 0, 80], [0, 200.0, 60], [0, 0, 1]])
    dets = [Detection(1, 0, 1, 0.9, (20.0, 30.0, 40.0, 20.0)), Detection(1, 0, 2, 0.8, (100.0, 10.0, 30.0, 50.0))]
    extents = {1: np.ones(3) * 50, 2: np.ones(3) * 60}
    poses = [PosePredictor(m, {1: 0, 2: 1}, extents, input_res=64).predict(image, K, dets)[0] for m in (reference, fused)]
    for a, b in zip(*poses):
        np.testing.assert_allclose(a.R, b.R, atol=1e-4)
        np.testing.assert_allclose(a.t, b.t, rtol=1e-4, atol=1e-4)


def test_benchmark_fuses_unless_compiling(tmp_path):
    assert BenchSettings().fused and not BenchSettings(compile=True).fused
    assert BenchSettings(compile=True, fuse=True).fused and not BenchSettings(fuse=False).fused
    convnext_cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "model.input_res=64"]).model
    resnet_cfg = load_config(None, [*TINY_MODEL_OVERRIDES, "model.input_res=64",
                                    "model.backbone.name=test_resnet"]).model
    settings = BenchSettings(rois=(1,))
    assert prepare_config("tiny", convnext_cfg, settings, tmp_path).fused
    assert not prepare_config("tiny_resnet", resnet_cfg, settings, tmp_path).fused  # nothing to fuse: not marked
