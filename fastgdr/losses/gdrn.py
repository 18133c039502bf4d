"""GDRNPP's training losses (``GDRN_DoubleMask.gdrn_loss`` with the BOP-2022 settings).

Every term is a pure function of the network output and one batch of targets; the
total loss is the plain sum of the weighted terms. Conventions: xyz coordinates are
normalized (x / extent + 0.5), masks are {0, 1} floats regressed with L1 on the raw
outputs, rotations act on column vectors (``x_cam = R @ x_obj``), model points and
translations are in m.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgdr.config import LossWeights
from fastgdr.geometry import egocentric_to_allocentric, rot6d_to_matrix, site_to_translation
from fastgdr.models.pose_net import PoseNetOutput, decode_pose

# GDRNPP's PM loss is 3 × the L1 mean over B × N × 3 (= the per-point L1 sum, averaged).
_PM_LOSS_SCALE = 3.0


@dataclass
class GDRNTargets:
    """Ground truth for one training batch of B ROIs (tensors on the model's device).

    Attributes:
        xyz: [B, 3, 64, 64] normalized GT object coordinates (0 where there is no object).
        mask_visible: [B, 64, 64] float {0, 1} visible mask after the truncation
            augmentation (GDRNPP's "trunc" mask), the target of the visible-mask loss.
        mask_xyz: [B, 64, 64] float {0, 1} visible mask before the truncation cut
            (GDRNPP's "visib" mask): the pixels of the coordinate and region losses.
        mask_amodal: [B, 64, 64] float {0, 1} full silhouette.
        region: [B, 64, 64] int64 region label, 0 = background, 1..R = FPS region.
        rot: [B, 3, 3] GT egocentric rotation (model → camera).
        site: [B, 3] GT SITE (δx, δy, δz), δz in m / resize_ratio.
        roi_centers: [B, 2] box centres in px.
        roi_whs: [B, 2] box widths and heights in px.
        resize_ratios: [B] output resolution / crop size (64 / s).
        K: [B, 3, 3] camera intrinsics (px).
        model_points: [B, N, 3] model points in m (object frame).
        sym_rots: [B, S, 3, 3] symmetry rotations of each ROI's object (object frame),
            identity first, padded with identities to a common S.
    """

    xyz: Tensor
    mask_visible: Tensor
    mask_xyz: Tensor
    mask_amodal: Tensor
    region: Tensor
    rot: Tensor
    site: Tensor
    roi_centers: Tensor
    roi_whs: Tensor
    resize_ratios: Tensor
    K: Tensor
    model_points: Tensor
    sym_rots: Tensor


def _target_shapes(batch: int, size: tuple[int, int]) -> dict[str, tuple[int | None, ...]]:
    """Expected target shapes; ``None`` matches any size (N points, S symmetries)."""
    h, w = size
    return {
        "xyz": (batch, 3, h, w),
        "mask_visible": (batch, h, w),
        "mask_xyz": (batch, h, w),
        "mask_amodal": (batch, h, w),
        "region": (batch, h, w),
        "rot": (batch, 3, 3),
        "site": (batch, 3),
        "roi_centers": (batch, 2),
        "roi_whs": (batch, 2),
        "resize_ratios": (batch,),
        "K": (batch, 3, 3),
        "model_points": (batch, None, 3),
        "sym_rots": (batch, None, 3, 3),
    }


def _check_targets(out: PoseNetOutput, targets: GDRNTargets) -> None:
    """Raise ValueError naming the first target whose shape does not match the output."""
    batch, _, h, w = out.xyz.shape
    expected = _target_shapes(batch, (h, w))
    for field in fields(targets):
        shape = tuple(getattr(targets, field.name).shape)
        want = expected[field.name]
        if len(shape) != len(want) or any(e is not None and e != s for e, s in zip(want, shape)):
            pretty = "[" + ", ".join("*" if e is None else str(e) for e in want) + "]"
            raise ValueError(
                f"GDRNTargets.{field.name} must have shape {pretty} for a batch of {batch} "
                f"ROIs with {h}x{w} outputs, got {list(shape)}"
            )
    if targets.region.dtype != torch.int64:
        raise ValueError(f"GDRNTargets.region must be int64, got {targets.region.dtype}")


def closest_symmetric_rotation(R_pred: Tensor, R_gt: Tensor, sym_rots: Tensor) -> Tensor:
    """The symmetric GT rotation ``R_gt @ S_k`` closest (geodesic angle) to the prediction.

    The argmin is taken without gradient; ties go to the first symmetry. Since the angle
    is a decreasing function of ``trace(R_pred^T R)``, the trace is maximized instead.

    Args:
        R_pred: [B, 3, 3] predicted rotations.
        R_gt: [B, 3, 3] GT rotations.
        sym_rots: [B, S, 3, 3] object-frame symmetry rotations (padding with identities
            or repeats is harmless).

    Returns:
        [B, 3, 3] ``R_gt[b] @ sym_rots[b, k*]`` (differentiable w.r.t. R_gt and sym_rots).
    """
    candidates = R_gt[:, None] @ sym_rots  # [B, S, 3, 3]
    with torch.no_grad():
        trace = (R_pred.detach()[:, None] * candidates.detach()).sum(dim=(-2, -1))  # [B, S]
        best = trace.argmax(dim=1)
    return candidates[torch.arange(R_gt.shape[0], device=R_gt.device), best]


def coordinate_losses(xyz: Tensor, xyz_gt: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-axis masked L1 (sum) of normalized coordinates over the mask's pixel count.

    Args:
        xyz: [B, 3, H, W] predicted normalized coordinates.
        xyz_gt: [B, 3, H, W] GT normalized coordinates.
        mask: [B, H, W] {0, 1} visible mask; pred and GT are both multiplied by it.

    Returns:
        (loss_x, loss_y, loss_z), each ``Σ|m·x̂ − m·x| / max(Σ m, 1)``.
    """
    m = mask[:, None]
    denom = mask.sum().clamp(min=1.0)
    per_axis = (xyz * m - xyz_gt * m).abs().sum(dim=(0, 2, 3)) / denom
    return per_axis[0], per_axis[1], per_axis[2]


def region_loss(logits: Tensor, region_gt: Tensor, mask: Tensor) -> Tensor:
    """GDRNPP's region cross-entropy, without its gradient-free constant.

    ``Σ_{m=1} CE(logits, label) / max(Σ m, 1)``: the cross-entropy summed over the masked
    pixels, divided by their count. GDRNPP computes ``CE_sum(logits · m, label · m) /
    max(Σ m, 1)``, in which every pixel outside the mask sees all-zero logits and label 0
    and adds the constant ``log(R + 1)`` (see :func:`region_loss_constant`): the same
    gradient, but a logged value dominated by a constant that hides whether the term falls.

    Args:
        logits: [B, R + 1, H, W] region logits, channel 0 = background.
        region_gt: [B, H, W] int64 labels in 0..R.
        mask: [B, H, W] {0, 1} mask of the supervised pixels.
    """
    ce = F.cross_entropy(logits, region_gt, reduction="none")
    return (ce * mask).sum() / mask.sum().clamp(min=1.0)


def region_loss_constant(mask: Tensor, num_regions: int) -> Tensor:
    """What GDRNPP's region loss adds to :func:`region_loss`: ``(B·H·W − Σ m) · log(R + 1) /
    max(Σ m, 1)`` for a [B, H, W] mask (no gradient)."""
    outside = mask.numel() - mask.sum()
    return outside * math.log(num_regions + 1) / mask.sum().clamp(min=1.0)


def point_matching_rotation_loss(
    R_pred: Tensor, R_gt: Tensor, points: Tensor, sym_rots: Tensor
) -> Tensor:
    """GDRNPP's symmetry-aware rotation-only point-matching loss (``PM_R_ONLY``).

    ``3 · mean |R̂ X − R*_gt X|`` over B × N × 3 with ``R*_gt`` from
    :func:`closest_symmetric_rotation`.

    Args:
        R_pred: [B, 3, 3] predicted egocentric rotations.
        R_gt: [B, 3, 3] GT egocentric rotations.
        points: [B, N, 3] model points in m.
        sym_rots: [B, S, 3, 3] symmetry rotations.

    Returns:
        Scalar loss in m.
    """
    R_target = closest_symmetric_rotation(R_pred, R_gt, sym_rots)
    diff = points @ R_pred.transpose(1, 2) - points @ R_target.transpose(1, 2)
    return _PM_LOSS_SCALE * diff.abs().mean()


def allocentric_rotation_loss(rot6d: Tensor, R_gt: Tensor, t_gt: Tensor, sym_rots: Tensor) -> Tensor:
    """A direct, symmetry-aware loss on the regressed rotation (not in GDRNPP).

    Mean L1 over the 9 entries between the predicted allocentric rotation and the GT
    allocentric rotation's symmetric equivalent closest to it. Unlike the point-matching
    term, it does not go through the predicted translation and does not scale with the
    object's size, so the rotation output gets a signal of the same order as the
    coordinate terms from the first iteration on.

    Args:
        rot6d: [B, 6] predicted allocentric rotation.
        R_gt: [B, 3, 3] GT egocentric rotations.
        t_gt: [B, 3] GT translations (any unit; only their direction is used).
        sym_rots: [B, S, 3, 3] symmetry rotations.
    """
    R_pred = rot6d_to_matrix(rot6d)
    R_target = closest_symmetric_rotation(R_pred, egocentric_to_allocentric(R_gt, t_gt), sym_rots)
    return (R_pred - R_target).abs().mean()


def teacher_forced_pnp_inputs(out: PoseNetOutput, targets: GDRNTargets) -> tuple[Tensor, Tensor]:
    """Patch-PnP inputs with the ground truth on the object: (xyz [B, 3, H, W], region
    probabilities [B, R, H, W]).

    Inside ``targets.mask_xyz`` the GT normalized coordinates and one-hot GT regions;
    outside it the network's own (detached) coordinates and region softmax, which is what
    Patch-PnP sees around the object at test time.
    """
    m = targets.mask_xyz[:, None].to(out.xyz.dtype)
    xyz = m * targets.xyz + (1.0 - m) * out.xyz.detach()
    regions = out.region.shape[1] - 1
    one_hot = F.one_hot(targets.region, regions + 1).permute(0, 3, 1, 2)[:, 1:].to(out.xyz.dtype)
    predicted = torch.softmax(out.region[:, 1:].detach(), dim=1)
    return xyz, m * one_hot + (1.0 - m) * predicted


def _xyz_terms(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    loss_x, loss_y, loss_z = coordinate_losses(out.xyz, targets.xyz, targets.mask_xyz)
    return {"loss_coor_x": loss_x, "loss_coor_y": loss_y, "loss_coor_z": loss_z}


def _mask_visible_term(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    return {"loss_mask": F.l1_loss(out.visible_mask[:, 0], targets.mask_visible)}


def _mask_amodal_term(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    return {"loss_mask_full": F.l1_loss(out.amodal_mask[:, 0], targets.mask_amodal)}


def _region_term(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    return {"loss_region": region_loss(out.region, targets.region, targets.mask_xyz)}


def _pm_term(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    # The egocentric rotation uses the predicted translation, as GDRNPP does in training.
    R_pred, _ = decode_pose(
        out.rot6d, out.site, targets.roi_centers, targets.roi_whs, targets.resize_ratios, targets.K
    )
    loss = point_matching_rotation_loss(R_pred, targets.rot, targets.model_points, targets.sym_rots)
    return {"loss_PM_R": loss}


def _rot_term(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    t_gt = site_to_translation(targets.site, targets.roi_centers, targets.roi_whs, targets.resize_ratios, targets.K)
    return {"loss_rot": allocentric_rotation_loss(out.rot6d, targets.rot, t_gt, targets.sym_rots)}


def _centroid_term(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    return {"loss_centroid": F.l1_loss(out.site[:, :2], targets.site[:, :2])}


def _z_term(out: PoseNetOutput, targets: GDRNTargets) -> dict[str, Tensor]:
    return {"loss_z": F.l1_loss(out.site[:, 2], targets.site[:, 2])}


_Term = Callable[[PoseNetOutput, GDRNTargets], dict[str, Tensor]]

# LossWeights field → the term(s) it weights, in GDRNPP's key order.
_TERMS: dict[str, _Term] = {
    "xyz": _xyz_terms,
    "mask_visible": _mask_visible_term,
    "mask_amodal": _mask_amodal_term,
    "region": _region_term,
    "pm": _pm_term,
    "rot": _rot_term,
    "centroid": _centroid_term,
    "z": _z_term,
}


def gdrn_losses(
    out: PoseNetOutput, targets: GDRNTargets, weights: LossWeights | None = None
) -> dict[str, Tensor]:
    """All of GDRNPP's training loss terms, weighted.

    Keys: ``loss_coor_x``, ``loss_coor_y``, ``loss_coor_z`` (masked L1 of normalized
    coordinates per visible pixel), ``loss_mask`` and ``loss_mask_full`` (mean L1 of the
    raw visible / amodal mask outputs), ``loss_region`` (see :func:`region_loss`),
    ``loss_PM_R`` (see :func:`point_matching_rotation_loss`; the egocentric rotation is
    decoded with the *predicted* translation, so this term also has a gradient w.r.t.
    ``site``), ``loss_rot`` (see :func:`allocentric_rotation_loss`; not in GDRNPP, weight 0
    by default), ``loss_centroid`` (mean L1 of δx, δy) and ``loss_z`` (mean L1 of δz).
    Terms whose weight is 0 are neither computed nor returned.

    Args:
        out: network output for B ROIs.
        targets: the matching ground truth.
        weights: per-term weights; ``None`` = GDRNPP's (all 1).

    Returns:
        Name → scalar tensor.

    Raises:
        ValueError: if a target's shape does not match the output.
    """
    weights = LossWeights() if weights is None else weights
    _check_targets(out, targets)
    losses: dict[str, Tensor] = {}
    for name, term in _TERMS.items():
        weight = getattr(weights, name)
        if weight == 0:
            continue
        losses.update({key: weight * value for key, value in term(out, targets).items()})
    return losses


def total_loss(losses: dict[str, Tensor]) -> Tensor:
    """Plain sum of the loss terms.

    Raises:
        ValueError: if ``losses`` is empty (every weight 0).
    """
    if not losses:
        raise ValueError("no loss terms to sum: every loss weight is 0")
    return torch.stack(list(losses.values())).sum()
