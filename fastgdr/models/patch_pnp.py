"""GDRNPP's Patch-PnP (``ConvPnPNet``): dense 2D–3D correspondences → rotation, translation.

Input channels, in this order: de-normalized object coordinates x, y, z (m), the 2D
coordinate map u/W, v/H, and the R region probabilities (softmax without background).
Three stride-2 3×3 convs with GroupNorm and GELU (64 → 8 px), flatten channel-major,
``fc1`` → GELU → ``fc2`` → GELU → ``fc_r`` (allocentric rot6d) and ``fc_t`` (SITE).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fastgdr.config import PNP_CONV_LAYERS
from fastgdr.models.geometric_head import init_gdrnpp_weights, reset_to_torch_init


class PatchPnP(nn.Module):
    """Regresses an allocentric 6D rotation and a scale-invariant translation.

    Args:
        num_regions: R, the number of region-probability input channels.
        widths: output channels of the three stride-2 convs (128 each in GDRNPP).
        gn_groups: GroupNorm groups after each conv (32 each in GDRNPP).
        fc_widths: hidden sizes of fc1 and fc2 (1024, 256 in GDRNPP).
        input_size: side of the input maps in px (64); the convs reduce it 8×.
    """

    def __init__(
        self,
        num_regions: int = 64,
        widths: Sequence[int] = (128,) * PNP_CONV_LAYERS,
        gn_groups: Sequence[int] = (32,) * PNP_CONV_LAYERS,
        fc_widths: Sequence[int] = (1024, 256),
        input_size: int = 64,
    ) -> None:
        super().__init__()
        if len(widths) != PNP_CONV_LAYERS or len(gn_groups) != PNP_CONV_LAYERS:
            raise ValueError(f"widths and gn_groups need {PNP_CONV_LAYERS} entries each")
        if input_size % 8 != 0:
            raise ValueError(f"input_size must be a multiple of 8, got {input_size}")
        self.num_regions = num_regions
        layers: list[nn.Module] = []
        in_channels = 3 + 2 + num_regions
        for width, groups in zip(widths, gn_groups):
            layers += [
                nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(groups, width),
                nn.GELU(),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        final_size = input_size // 8
        self.fc1 = nn.Linear(widths[-1] * final_size * final_size, fc_widths[0])
        self.fc2 = nn.Linear(fc_widths[0], fc_widths[1])
        self.fc_r = nn.Linear(fc_widths[1], 6)
        self.fc_t = nn.Linear(fc_widths[1], 3)
        self.act = nn.GELU()

    def init_weights(self) -> None:
        """GDRNPP's training init: convs N(0, 0.001), GroupNorm (1, 0), fc N(0, 0.001)."""
        init_gdrnpp_weights(self)

    def reset_to_torch_init(self) -> None:
        """PyTorch's default init of every layer (fan-in-scaled uniform weights and biases).

        With GDRNPP's N(0, 0.001) weights the rotation output starts input-independent and
        a short run can collapse it to one rotation for all ROIs (docs/training.md)."""
        reset_to_torch_init(self)

    def forward(
        self,
        xyz: torch.Tensor,
        coord_2d: torch.Tensor,
        region_prob: torch.Tensor,
        extents: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            xyz: [B, 3, H, W] normalized object coordinates (x / extent + 0.5).
            coord_2d: [B, 2, H, W] image coordinates of the crop's pixels (u/W, v/H).
            region_prob: [B, R, H, W] region probabilities (softmax over the R regions).
            extents: [B, 3] object bounding-box size in m, to de-normalize ``xyz``.

        Returns:
            rot6d [B, 6] (allocentric) and site [B, 3] (δx, δy, δz; see
            :func:`fastgdr.geometry.site_to_translation`).
        """
        xyz_m = (xyz - 0.5) * extents[:, :, None, None]
        x = self.features(torch.cat([xyz_m, coord_2d, region_prob], dim=1))
        x = self.act(self.fc1(x.flatten(1)))
        x = self.act(self.fc2(x))
        return self.fc_r(x), self.fc_t(x)
