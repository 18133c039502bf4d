"""Distillation losses: pure functions of student and teacher predictions.

- :func:`feature_distillation_loss` — FAST GDRNPP: MSE between backbone features that
  are standardised per sample and channel over space (optionally weighted per cell).
- :func:`local_prediction_points` + :func:`ot_distillation_loss` — ADLP: each ROI's dense
  2D–3D correspondences (cell position + predicted object coordinate) form a point set
  whose masses are the predicted visible-mask values; a debiased Sinkhorn divergence
  aligns the student's set with the teacher's without pairing cell to cell.
- :func:`naive_distillation_loss` — per-cell L1/L2 between the two predictions.
- :func:`ensemble_confidence` — UA-KD: the teacher's per-cell uncertainty as the variance
  of its coordinates across ensemble members (or perturbed copies of the crop).

:func:`sinkhorn_divergence` is the fast path (geomloss, batched); the plain float64
log-domain solver :func:`sinkhorn_divergence_reference` beside it defines what it computes.

Conventions: xyz maps are normalized object coordinates (x / extent + 0.5), masks are
GDRNPP's raw L1-regressed mask values (≈ probabilities), cell positions are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgdr._compat import import_optional

FEATURE_EPS = 1e-5  # FAST GDRNPP's (f - mean) / (std + 1e-5)
MIN_POINT_MASS = 1e-8  # log(0) in the solver would turn gradients into NaN
MIN_SET_MASS = 1e-4  # ROIs whose (teacher) set weighs less are left out of the OT mean


def standardize_spatial(features: Tensor, eps: float = FEATURE_EPS) -> Tensor:
    """[B, C, H, W] → (f − mean_HW) / (std_HW + eps) per sample and channel."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = features.std(dim=(2, 3), keepdim=True)
    return (features - mean) / (std + eps)


def feature_distillation_loss(student: Tensor, teacher: Tensor, cell_weights: Tensor | None = None) -> Tensor:
    """MSE between standardised features.

    Args:
        student: [B, C, H, W] student features already mapped to the teacher's channels.
        teacher: [B, C, H, W] teacher features.
        cell_weights: optional [B, 1, H, W] non-negative weights; the loss is then the
            weighted mean over cells (UA-KD's prediction-related feature term).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} do not match the teacher's {tuple(teacher.shape)}")
    squared = (standardize_spatial(student) - standardize_spatial(teacher.detach())).square()
    if cell_weights is None:
        return squared.mean()
    weights = cell_weights.detach().expand_as(squared)
    return (squared * weights).sum() / weights.sum().clamp_min(1e-6)


@dataclass
class WeightedPoints:
    """A batch of weighted point sets: points [B, N, D] and masses [B, N] (≥ 0)."""

    points: Tensor
    masses: Tensor


def cell_centers(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[size * size, 2] (u, v) centres of a size×size grid over [0, 1]², row-major."""
    centers = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size
    v, u = torch.meshgrid(centers, centers, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=1)


