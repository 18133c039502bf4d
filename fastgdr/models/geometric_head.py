"""GDRNPP's geometric head (``TopDownDoubleMaskXyzRegionHead``), every width an argument.

Layout (indices are the state-dict indices of ``features``)::

    0  ConvTranspose2d(in → w0, k3, s2, p1, output_padding 1, no bias)   8 → 16 px
    1  GroupNorm(g0, w0)   2  GELU
    3  ConvGNAct(w0 → w1)  4  ConvGNAct(w1 → w2)
    5  bilinear ×2 (align_corners=True)                                  16 → 32 px
    6  ConvGNAct(w2 → w3)  7  ConvGNAct(w3 → w4)
    8  bilinear ×2 (align_corners=True)                                  32 → 64 px
    9  ConvGNAct(w4 → w5)  10 ConvGNAct(w5 → w6)
    out_layer  Conv2d(w6 → 70·C, k1, bias)

Output channels of ``out_layer`` (C = classes, 1 for a class-agnostic head, R = regions):
``[0, C)`` visible mask, ``[C, 2C)`` amodal mask, ``[2C, 5C)`` xyz coordinate-major
(x of all classes, then y, then z), ``[5C, 5C + (R+1)·C)`` region logits class-major,
background first. All outputs are raw (no activation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from fastgdr.config import GEO_HEAD_LAYERS


def init_gdrnpp_weights(module: nn.Module, std: float = 0.001) -> None:
    """GDRNPP's init of its heads: conv and linear weights N(0, std), biases 0, GroupNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def reset_to_torch_init(module: nn.Module) -> None:
    """PyTorch's default init (``reset_parameters``) of every layer inside ``module``."""
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


class ConvGNAct(nn.Module):
    """3×3 conv (no bias) → GroupNorm → exact GELU; keys ``conv.*`` and ``norm.*``.

    GDRNPP checkpoints store the same GroupNorm a second time under ``gn.*``; the
    checkpoint loader folds those duplicates into ``norm.*``.
    """

    def __init__(self, in_channels: int, out_channels: int, gn_groups: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.norm = nn.GroupNorm(gn_groups, out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


@dataclass
class GeometricHeadOutput:
    """Dense predictions for every class at the head's output resolution (H = W = 64).

    Attributes:
        visible_mask: [B, C, H, W] visible-mask values (GDRNPP regresses them with L1).
        amodal_mask: [B, C, H, W] full (amodal) mask values.
        xyz: [B, 3, C, H, W] normalized object coordinates (x / extent + 0.5).
        region: [B, C, R + 1, H, W] region logits, channel 0 = background.
    """

    visible_mask: torch.Tensor
    amodal_mask: torch.Tensor
    xyz: torch.Tensor
    region: torch.Tensor


def split_head_channels(raw: torch.Tensor, num_classes: int, num_regions: int) -> GeometricHeadOutput:
    """Split the out layer's [B, (5 + R + 1)·C, H, W] tensor into named predictions."""
    b, _, h, w = raw.shape
    c = num_classes
    expected = (5 + num_regions + 1) * c
    if raw.shape[1] != expected:
        raise ValueError(f"head output has {raw.shape[1]} channels, expected {expected}")
    return GeometricHeadOutput(
        visible_mask=raw[:, :c],
        amodal_mask=raw[:, c : 2 * c],
        xyz=raw[:, 2 * c : 5 * c].view(b, 3, c, h, w),
        region=raw[:, 5 * c :].view(b, c, num_regions + 1, h, w),
    )


class GeometricHead(nn.Module):
    """Upsamples stride-32 backbone features to 64×64 masks, coordinates and regions.

    Args:
        in_channels: backbone feature channels (from the backbone's ``feature_info``).
        widths: output channels of the 7 layers (256 each in GDRNPP).
        gn_groups: GroupNorm groups after each layer (32 each in GDRNPP).
        num_classes: C for a class-aware head, 1 for a class-agnostic one.
        num_regions: surface regions R (64 in GDRNPP).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (256,) * GEO_HEAD_LAYERS,
        gn_groups: Sequence[int] = (32,) * GEO_HEAD_LAYERS,
        num_classes: int = 1,
        num_regions: int = 64,
    ) -> None:
        super().__init__()
        if len(widths) != GEO_HEAD_LAYERS or len(gn_groups) != GEO_HEAD_LAYERS:
            raise ValueError(f"widths and gn_groups need {GEO_HEAD_LAYERS} entries each")
        self.num_classes = num_classes
        self.num_regions = num_regions
        w, g = list(widths), list(gn_groups)
        upsample = lambda: nn.UpsamplingBilinear2d(scale_factor=2)  # align_corners=True
        self.features = nn.ModuleList(
            [
                nn.ConvTranspose2d(
                    in_channels, w[0], 3, stride=2, padding=1, output_padding=1, bias=False
                ),
                nn.GroupNorm(g[0], w[0]),
                nn.GELU(),
                ConvGNAct(w[0], w[1], g[1]),
                ConvGNAct(w[1], w[2], g[2]),
                upsample(),
                ConvGNAct(w[2], w[3], g[3]),
                ConvGNAct(w[3], w[4], g[4]),
                upsample(),
                ConvGNAct(w[4], w[5], g[5]),
                ConvGNAct(w[5], w[6], g[6]),
            ]
        )
        self.out_layer = nn.Conv2d(w[6], (5 + num_regions + 1) * num_classes, 1)

    @property
    def out_channels(self) -> int:
        return self.out_layer.out_channels

    def init_weights(self) -> None:
        """GDRNPP's training init: convs N(0, 0.001), GroupNorm (1, 0), out layer N(0, 0.01)."""
        init_gdrnpp_weights(self)
        nn.init.normal_(self.out_layer.weight, std=0.01)
        nn.init.zeros_(self.out_layer.bias)

    def reset_to_torch_init(self) -> None:
        """PyTorch's default init of every layer. With GDRNPP's N(0, 0.001) conv weights
        in front of GroupNorm, Adam's first steps change each weight by about its own size,
        so short runs start with a head that random-walks (docs/training.md)."""
        reset_to_torch_init(self)

    def forward_raw(self, features: torch.Tensor) -> torch.Tensor:
        """[B, in, h, w] → [B, (6 + R)·C, 8h, 8w] raw out-layer channels."""
        x = features
        for layer in self.features:
            x = layer(x)
        return self.out_layer(x)

    def forward(self, features: torch.Tensor) -> GeometricHeadOutput:
        return split_head_channels(self.forward_raw(features), self.num_classes, self.num_regions)
