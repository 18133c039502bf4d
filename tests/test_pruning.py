"""L1 pruning of the geometric head and Patch-PnP: reference behaviour, channel surgery, files, tool."""

import copy
import subprocess
import sys
import time
from dataclasses import fields, replace

import pytest
import torch
from torch import nn

from fastgdr.checkpoint import read_checkpoint, save_checkpoint
from fastgdr.config import ModelConfig, load_config, to_dict
from fastgdr.errors import ConfigError, UnknownNameError
from fastgdr.inference import load_model
from fastgdr.models import GDRNPoseNet
from fastgdr.profiling import count_parameters, example_inputs
from fastgdr.pruning import (
    PRUNING_IMPORTANCE,
    PruningBase,
    PruningError,
    apply_pruning,
    check_init_widths,
    fc1_columns,
    l1_filter_norms,
    measure_latency,
    plan_pruning,
    prune_pose_net,
    pruned_widths,
    pruning_base,
    save_pruned,
)

from conftest import REPO

# Head: 7 × 32 channels in 8 groups of 4 (geo_d 0–7); Patch-PnP: 3 × 16 in 4 groups of 4
# (pnp_d 0–3); 128 px crops, so Patch-PnP ends on a 4×4 map (fc1 has 16 columns per channel).
TINY = [
    "model.backbone.name=test_convnext",
    "model.input_res=128",
    "model.num_classes=3",
    "model.num_regions=8",
    "model.geo_head.widths=[32,32,32,32,32,32,32]",
    "model.geo_head.gn_groups=[8,8,8,8,8,8,8]",
    "model.pnp.widths=[16,16,16]",
    "model.pnp.gn_groups=[4,4,4]",
    "model.pnp.fc_widths=[32,16]",
]
RES = 128


@pytest.fixture(scope="module")
def tiny():
    """(model, config) with random weights and random GroupNorm affines; do not modify."""
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    model = GDRNPoseNet.from_config(cfg.model, init_heads=False).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model, cfg


@pytest.fixture(scope="module")
def inputs(tiny):
    return example_inputs(tiny[0], batch=2, input_res=RES)


@pytest.fixture(scope="module")
def reference(tiny, inputs):
    """The unpruned model's outputs on ``inputs``."""
    return outputs(tiny[0], inputs)


def outputs(model, inputs):
    with torch.no_grad():
        out = model(*inputs)
    return {f.name: getattr(out, f.name) for f in fields(out)}


def set_filter_scales(conv: nn.Module, scales) -> None:
    """Give output filter c of a conv/deconv/linear layer the L1 norm ∝ scales[c]."""
    scales = torch.as_tensor(scales, dtype=torch.float32)
    with torch.no_grad():
        if isinstance(conv, nn.ConvTranspose2d):
            conv.weight.copy_(scales.view(1, -1, 1, 1).expand_as(conv.weight))
        else:
            conv.weight.copy_(scales.view(-1, *[1] * (conv.weight.dim() - 1)).expand_as(conv.weight))


def group_scales(per_group, size):
    return torch.as_tensor(per_group, dtype=torch.float32).repeat_interleave(size)


# --------------------------------------------------------------------------- reference behaviour


@pytest.mark.parametrize("granularity", ["group", "filter"])
@pytest.mark.parametrize("prune_fc", [False, True])
def test_d0_leaves_every_output_unchanged(tiny, inputs, reference, granularity, prune_fc):
    model, cfg = tiny
    pruned, pruned_cfg = prune_pose_net(model, cfg.model, 0, 0, granularity, prune_fc)
    assert pruned is not model and pruned_cfg == cfg.model
    after = outputs(pruned, inputs)
    assert after.keys() == reference.keys()
    for name in reference:
        assert torch.equal(reference[name], after[name]), name


def test_group_pruning_keeps_the_first_layers_normalized_activations(tiny, inputs):
    model, cfg = tiny
    plan = plan_pruning(model, cfg.model, geo_d=3, pnp_d=0)
    pruned, _ = apply_pruning(model, cfg.model, plan)
    seen = {}
    hooks = [
        m.geo_head_net.features[1].register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, o))
        for k, m in (("before", model), ("after", pruned))
    ]
    outputs(model, inputs), outputs(pruned, inputs)
    for hook in hooks:
        hook.remove()
    assert seen["after"].shape[1] == 20 and pruned.geo_head_net.features[1].num_groups == 5
    torch.testing.assert_close(seen["after"], seen["before"][:, plan.geo_keep[0]], rtol=1e-5, atol=1e-5)


