"""Pose network modules: backbone factory, geometric head, Patch-PnP, the full network."""

from fastgdr.models.backbones import (
    BACKBONE_PRESETS,
    BackboneInfo,
    BackbonePreset,
    build_backbone,
    resolve_backbone,
)
from fastgdr.models.geometric_head import GeometricHead, GeometricHeadOutput, split_head_channels
from fastgdr.models.patch_pnp import PatchPnP
from fastgdr.models.pose_net import GDRNPoseNet, PoseNetOutput, decode_pose

__all__ = [
    "BACKBONE_PRESETS",
    "BackboneInfo",
    "BackbonePreset",
    "GDRNPoseNet",
    "GeometricHead",
    "GeometricHeadOutput",
    "PatchPnP",
    "PoseNetOutput",
    "build_backbone",
    "decode_pose",
    "resolve_backbone",
    "split_head_channels",
]
