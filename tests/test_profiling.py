import torch

from fastgdr.models import GDRNPoseNet, GeometricHead, PatchPnP
from fastgdr.profiling import count_parameters, model_costs


def test_costs_add_up(tiny_model_config):
    model = GDRNPoseNet.from_config(tiny_model_config)
    costs = {c.name: c for c in model_costs(model)}
    parts = ("backbone", "geo_head_net", "pnp_net")
    assert sum(costs[p].params for p in parts) == costs["total"].params == count_parameters(model)
    assert abs(sum(costs[p].gflops for p in parts) - costs["total"].gflops) < 1e-9
    assert all(costs[p].gflops > 0 for p in parts)


def test_head_flops_match_the_analytic_count():
    # 2 FLOPs per multiply-accumulate, convolutions and matrix products only
    head = GeometricHead(32, widths=(16,) * 7, gn_groups=(4,) * 7, num_classes=1, num_regions=8)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        head.forward_raw(torch.rand(1, 32, 8, 8))
    deconv = 8 * 8 * 32 * 16 * 9  # every input pixel scatters a 3x3 kernel
    convs = 9 * 16 * 16 * (2 * 16**2 + 2 * 32**2 + 2 * 64**2)
    out = 64 * 64 * 16 * 14
    assert counter.get_total_flops() == 2 * (deconv + convs + out)


def test_pnp_parameter_count_for_pruned_widths():
    pnp = PatchPnP(num_regions=64, widths=(64, 64, 64), gn_groups=(16, 16, 16), fc_widths=(960, 192))
    expected = 69 * 64 * 9 + 2 * 64 * 64 * 9 + 3 * 128 + 64 * 64 * 960 + 960 + 960 * 192 + 192 + 192 * 9 + 9
    assert count_parameters(pnp) == expected