def test_largest_groups_are_kept_in_original_order(tiny):
    model, cfg = copy.deepcopy(tiny[0]), tiny[1]
    head = model.geo_head_net.features
    set_filter_scales(head[0], group_scales([5, 1, 7, 3, 8, 2, 6, 4], 4))  # deconv [in, out, k, k]
    set_filter_scales(model.pnp_net.features[0], group_scales([2, 9, 1, 5], 4))
    with torch.no_grad():  # mark channels so that following them can be checked
        head[1].weight.copy_(torch.arange(32.0))
        marks = group_scales([3, 1, 4, 8, 5, 2, 7, 6], 4)[:, None] * 1e4 + torch.arange(32.0 * 32).view(32, 32)
        head[3].conv.weight.copy_(marks[:, :, None, None].expand_as(head[3].conv.weight))
        model.pnp_net.features[1].bias.copy_(torch.arange(16.0))
    plan = plan_pruning(model, cfg.model, geo_d=3, pnp_d=2)
    channels = lambda groups, size: torch.tensor([g * size + i for g in groups for i in range(size)])  # noqa: E731
    assert torch.equal(plan.geo_keep[0], channels([0, 2, 4, 6, 7], 4))
    assert torch.equal(plan.geo_keep[1], channels([2, 3, 4, 6, 7], 4))
    assert torch.equal(plan.pnp_keep[0], channels([1, 3], 4))

    pruned, _ = apply_pruning(model, cfg.model, plan)
    new = pruned.geo_head_net.features
    assert torch.equal(new[1].weight, plan.geo_keep[0].float())
    expected = head[3].conv.weight[plan.geo_keep[1]][:, plan.geo_keep[0]]
    assert torch.equal(new[3].conv.weight, expected)
    assert torch.equal(pruned.pnp_net.features[1].bias, plan.pnp_keep[0].float())
    assert torch.equal(pruned.pnp_net.features[3].weight, model.pnp_net.features[3].weight[plan.pnp_keep[1]][:, plan.pnp_keep[0]])
    assert torch.equal(pruned.geo_head_net.out_layer.weight, model.geo_head_net.out_layer.weight[:, plan.geo_keep[6]])


def test_filter_granularity_keeps_the_largest_filters(tiny):
    model, cfg = copy.deepcopy(tiny[0]), tiny[1]
    scales = torch.randperm(32, generator=torch.Generator().manual_seed(1)).float() + 1
    set_filter_scales(model.geo_head_net.features[0], scales)
    plan = plan_pruning(model, cfg.model, geo_d=3, pnp_d=1, granularity="filter")
    assert torch.equal(plan.geo_keep[0], torch.topk(scales, 20).indices.sort().values)
    pruned, pruned_cfg = apply_pruning(model, cfg.model, plan)
    assert pruned_cfg.geo_head.widths == (20,) * 7 and pruned_cfg.geo_head.gn_groups == (5,) * 7
    assert pruned_cfg.pnp.widths == (12,) * 3 and pruned_cfg.pnp.gn_groups == (3,) * 3
    assert pruned.geo_head_net.features[1].num_groups == 5


def head_params(in_channels, w, out_channels):
    deconv = in_channels * w[0] * 9 + 2 * w[0]
    convs = sum(w[i - 1] * w[i] * 9 + 2 * w[i] for i in range(1, 7))
    return deconv + convs + w[6] * out_channels + out_channels


def pnp_params(in_channels, v, f, spatial):
    convs = sum(a * b * 9 + 2 * b for a, b in zip([in_channels, *v[:2]], v))
    return convs + v[2] * spatial * f[0] + f[0] + f[0] * f[1] + f[1] + f[1] * 6 + 6 + f[1] * 3 + 3