def local_prediction_points(
    xyz: Tensor,
    mask: Tensor,
    sampling: Literal["pool", "topk"] = "pool",
    grid: int = 16,
    topk: int = 256,
    position_scale: float = 1.0,
) -> WeightedPoints:
    """The dense correspondences of a geometric head as weighted 5-D point sets.

    Args:
        xyz: [B, 3, s, s] predicted normalized object coordinates.
        mask: [B, 1, s, s] predicted visible-mask values; clipped to [0, 1] as masses
            (GDRNPP's L1-trained masks estimate the probability directly). The clip passes
            gradients straight through, so cells predicted below 0 can still gain mass.
        sampling: ``pool`` averages grid×grid blocks of s/grid cells (coordinates
            weighted by the mask, mass = mean mask); ``topk`` keeps the ``topk`` cells
            with the largest mask values.
        position_scale: factor on the (u, v) coordinates.

    Returns:
        Points (u, v, x, y, z) and masses that sum to the mean mask of the kept cells
        (at most 1 per ROI).
    """
    batch, _, size, _ = xyz.shape
    cell_mass = mask + (mask.clamp(0.0, 1.0) - mask).detach()
    if sampling == "pool":
        if size % grid != 0:
            raise ValueError(f"the pooling grid {grid} must divide the output size {size}")
        block = size // grid
        pooled_mass = F.avg_pool2d(cell_mass, block)
        pooled_xyz = F.avg_pool2d(xyz * cell_mass, block) / pooled_mass.clamp_min(1e-6)
        positions = cell_centers(grid, xyz.device, xyz.dtype).expand(batch, -1, -1)
        coords = pooled_xyz.flatten(2).transpose(1, 2)
        masses = pooled_mass.flatten(1)
    elif sampling == "topk":
        count = min(topk, size * size)
        masses, index = cell_mass.flatten(1).topk(count, dim=1)
        coords = xyz.flatten(2).gather(2, index[:, None].expand(-1, 3, -1)).transpose(1, 2)
        positions = cell_centers(size, xyz.device, xyz.dtype)[index]
    else:
        raise ValueError(f"sampling must be 'pool' or 'topk', got {sampling!r}")
    points = torch.cat([positions * position_scale, coords], dim=2)
    return WeightedPoints(points, masses / masses.shape[1])


def sinkhorn_divergence(
    student: WeightedPoints,
    teacher: WeightedPoints,
    blur: float = 0.05,
    reach: float | None = None,
    scaling: float = 0.5,
) -> Tensor:
    """Debiased Sinkhorn divergence per set pair ([B]), cost ½‖x − y‖², via geomloss.

    Balanced (``reach`` None): masses are normalized to probability measures. Unbalanced:
    the raw masses are used and the marginals are KL-penalized with strength reach².
    Set sizes may differ between student and teacher.
    """
    geomloss = import_optional("geomloss", extra="kd", purpose="optimal-transport distillation")
    a, b = _measure_weights(student.masses, reach), _measure_weights(teacher.masses, reach)
    loss = geomloss.SamplesLoss(
        "sinkhorn", p=2, blur=blur, reach=reach, scaling=scaling, debias=True, backend="tensorized"
    )
    return loss(a.float(), student.points.float(), b.float(), teacher.points.float())


def _measure_weights(masses: Tensor, reach: float | None) -> Tensor:
    """geomloss's weights: masses floored at MIN_POINT_MASS (the solver takes their log;
    the floor passes gradients through), normalized to sum 1 for balanced OT."""
    floored = masses + (masses.clamp_min(MIN_POINT_MASS) - masses).detach()
    if reach is not None:
        return floored
    return floored / floored.sum(dim=1, keepdim=True)


def sinkhorn_divergence_reference(
    student: WeightedPoints, teacher: WeightedPoints, blur: float = 0.05, iterations: int = 3000
) -> Tensor:
    """Balanced debiased Sinkhorn divergence by plain log-domain iterations in float64.

    S(α, β) = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β) with ε = blur², cost ½‖x − y‖²
    and OT_ε(α, β) = ⟨α, f⟩ + ⟨β, g⟩ at the fixed point of the dual updates. Slow and
    simple: the definition :func:`sinkhorn_divergence` is tested against.
    """
    eps = blur**2
    x, y = student.points.double(), teacher.points.double()
    a = _measure_weights(student.masses.double(), None)
    b = _measure_weights(teacher.masses.double(), None)

    def entropic_ot(p: Tensor, p_w: Tensor, q: Tensor, q_w: Tensor) -> Tensor:
        cost = 0.5 * torch.cdist(p, q).square()
        log_p, log_q = p_w.clamp_min(1e-300).log(), q_w.clamp_min(1e-300).log()
        f, g = torch.zeros_like(p_w), torch.zeros_like(q_w)
        for _ in range(iterations):
            f = -eps * torch.logsumexp(log_q[:, None, :] + (g[:, None, :] - cost) / eps, dim=2)
            g = -eps * torch.logsumexp(log_p[:, :, None] + (f[:, :, None] - cost) / eps, dim=1)
        return (p_w * f).sum(1) + (q_w * g).sum(1)

    return entropic_ot(x, a, y, b) - 0.5 * entropic_ot(x, a, x, a) - 0.5 * entropic_ot(y, b, y, b)


