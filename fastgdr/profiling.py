"""Parameter and FLOP counts of a pose network, per module.

FLOPs are counted by ``torch.utils.flop_counter`` (convolutions, matrix products;
2 FLOPs per multiply-accumulate), so normalization and activations are not included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fastgdr.models.pose_net import GDRNPoseNet

MODULES = ("backbone", "geo_head_net", "pnp_net")


@dataclass(frozen=True)
class ModuleCost:
    """Parameters (count) and GFLOPs of one module for one forward pass."""

    name: str
    params: int
    gflops: float


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in module.parameters())


def example_inputs(model: GDRNPoseNet, batch: int = 1, input_res: int = 256) -> tuple[torch.Tensor, ...]:
    """Random inputs of the right shapes for ``model.forward`` (images in [0, 1])."""
    out_res = input_res // model.backbone_info.stride * 8
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, input_res, input_res, generator=generator)
    classes = torch.randint(0, model.num_classes, (batch,), generator=generator)
    coord_2d = torch.rand(batch, 2, out_res, out_res, generator=generator)
    extents = torch.full((batch, 3), 0.1)
    return tuple(t.to(device) for t in (images, classes, coord_2d, extents))


def model_costs(model: GDRNPoseNet, batch: int = 1, input_res: int = 256) -> list[ModuleCost]:
    """Costs of the backbone, geometric head, Patch-PnP and the whole network.

    The last entry is ``"total"``; GFLOPs are for ``batch`` crops of ``input_res`` px.
    """
    was_training = model.training
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*example_inputs(model, batch, input_res))
    model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    costs = [
        ModuleCost(
            name,
            count_parameters(getattr(model, name)),
            sum(counts.get(f"{root}.{name}", {}).values()) / 1e9,
        )
        for name in MODULES
    ]
    costs.append(ModuleCost("total", count_parameters(model), sum(counts["Global"].values()) / 1e9))
    return costs


def format_costs(costs: list[ModuleCost]) -> str:
    """A small text table: module, parameters in millions, GFLOPs."""
    lines = [f"{'module':<14}{'params (M)':>12}{'GFLOPs':>10}"]
    lines += [f"{c.name:<14}{c.params / 1e6:>12.3f}{c.gflops:>10.3f}" for c in costs]
    return "\n".join(lines)