@pytest.mark.parametrize("geo_d, pnp_d, prune_fc", [(0, 0, False), (1, 1, False), (3, 2, True), (7, 3, True)])
def test_parameter_counts_match_the_layer_formula(tiny, geo_d, pnp_d, prune_fc):
    model, cfg = tiny
    pruned, _ = prune_pose_net(model, cfg.model, geo_d, pnp_d, prune_fc=prune_fc)
    w = [32 - 4 * geo_d] * 7
    v = [16 - 4 * pnp_d] * 3
    f = [32 - 4 * pnp_d, 16 - 4 * pnp_d] if prune_fc else [32, 16]
    regions, classes = 8, 3
    assert count_parameters(pruned.geo_head_net) == head_params(model.backbone_info.channels, w, (6 + regions) * classes)
    assert count_parameters(pruned.pnp_net) == pnp_params(5 + regions, v, f, spatial=4 * 4)
    assert count_parameters(pruned.backbone) == count_parameters(model.backbone)


@pytest.mark.parametrize("granularity", ["group", "filter"])
def test_fc1_columns_follow_the_last_convs_channels(tiny, granularity):
    model, cfg = copy.deepcopy(tiny[0]), tiny[1]
    pnp = model.pnp_net
    channel = torch.arange(16)
    set_filter_scales(pnp.features[6], 1 + 10 * (channel % 2 == 0) + 0.01 * channel)  # even filters are large
    with torch.no_grad():
        pnp.fc1.weight.copy_(torch.arange(float(pnp.fc1.in_features)).expand_as(pnp.fc1.weight))
    plan = plan_pruning(model, cfg.model, geo_d=0, pnp_d=2, granularity=granularity)
    kept = plan.pnp_keep[2]
    expected_channels = list(range(8, 16)) if granularity == "group" else list(range(0, 16, 2))
    assert kept.tolist() == expected_channels
    pruned, _ = apply_pruning(model, cfg.model, plan)
    spatial = 16  # 128 px crop → 32 px maps → 4 × 4 after three stride-2 convs
    expected = torch.tensor([float(c * spatial + s) for c in expected_channels for s in range(spatial)])
    assert torch.equal(pruned.pnp_net.fc1.weight[0], expected)
    assert torch.equal(fc1_columns(torch.tensor([1, 3]), 2), torch.tensor([2, 3, 6, 7]))


def test_prune_fc_keeps_the_largest_rows_and_follows_them(tiny):
    model, cfg = copy.deepcopy(tiny[0]), tiny[1]
    pnp = model.pnp_net
    scales = torch.randperm(32, generator=torch.Generator().manual_seed(2)).float() + 1
    set_filter_scales(pnp.fc1, scales)
    plan = plan_pruning(model, cfg.model, 0, 1, prune_fc=True)
    keep1, keep2 = plan.fc_keep
    assert torch.equal(keep1, torch.topk(scales, 28).indices.sort().values) and len(keep2) == 12
    pruned, pruned_cfg = apply_pruning(model, cfg.model, plan)
    assert pruned_cfg.pnp.fc_widths == (28, 12)
    assert torch.equal(pruned.pnp_net.fc1.bias, pnp.fc1.bias[keep1])
    assert torch.equal(pruned.pnp_net.fc2.weight, pnp.fc2.weight[keep2][:, keep1])
    assert torch.equal(pruned.pnp_net.fc_t.weight, pnp.fc_t.weight[:, keep2])


def test_l1_importance_of_conv_deconv_and_linear():
    deconv = nn.ConvTranspose2d(2, 3, 1, bias=False)
    conv = nn.Conv2d(2, 3, 1, bias=False)
    linear = nn.Linear(2, 3)
    for layer in (deconv, conv, linear):
        set_filter_scales(layer, [1.0, -2.0, 3.0])
    for layer in (deconv, conv, linear):
        assert torch.equal(l1_filter_norms(layer), torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))
    assert PRUNING_IMPORTANCE.get("l1") is l1_filter_norms
    with pytest.raises(UnknownNameError, match="Valid: l1"):
        PRUNING_IMPORTANCE.get("l3")


def test_latency_is_measured_per_call_interleaved():
    slow, fast = measure_latency([lambda: time.sleep(0.003), lambda: None], torch.device("cpu"), warmup=1, repeats=5)
    assert slow.median_ms >= 3.0 > fast.median_ms and slow.min_ms <= slow.median_ms <= slow.max_ms


# --------------------------------------------------------------------------- files and export


def save_source(tmp_path, tiny):
    model, cfg = tiny
    return save_checkpoint(tmp_path / "model_final.pth", model, config=to_dict(cfg))


