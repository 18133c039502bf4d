"""The GDRNPP pose network (``GDRN_DoubleMask``): backbone → geometric head → Patch-PnP.

``GDRNPoseNet.forward`` returns predictions only; losses live in ``fastgdr.losses`` and
pose decoding (allocentric → egocentric, SITE → translation) in :func:`decode_pose`.
State-dict keys are GDRNPP's: ``backbone.*``, ``geo_head_net.*``, ``pnp_net.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastgdr.config import ModelConfig
from fastgdr.geometry import allocentric_to_egocentric, rot6d_to_matrix, site_to_translation
from fastgdr.models.backbones import BackboneInfo, build_backbone
from fastgdr.models.geometric_head import GeometricHead
from fastgdr.models.patch_pnp import PatchPnP


@dataclass
class PoseNetOutput:
    """Per-ROI predictions, with class-aware channels already selected by ROI class.

    Attributes:
        visible_mask: [B, 1, 64, 64] raw visible-mask values.
        amodal_mask: [B, 1, 64, 64] raw amodal-mask values.
        xyz: [B, 3, 64, 64] normalized object coordinates (x / extent + 0.5).
        region: [B, R + 1, 64, 64] region logits, channel 0 = background.
        rot6d: [B, 6] allocentric rotation in the 6D representation.
        site: [B, 3] scale-invariant translation (δx, δy, δz).
        features: [B, C_bb, 8, 8] backbone feature map (for feature distillation).
    """

    visible_mask: torch.Tensor
    amodal_mask: torch.Tensor
    xyz: torch.Tensor
    region: torch.Tensor
    rot6d: torch.Tensor
    site: torch.Tensor
    features: torch.Tensor


class GDRNPoseNet(nn.Module):
    """GDRNPP's pose network on any backbone, with every width a constructor argument.

    Args:
        backbone: module returning ``[features]`` (stride 32).
        backbone_info: its output channels and stride.
        geo_head_net: the geometric head; its ``num_classes`` decides class awareness.
        pnp_net: Patch-PnP.
        pixel_mean, pixel_std: per-channel normalization applied to the input crop
            (which arrives in [0, 1]); GDRNPP uses mean 0 and std 1.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_info: BackboneInfo,
        geo_head_net: GeometricHead,
        pnp_net: PatchPnP,
        pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_info = backbone_info
        self.geo_head_net = geo_head_net
        self.pnp_net = pnp_net
        self.normalize_input = tuple(pixel_mean) != (0.0, 0.0, 0.0) or tuple(pixel_std) != (
            1.0,
            1.0,
            1.0,
        )
        # Not persistent: GDRNPP checkpoints have no such keys.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: ModelConfig, init_heads: bool = True, read_pretrained: bool = True) -> "GDRNPoseNet":
        """Build the network a :class:`~fastgdr.config.ModelConfig` describes.

        Args:
            init_heads: apply GDRNPP's training initialisation to the head and Patch-PnP.
            read_pretrained: load ``cfg.backbone.pretrained``; False when every weight
                will come from a checkpoint (the ImageNet file need not exist then).
        """
        pretrained = cfg.backbone.pretrained if read_pretrained else None
        backbone, info = build_backbone(cfg.backbone.name, pretrained, cfg.backbone.out_index, cfg.input_res)
        geo_head = GeometricHead(
            info.channels,
            cfg.geo_head.widths,
            cfg.geo_head.gn_groups,
            num_classes=cfg.num_classes if cfg.class_aware else 1,
            num_regions=cfg.num_regions,
        )
        pnp = PatchPnP(
            cfg.num_regions,
            cfg.pnp.widths,
            cfg.pnp.gn_groups,
            cfg.pnp.fc_widths,
            input_size=cfg.input_res // info.stride * 8,
        )
        if init_heads:
            geo_head.init_weights()
            pnp.init_weights()
        return cls(backbone, info, geo_head, pnp, cfg.input.mean, cfg.input.std)

    @property
    def num_classes(self) -> int:
        """Output classes of the head (1 for a class-agnostic head)."""
        return self.geo_head_net.num_classes

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] crops in [0, 1] → [B, C_bb, H/32, W/32] backbone features."""
        if self.normalize_input:
            images = (images - self.pixel_mean) / self.pixel_std
        return self.backbone(images)[-1]

    def forward(
        self,
        images: torch.Tensor,
        roi_classes: torch.Tensor,
        roi_coord_2d: torch.Tensor,
        roi_extents: torch.Tensor,
    ) -> PoseNetOutput:
        """
        Args:
            images: [B, 3, 256, 256] crops scaled to [0, 1] in the configured channel
                order (BGR for GDRNPP checkpoints).
            roi_classes: [B] int64 0-based class index of each ROI (ignored, may be
                zeros, for a class-agnostic head).
            roi_coord_2d: [B, 2, 64, 64] image coordinates u/W, v/H of the output pixels.
            roi_extents: [B, 3] object bounding-box sizes in m.
        """
        features = self.extract_features(images)
        vis, amodal, xyz, region = self.dense_predictions(features, roi_classes)
        region_prob = torch.softmax(region[:, 1:], dim=1)
        rot6d, site = self.pnp_net(xyz, roi_coord_2d, region_prob, roi_extents)
        return PoseNetOutput(vis, amodal, xyz, region, rot6d, site, features)

    def dense_predictions(
        self, features: torch.Tensor, roi_classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The geometric head's maps for each ROI's class: visible mask [B, 1, s, s],
        amodal mask [B, 1, s, s], xyz [B, 3, s, s] and region logits [B, R + 1, s, s]."""
        dense = self.geo_head_net(features)
        if self.num_classes > 1:
            batch = torch.arange(features.shape[0], device=features.device)
            cls = roi_classes.long()
            return (
                dense.visible_mask[batch, cls, None], dense.amodal_mask[batch, cls, None],
                dense.xyz[batch, :, cls], dense.region[batch, cls],
            )
        return dense.visible_mask, dense.amodal_mask, dense.xyz[:, :, 0], dense.region[:, 0]


def decode_pose(
    rot6d: torch.Tensor,
    site: torch.Tensor,
    roi_centers: torch.Tensor,
    roi_whs: torch.Tensor,
    resize_ratios: torch.Tensor,
    K: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Egocentric rotation and translation from the network's rot6d and SITE outputs.

    Args:
        rot6d: [B, 6] allocentric rotation.
        site: [B, 3] (δx, δy, δz).
        roi_centers: [B, 2] box centres in px.
        roi_whs: [B, 2] box widths and heights in px.
        resize_ratios: [B] output resolution / crop size (64 / s).
        K: [B, 3, 3] or [3, 3] camera intrinsics.

    Returns:
        R [B, 3, 3] (model → camera) and t [B, 3] in the unit δz was trained in (m).
    """
    t = site_to_translation(site, roi_centers, roi_whs, resize_ratios, K)
    R = allocentric_to_egocentric(rot6d_to_matrix(rot6d), t)
    return R, t