def ot_distillation_loss(
    student: WeightedPoints,
    teacher: WeightedPoints,
    blur: float = 0.05,
    reach: float | None = None,
    scaling: float = 0.5,
) -> Tensor:
    """Mean Sinkhorn divergence over the ROIs whose teacher set carries mass (0 if none
    does); balanced OT also needs mass in the student's set, to normalize it.

    The teacher's set is a constant target; the student's points and masses receive
    gradient (detach ``student.masses`` beforehand to distil coordinates only).
    """
    teacher = WeightedPoints(teacher.points.detach(), teacher.masses.detach())
    valid = teacher.masses.sum(1) > MIN_SET_MASS
    if reach is None:
        valid &= student.masses.sum(1) > MIN_SET_MASS
    if not bool(valid.any()):
        return student.points.sum() * 0.0
    divergence = sinkhorn_divergence(
        WeightedPoints(student.points[valid], student.masses[valid]),
        WeightedPoints(teacher.points[valid], teacher.masses[valid]),
        blur, reach, scaling,
    )
    return divergence.mean()


def naive_distillation_loss(
    student_xyz: Tensor,
    student_mask: Tensor,
    teacher_xyz: Tensor,
    teacher_mask: Tensor,
    norm: Literal["l1", "l2"] = "l1",
    mask_weight: float = 1.0,
) -> Tensor:
    """Per-cell distance between predictions: coordinates weighted by the teacher's
    visible mask, plus ``mask_weight`` × the mean distance between the visible masks."""
    teacher_xyz, teacher_mask = teacher_xyz.detach(), teacher_mask.detach()

    def distance(difference: Tensor) -> Tensor:
        return difference.abs() if norm == "l1" else difference.square()

    weights = teacher_mask.clamp(0.0, 1.0)
    xyz_term = (distance(student_xyz - teacher_xyz) * weights).sum() / (3 * weights.sum()).clamp_min(1e-6)
    mask_term = distance(student_mask - teacher_mask).mean()
    return xyz_term + mask_weight * mask_term


@dataclass
class EnsemblePrediction:
    """What an ensemble of teacher predictions agrees on, per cell.

    Attributes:
        xyz: [B, 3, s, s] mean coordinates.
        mask: [B, 1, s, s] mean visible mask.
        variance: [B, 1, s, s] coordinate variance summed over x, y, z.
        confidence: [B, 1, s, s] exp(−variance / temperature) in (0, 1].
    """

    xyz: Tensor
    mask: Tensor
    variance: Tensor
    confidence: Tensor


def ensemble_confidence(member_xyz: Tensor, member_mask: Tensor, temperature: float | None = None) -> EnsemblePrediction:
    """UA-KD's teacher uncertainty from K predictions of the same crops.

    Args:
        member_xyz: [K, B, 3, s, s] coordinates of K members (K ≥ 2).
        member_mask: [K, B, 1, s, s] visible masks.
        temperature: variance scale; None takes the mean variance over the cells the
            ensemble sees as visible (mask-weighted), which makes the weighting scale-free.
    """
    if member_xyz.shape[0] < 2:
        raise ValueError("an uncertainty estimate needs at least 2 ensemble members")
    xyz, mask = member_xyz.mean(0), member_mask.mean(0)
    variance = member_xyz.var(0, unbiased=False).sum(1, keepdim=True)
    if temperature is None:
        visible = mask.clamp(0.0, 1.0)
        temperature = float((variance * visible).sum() / visible.sum().clamp_min(1e-6))
    confidence = torch.exp(-variance / max(temperature, 1e-12))
    return EnsemblePrediction(xyz, mask, variance, confidence)