def test_pruned_checkpoint_reloads_fine_tunes_and_traces(tmp_path, tiny, inputs):
    model, cfg = tiny
    source = save_source(tmp_path, tiny)
    plan = plan_pruning(model, cfg.model, geo_d=5, pnp_d=2, prune_fc=True)
    pruned, pruned_model_cfg = apply_pruning(model, cfg.model, plan)
    path = save_pruned(tmp_path / "p" / "pruned.pth", pruned, replace(cfg, model=pruned_model_cfg), source, plan)

    record = read_checkpoint(path)["pruning"]
    assert record["geo_d"] == 5 and record["pnp_d"] == 2 and record["source_checkpoint"] == str(source)
    assert record["base"]["geo_head"]["widths"] == [32] * 7 and record["kept"]["geo_head"][0] == plan.geo_keep[0].tolist()
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg.model.geo_head.widths == (12,) * 7 and loaded_cfg.model.pnp.fc_widths == (24, 8)
    expected = outputs(pruned, inputs)
    for name, value in outputs(loaded, inputs).items():
        assert torch.equal(value, expected[name]), name

    loaded.train()
    optimizer = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    out = loaded(*inputs)
    loss = sum(getattr(out, f.name).pow(2).mean() for f in fields(out) if f.name != "features")
    loss.backward()
    before = loaded.geo_head_net.out_layer.weight.detach().clone()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, loaded.geo_head_net.out_layer.weight)

    class AsTuple(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, *args):
            out = self.net(*args)
            return tuple(getattr(out, f.name) for f in fields(out))

    loaded.eval()
    with torch.no_grad():
        traced = torch.jit.trace(AsTuple(loaded), inputs, check_trace=False)
        for got, want in zip(traced(*inputs), AsTuple(loaded)(*inputs)):
            torch.testing.assert_close(got, want)


def test_a_pruned_checkpoint_prunes_further_from_its_recorded_base(tmp_path, tiny):
    model, cfg = tiny
    plan = plan_pruning(model, cfg.model, geo_d=6, pnp_d=1)
    pruned, pruned_model_cfg = apply_pruning(model, cfg.model, plan)
    path = save_pruned(tmp_path / "d6.pth", pruned, replace(cfg, model=pruned_model_cfg), None, plan)
    loaded, loaded_cfg = load_model(path)
    base = pruning_base(read_checkpoint(path), loaded_cfg.model, str(path))
    assert base == PruningBase.of(cfg.model)
    _, further = prune_pose_net(loaded, loaded_cfg.model, 7, 3, base=base)
    assert further.geo_head.widths == (4,) * 7 and further.pnp.widths == (4,) * 3
    with pytest.raises(PruningError, match=r"already pruned past the request: geometric head layer 0 has 8 channels in 2 groups \(D=6"):
        plan_pruning(loaded, loaded_cfg.model, 4, 1, base=base)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "geo_d, pnp_d, message",
    [
        (32, 0, "geo_d=32 is outside 0–31: geometric head layer 0 has 32 GroupNorm groups of 8 channels"),
        (-1, 0, "geo_d=-1 is outside 0–31"),
        (0, 32, "pnp_d=32 is outside 0–31: Patch-PnP layer 0 has 32 GroupNorm groups of 4 channels"),
    ],
)
def test_d_outside_the_groups_is_refused(geo_d, pnp_d, message):
    gdrnpp = ModelConfig()
    with pytest.raises(PruningError, match=message):
        pruned_widths(PruningBase.of(gdrnpp), gdrnpp, geo_d, pnp_d)


def test_gdrnpp_widths_at_d28_are_the_p28_config_and_pnp16_has_its_own_name():
    gdrnpp = ModelConfig()
    head_only = pruned_widths(PruningBase.of(gdrnpp), gdrnpp, 28, 0)
    both = pruned_widths(PruningBase.of(gdrnpp), gdrnpp, 28, 16)
    for name in ("p28", "n28"):  # FAST GDRNPP's l1_geo28_pnp0_region64: the head only
        cfg = load_config(REPO / f"configs/{name}.yaml")
        assert (cfg.model.geo_head, cfg.model.pnp) == head_only and cfg.model.pnp == gdrnpp.pnp
        assert cfg.train.epochs == 15
        pnp16 = load_config(REPO / f"configs/{name}_pnp16.yaml")
        assert (pnp16.model.geo_head, pnp16.model.pnp) == both
        assert pnp16.model.backbone.name == cfg.model.backbone.name
    _, pnp_fc = pruned_widths(PruningBase.of(gdrnpp), gdrnpp, 28, 16, prune_fc=True)
    assert pnp_fc.fc_widths == (960, 192)


# FAST GDRNPP's Table 5 (YCB-V, 21 classes), in M parameters; the Patch-PnP-pruned variants are ours
TABLE5_PARAMS_M = {"bm": 102.87, "n": 29.41, "p": 22.68, "n28": 24.30, "p28": 17.83,
                   "n28_pnp16": 19.84, "p28_pnp16": 13.38}


@pytest.mark.parametrize("name", TABLE5_PARAMS_M)
def test_parameter_counts_at_21_classes_are_table5s(name):
    cfg = load_config(REPO / f"configs/{name}.yaml", ["model.num_classes=21"]).model
    model = GDRNPoseNet.from_config(cfg, init_heads=False, read_pretrained=False)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(TABLE5_PARAMS_M[name], abs=0.005)


def test_a_d28_checkpoint_cannot_be_pruned_to_d20():
    p28 = load_config(REPO / "configs/p28_pnp16.yaml").model
    with pytest.raises(PruningError) as err:
        pruned_widths(PruningBase.of(ModelConfig()), p28, 20, 16)
    assert str(err.value) == (
        "the checkpoint is already pruned past the request: geometric head layer 0 has 32 channels in 4 groups "
        "(D=28 from 256 in 32), but geo_d=20 asks for 96 channels in 12 groups; pruning only removes channels "
        "(ask for geo_d >= 28, or prune the unpruned checkpoint)"
    )


def test_tiny_d_range_and_granularity_errors(tiny):
    model, cfg = tiny
    with pytest.raises(PruningError, match="geo_d=8 is outside 0–7"):
        plan_pruning(model, cfg.model, 8, 0)
    with pytest.raises(PruningError, match="pnp_d=4 is outside 0–3"):
        plan_pruning(model, cfg.model, 0, 4)
    with pytest.raises(PruningError, match="unknown granularity 'channel'; valid: group, filter"):
        plan_pruning(model, cfg.model, 1, 1, granularity="channel")


def test_init_checkpoint_with_other_widths_is_refused(tmp_path, tiny):
    model, cfg = tiny
    pruned, pruned_model_cfg = prune_pose_net(model, cfg.model, 2, 1)
    path = save_checkpoint(tmp_path / "pruned.pth", pruned, config=to_dict(replace(cfg, model=pruned_model_cfg)))
    with pytest.raises(ConfigError) as err:
        check_init_widths(path, cfg.model)
    assert "model.geo_head: checkpoint widths [24, 24, 24, 24, 24, 24, 24], gn_groups [6" in str(err.value)
    assert "vs training config widths [32, 32, 32, 32, 32, 32, 32], gn_groups [8" in str(err.value)
    check_init_widths(path, pruned_model_cfg)
    check_init_widths(save_checkpoint(tmp_path / "bare.pth", pruned), cfg.model)  # no config: strict load decides


# --------------------------------------------------------------------------- tool


def prune_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools/prune.py"), *args], capture_output=True, text=True)


def test_tool_prints_before_and_after_and_writes_a_loadable_checkpoint(tmp_path, tiny):
    source = save_source(tmp_path, tiny)
    out = tmp_path / "p" / "pruned.pth"
    result = prune_tool("--ckpt", str(source), "--geo-d", "3", "--pnp-d", "2", "--out", str(out), "--repeats", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    for text in ("geo_head_net", "pnp_net", "total", "GFLOPs", "latency ms", "widths [32, 32, 32, 32, 32, 32, 32] -> [20"):
        assert text in result.stdout, text
    table = [line for line in result.stdout.splitlines() if line.startswith("geo_head_net")][0]
    assert table.count("→") == 3
    assert load_config(out.with_suffix(".yaml")).model.pnp.widths == (8, 8, 8)
    assert load_model(out)[1].model.geo_head.gn_groups == (5,) * 7

    missing = prune_tool("--ckpt", str(tmp_path / "nope.pth"), "--geo-d", "28", "--out", str(tmp_path / "y.pth"))
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_tool_help_has_examples():
    result = prune_tool("--help")
    assert result.returncode == 0 and "Examples:" in result.stdout and "--geo-d 28 --out" in result.stdout
