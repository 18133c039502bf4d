"""Depth-based pose refinement: GDRNPP's "fast" translation update and a 6-DoF ICP.

Both refine a network pose with the sensor depth image of the same view and a renderer
holding the object meshes.

Conventions (as in the rest of fastgdr):
    * Poses are model → camera: ``X_cam = R @ X_model + t``, R (3, 3), t (3,) in mm.
    * Depth images are camera-frame z in mm (not the distance along the ray), 0 = missing.
    * Pixel coordinates follow OpenCV: integer (u, v) is the centre of column u / row v.
    * ROI outputs of the network are at the output resolution s (64 for a 256 input) and
      cover the square crop ``center ± crop_size / 2`` of the image.

Refiners:
    * ``fast`` (:func:`fast_refine`): GDRNPP's translation-only update (gdrnpp.md §5.1).
    * ``icp`` (:func:`icp_refine`, batched over the objects of an image by
      :func:`icp_refine_many`): point-to-plane ICP between the rendered visible model
      surface and the back-projected sensor depth inside the predicted visible mask.
    * ``none``: the network pose.

:func:`refine_poses` runs one of them on the detections of an image. It checks the depth
first (:func:`check_depth`: missing, wrong size, no valid pixel; :func:`check_depth_scale`:
a depth whose unit cannot match the scene, e.g. a depth_scale off by ×10 or ×1000), keeps
the network pose wherever refinement is impossible, produces a non-finite pose or moves it
implausibly far (:class:`RefineLimits`), and counts all of it in a :class:`RefineStats`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from fastgdr.geometry import axis_angle_to_matrix, crop_affine_matrix, crop_resize, zoom_camera_matrix
from fastgdr.registry import Registry

if TYPE_CHECKING:
    from fastgdr.render import Renderer


# ---------------------------------------------------------------------------------------
# Depth checks and bookkeeping


def check_depth(depth: np.ndarray | None, expected_hw: tuple[int, int], depth_scale: float | None) -> str | None:
    """Why a depth image cannot be used for refinement, or None when it can.

    Non-finite and negative pixels count as missing (as 0 in BOP depth images); the image
    is unusable when it is missing, not (H, W) = ``expected_hw``, has no positive finite
    pixel, or when ``depth_scale`` (mm per stored unit) is not a positive finite number.

    Args:
        depth: (H, W) depth in mm, or None when there is none.
        expected_hw: (H, W) of the colour image the poses were estimated on.
        depth_scale: the camera's depth scale (mm per stored unit).

    Returns:
        A short reason ("missing", "wrong size (480, 640) != (240, 320)", ...) or None.
    """
    if depth is None:
        return "missing"
    if depth_scale is None or not math.isfinite(depth_scale) or depth_scale <= 0:
        return f"invalid depth_scale {depth_scale}"
    if depth.shape != tuple(expected_hw):
        return f"wrong size {tuple(depth.shape)} != {tuple(expected_hw)}"
    if not np.any(np.isfinite(depth) & (depth > 0)):
        return "no valid pixel (all zero or non-finite)"
    return None


def sanitize_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) float32 copy of ``depth`` (mm) with non-finite and negative pixels set to 0."""
    depth = np.asarray(depth, dtype=np.float32)
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))


@dataclass
class RefineStats:
    """What refinement did over a run (counts are per object).

    Attributes:
        refined: objects whose pose was refined.
        skipped_invalid_depth: objects left unrefined because the image's depth was
            missing or invalid (see :func:`check_depth`; reasons in ``invalid_depth_reasons``).
        skipped_no_support: objects left unrefined because no pixel/point supported an
            update (no overlap of rendering, predicted mask and valid depth).
        non_finite: objects whose refinement gave a non-finite pose (input pose kept).
        rejected_implausible: objects whose refined pose moved farther than
            :class:`RefineLimits` allow or left the space in front of the camera (input
            pose kept).
        seconds: refinement time of every object the refiner ran on, in s (an image's
            time divided evenly among its objects when they are refined together).
        invalid_depth_reasons: reason → number of images.
    """

    refined: int = 0
    skipped_invalid_depth: int = 0
    skipped_no_support: int = 0
    non_finite: int = 0
    rejected_implausible: int = 0
    seconds: list[float] = field(default_factory=list)
    invalid_depth_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        """Objects that kept their input pose (the warning count)."""
        return self.skipped_invalid_depth + self.skipped_no_support + self.non_finite + self.rejected_implausible

    @property
    def mean_ms_per_object(self) -> float:
        """Mean refinement time per refined-or-attempted object in ms (0 when none)."""
        return 1000.0 * float(np.mean(self.seconds)) if self.seconds else 0.0


@dataclass
class RefineTarget:
    """One detection to refine, with the network outputs of its ROI.

    Attributes:
        obj_id: object id (a mesh of the renderer).
        R: (3, 3) rotation, model → camera.
        t: (3,) translation in mm.
        center: (2,) crop centre in px (image).
        crop_size: side of the square crop in px (image).
        xyz_norm: (3, s, s) predicted normalized coordinates (x / extent + 0.5).
        mask_prob: (s, s) visible-mask probability in [0, 1].
        box_size: longer side of the detected box in px (None: ``crop_size`` / 1.5, the
            test-time crop's padding).
    """

    obj_id: int
    R: np.ndarray
    t: np.ndarray
    center: np.ndarray
    crop_size: float
    xyz_norm: np.ndarray
    mask_prob: np.ndarray
    box_size: float | None = None

    @property
    def box_side(self) -> float:
        """Longer side of the detected box in px."""
        return float(self.box_size) if self.box_size is not None else self.crop_size / TEST_CROP_PAD


TEST_CROP_PAD = 1.5  # test-time crop side / longer box side (fastgdr.engine.inference.PAD_SCALE)


@dataclass(frozen=True)
class RefineLimits:
    """What depth refinement may do to a pose before the result counts as implausible.

    Attributes:
        max_shift_diameters: a refined translation may move by at most this many object
            diameters, or
        max_shift_depth_fraction: this fraction of the network's depth of the object,
            whichever allows more. GDRNPP's update corrects errors of a few cm; a depth
            in the wrong unit moves poses by metres.
        min_depth_mm: the refined object origin must stay at least this far in front of
            the camera.
        min_depth_ratio, max_depth_ratio: the image's depth is unusable when, over its
            objects, the median of sensor depth / expected depth is outside this range
            (see :func:`check_depth_scale`; correct depth gave 0.62–1.32 per image on the
            synthetic test set, a depth_scale off by ×10 gives about 6–13).
    """

    max_shift_diameters: float = 1.0
    max_shift_depth_fraction: float = 0.25
    min_depth_mm: float = 1.0
    min_depth_ratio: float = 0.2
    max_depth_ratio: float = 4.0

    def max_shift_mm(self, diameter_mm: float, depth_mm: float) -> float:
        """The largest plausible translation change (mm) of an object."""
        return max(self.max_shift_diameters * diameter_mm, self.max_shift_depth_fraction * abs(depth_mm))

    def plausible(self, t_before: np.ndarray, t_after: np.ndarray, diameter_mm: float) -> bool:
        """Whether a refinement from ``t_before`` to ``t_after`` (mm) stays within the limits."""
        shift = float(np.linalg.norm(np.asarray(t_after, np.float64) - np.asarray(t_before, np.float64)))
        return float(t_after[2]) >= self.min_depth_mm and shift <= self.max_shift_mm(diameter_mm, float(t_before[2]))


def check_depth_scale(
    depth_mm: np.ndarray,
    K: np.ndarray,
    targets: Sequence[RefineTarget],
    diameters_mm: Sequence[float],
    limits: RefineLimits = RefineLimits(),
) -> str | None:
    """Why the depth image's unit cannot match the scene, or None when it can.

    Independently of the network's poses: an object of diameter d whose longer box side
    is b px lies at about ``f · d / b`` mm (f: the mean focal length in px), less when its
    widest extent is not seen (a flat object edge-on, occlusion), never much more. The
    sensor depth of an object is the median valid depth of the central half of its box.
    When the median over the image's objects of sensor / expected depth is outside
    [``limits.min_depth_ratio``, ``limits.max_depth_ratio``] (a depth_scale off by ×10, ×1000
    or ×0.001 multiplies it by 10, 1000 or 0.001), the depth is refused. Objects without valid
    depth in their box take no part; with none left there is no verdict (None).

    Args:
        depth_mm: (H, W) sensor depth in mm, 0 = missing (sanitized).
        K: (3, 3) intrinsics in px.
        targets: the image's detections (``center``, ``box_side``).
        diameters_mm: each target's object diameter in mm.
        limits: the ratio bounds.

    Returns:
        A reason naming the ratio (rounded to a power of ten), or None.
    """
    focal = 0.5 * (float(K[0, 0]) + float(K[1, 1]))
    height, width = depth_mm.shape
    ratios = []
    for target, diameter in zip(targets, diameters_mm):
        side = target.box_side
        if not (side > 0 and diameter > 0):
            continue
        cx, cy = (float(c) for c in target.center)
        x0, x1 = max(int(round(cx - side / 4)), 0), min(int(round(cx + side / 4)) + 1, width)
        y0, y1 = max(int(round(cy - side / 4)), 0), min(int(round(cy + side / 4)) + 1, height)
        window = depth_mm[y0:y1, x0:x1]
        valid = window[window > 0]
        if valid.size:
            ratios.append(float(np.median(valid)) / (focal * diameter / side))
    if not ratios:
        return None
    ratio = float(np.median(ratios))
    if limits.min_depth_ratio <= ratio <= limits.max_depth_ratio:
        return None
    magnitude = 10.0 ** round(math.log10(ratio))
    return (
        f"depth unit does not match the scene: the sensor depth is ~{magnitude:g}× what the boxes and object sizes "
        "imply (wrong depth_scale or unit?)"
    )


@dataclass
class RefineOutcome:
    """A refiner's answer for one target: the pose and whether anything supported it."""

    R: np.ndarray
    t: np.ndarray
    supported: bool
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# GDRNPP "fast" refinement


def fast_refine(
    R: np.ndarray,
    t_mm: np.ndarray,
    depth_mm: np.ndarray,
    K: np.ndarray,
    center: np.ndarray,
    crop_size: float,
    xyz_norm: np.ndarray,
    mask_prob: np.ndarray,
    renderer: Renderer,
    obj_id: int,
    iterations: int = 2,
    threshold: float = 0.8,
) -> tuple[np.ndarray, dict[str, Any]]:
    """GDRNPP's translation-only depth refinement (``process_depth_refine``), R fixed.

    Per iteration, in the s × s ROI (s = ``xyz_norm``'s side):

    1. the sensor depth cropped with the ROI's affine, nearest neighbour, directly at s
       (GDRNPP crops to 256 with nearest and then resizes bilinearly to 64, which blends
       missing 0-depth into edges; cropping directly at s keeps only measured values);
    2. the model rendered at the current pose with the zoomed intrinsics;
    3. weights w = ‖xyz_norm‖₂ · mask_prob · rendered mask · (sensor depth > 0), normalized;
    4. Δ = median(sensor − rendered depth) over the pixels with w > threshold · max(w);
    5. the w-weighted centroid (u, v) of the ROI's pixel centres (j + 0.5, i + 0.5, the
       renderer's pixel convention); ray = K_crop⁻¹ (u, v, 1) (z = 1); t ← t + Δ · ray.

    An iteration without a weighted pixel ends the loop (the pose is left as it is).

    Args:
        R: (3, 3) rotation, model → camera (not changed).
        t_mm: (3,) translation in mm.
        depth_mm: (H, W) sensor depth in mm, 0 = missing (see :func:`sanitize_depth`).
        K: (3, 3) intrinsics of the image in px.
        center: (2,) ROI crop centre in px.
        crop_size: ROI crop side in px.
        xyz_norm: (3, s, s) predicted normalized coordinates.
        mask_prob: (s, s) predicted visible-mask probability.
        renderer: renderer with the mesh of ``obj_id`` (mm).
        obj_id: object id.
        iterations: number of updates (GDRNPP: 2).
        threshold: share of the maximum weight a pixel needs for the median (GDRNPP: 0.8).

    Returns:
        (t, info): the refined (3,) float64 translation in mm; info with ``deltas_mm``
        (Δ per iteration done) and ``supported`` (whether at least one update was made).

    Raises:
        ValueError: if ``xyz_norm`` / ``mask_prob`` do not have shapes (3, s, s) / (s, s).
    """
    xyz_norm = np.asarray(xyz_norm, dtype=np.float64)
    mask_prob = np.asarray(mask_prob, dtype=np.float64)
    size = xyz_norm.shape[-1]
    if xyz_norm.shape != (3, size, size) or mask_prob.shape != (size, size):
        raise ValueError(f"need xyz_norm (3, s, s) and mask_prob (s, s), got {xyz_norm.shape} and {mask_prob.shape}")
    sensor = crop_resize(np.asarray(depth_mm, np.float32), center, crop_size, size, cv2.INTER_NEAREST).astype(np.float64)
    K_crop = np.asarray(zoom_camera_matrix(np.asarray(K, np.float64), center, crop_size, size), np.float64)
    K_crop_inv = np.linalg.inv(K_crop)
    prior = np.linalg.norm(xyz_norm, axis=0) * mask_prob * (sensor > 0)
    # pixel centres in image coordinates (fastgdr.render's convention)
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float64) + 0.5, np.arange(size, dtype=np.float64) + 0.5)
    t = np.asarray(t_mm, dtype=np.float64).reshape(3).copy()
    deltas = []
    for _ in range(iterations):
        rendered = renderer.render_depth(obj_id, R, t, K_crop, size, size).astype(np.float64)
        weights = prior * (rendered > 0)
        total = weights.sum()
        if not total > 0:
            break
        weights /= total
        selected = weights > threshold * weights.max()
        delta = float(np.median(sensor[selected] - rendered[selected]))
        ray = K_crop_inv @ np.array([(weights * cols).sum(), (weights * rows).sum(), 1.0])
        t += delta * ray / ray[2]
        deltas.append(delta)
    return t, {"deltas_mm": deltas, "supported": bool(deltas)}


# ---------------------------------------------------------------------------------------
# ICP


@dataclass
class IcpResult:
    """Result of :func:`point_to_plane_icp` for a batch of B problems.

    Attributes:
        R_delta: [B, 3, 3] rotation and ``t_delta`` [B, 3] translation (mm) of the camera-
            frame correction: a source point p moves to ``R_delta @ p + t_delta``.
        iterations: [B] updates made.
        converged: [B] whether the last update was below the tolerances.
        supported: [B] whether the first iteration had enough correspondences.
        inliers: [B] correspondences kept in the last iteration.
        rmse_mm: [B] point-to-plane RMS residual of the last iteration's inliers (mm).
    """

    R_delta: torch.Tensor
    t_delta: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    supported: torch.Tensor
    inliers: torch.Tensor
    rmse_mm: torch.Tensor


def point_to_plane_icp(
    source: torch.Tensor,
    source_valid: torch.Tensor,
    target: torch.Tensor,
    target_normals: torch.Tensor,
    target_valid: torch.Tensor,
    iterations: int = 10,
    max_distance_mm: float = 20.0,
    min_correspondences: int = 30,
    rotation_tol: float = 1e-4,
    translation_tol: float = 0.01,
) -> IcpResult:
    """Batched point-to-plane ICP (Gauss-Newton, one linearized step per iteration).

    Each iteration pairs every moved source point with its nearest target point
    (Euclidean, brute force over all P·N pairs), rejects pairs farther apart than
    ``max_distance_mm``, and solves ``min Σ ((R p + t − q) · n_q)²`` linearized about the inliers' centroid c:
    ``p' = c + exp([ω]×)(p − c) + τ``. A problem stops when ‖ω‖ < ``rotation_tol`` rad
    and ‖τ‖ < ``translation_tol`` mm (converged), when fewer than ``min_correspondences``
    inliers remain, or after ``iterations`` updates. Solved in float64; the
    nearest-neighbour search uses the inputs' dtype and device.

    Args:
        source: [B, P, 3] camera-frame source points in mm (padded).
        source_valid: [B, P] bool, which source points are real.
        target: [B, N, 3] camera-frame target points in mm (padded).
        target_normals: [B, N, 3] unit normals of the target points.
        target_valid: [B, N] bool, which target points are real.
        iterations: maximum number of updates.
        max_distance_mm: correspondence rejection distance in mm.
        min_correspondences: fewest inliers for an update.
        rotation_tol: convergence threshold on the rotation update in rad.
        translation_tol: convergence threshold on the translation update in mm.

    Returns:
        The corrections and diagnostics, see :class:`IcpResult`.
    """
    batch, device = source.shape[0], source.device
    src = source.double()
    tgt_normals = target_normals.double()
    tgt = target.double()
    R_d = torch.eye(3, dtype=torch.float64, device=device).repeat(batch, 1, 1)
    t_d = torch.zeros(batch, 3, dtype=torch.float64, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    supported = torch.zeros(batch, dtype=torch.bool, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    done_iterations = torch.zeros(batch, dtype=torch.long, device=device)
    inliers = torch.zeros(batch, dtype=torch.long, device=device)
    rmse = torch.zeros(batch, dtype=torch.float64, device=device)
    # ‖p − q‖² = ‖p‖² + (‖q‖² − 2 p·q): one batched product and one min per iteration,
    # about the target centroid (less cancellation in float32); ‖q‖² is +inf for padding
    # so that padded targets are never the nearest.
    origin = (tgt * target_valid[..., None]).sum(1) / target_valid.sum(1).clamp_min(1)[:, None]
    target_c = (tgt - origin[:, None]).to(source.dtype)
    target_sq = (target_c * target_c).sum(-1).masked_fill(~target_valid, float("inf"))[:, None, :]
    target_t = target_c.transpose(1, 2)
    for step in range(iterations):
        moved = src @ R_d.transpose(1, 2) + t_d[:, None]
        moved_low = (moved - origin[:, None]).to(source.dtype)
        partial, nearest = torch.baddbmm(target_sq, moved_low, target_t, alpha=-2.0).min(dim=2)
        nearest_sq = partial + (moved_low * moved_low).sum(-1)
        keep = source_valid & (nearest_sq < max_distance_mm**2)
        count = keep.sum(dim=1)
        enough = count >= min_correspondences
        if step == 0:
            supported = enough.clone()
        step_active = active & enough
        if not bool(step_active.any()):
            break
        q = torch.gather(tgt, 1, nearest[..., None].expand(-1, -1, 3))
        n = torch.gather(tgt_normals, 1, nearest[..., None].expand(-1, -1, 3))
        w = keep.double()
        centroid = (moved * w[..., None]).sum(1) / w.sum(1).clamp_min(1.0)[:, None]
        arm = moved - centroid[:, None]
        residual = ((q - moved) * n).sum(-1)  # [B, P], signed distance along the normal
        jacobian = torch.cat((torch.cross(arm, n, dim=-1), n), dim=-1)  # [B, P, 6]
        hessian = (jacobian * w[..., None]).transpose(1, 2) @ jacobian
        gradient = (jacobian * (w * residual)[..., None]).sum(1)
        damping = 1e-9 + 1e-9 * hessian.diagonal(dim1=1, dim2=2).sum(-1)
        hessian = hessian + damping[:, None, None] * torch.eye(6, dtype=torch.float64, device=device)
        update = torch.linalg.solve(hessian, gradient) * step_active[:, None]
        omega, tau = update[:, :3], update[:, 3:]
        R_step = axis_angle_to_matrix(omega)
        # p' = c + R_step (p − c) + τ applied on top of (R_d, t_d)
        R_d = R_step @ R_d
        t_d = (R_step @ t_d[..., None])[..., 0] + centroid - (R_step @ centroid[..., None])[..., 0] + tau
        done_iterations += step_active.long()
        inliers = torch.where(step_active, count, inliers)
        step_rmse = torch.sqrt((w * residual**2).sum(1) / w.sum(1).clamp_min(1.0))
        rmse = torch.where(step_active, step_rmse, rmse)
        small = (omega.norm(dim=1) < rotation_tol) & (tau.norm(dim=1) < translation_tol)
        converged = converged | (step_active & small)
        active = step_active & ~small
        if not bool(active.any()):
            break
    return IcpResult(R_d, t_d, done_iterations, converged, supported, inliers, rmse)


@dataclass
class _IcpPoints:
    """Camera-frame inputs of one ICP problem (float64, mm)."""

    source: np.ndarray  # (P, 3) rendered visible model surface at the initial pose, inside the mask
    target: np.ndarray  # (N, 3) back-projected sensor depth inside the mask
    normals: np.ndarray  # (N, 3) unit normals of the target, facing the camera


def _even_subset(count: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` of ``count`` items, evenly spread (deterministic)."""
    if count <= limit:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(np.int64)


def _box_of(mask: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) exclusive end of the True pixels grown by ``margin``, clipped; None if empty."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    height, width = mask.shape
    return max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin + 1, width), min(y1 + margin + 1, height)


def depth_points_and_normals(
    depth_mm: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray,
    normal_step: int = 2,
    max_jump: float = 0.05,
    max_normal_angle_deg: float = 15.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Back-projected depth pixels inside ``mask`` with normals from the depth image.

    Pixel (i, j) is back-projected along the ray through its centre (j + 0.5, i + 0.5)
    (the pixel convention of :mod:`fastgdr.render.renderer`).

    With X the back-projected points and s = ``normal_step`` px, a pixel's normal is the
    cross product of the central differences ``X[v, u+s] − X[v, u−s]`` and
    ``X[v+s, u] − X[v−s, u]``, turned towards the camera. Pixels are dropped when one of
    the four neighbours is missing or differs in depth by more than ``max_jump`` × the
    pixel's depth (a depth edge), or when the forward- and backward-difference normals
    differ by more than ``max_normal_angle_deg`` (a crease, where the central normal
    would be a blend of two faces and bias point-to-plane ICP).

    Args:
        depth_mm: (H, W) depth in mm, 0 = missing.
        K: (3, 3) intrinsics in px.
        mask: (H, W) bool region.
        normal_step: neighbour distance s in px.
        max_jump: largest relative depth difference to a neighbour.
        max_normal_angle_deg: largest angle between the one-sided normals in degrees.

    Returns:
        (points (N, 3), normals (N, 3)) float64, camera frame, mm.
    """
    empty = np.zeros((0, 3)), np.zeros((0, 3))
    s = normal_step
    box = _box_of(mask & (depth_mm > 0), s)
    if box is None:
        return empty
    x0, y0, x1, y1 = box
    z = depth_mm[y0:y1, x0:x1].astype(np.float64)
    if z.shape[0] <= 2 * s or z.shape[1] <= 2 * s:
        return empty
    # the ray through the centre (j + 0.5, i + 0.5) of each pixel (fastgdr.render's convention)
    cols, rows = np.meshgrid(np.arange(x0, x1, dtype=np.float64) + 0.5, np.arange(y0, y1, dtype=np.float64) + 0.5)
    rays = np.stack((cols, rows, np.ones_like(cols)), axis=-1) @ np.linalg.inv(np.asarray(K, np.float64)).T
    points = rays * z[..., None]
    inner = (slice(s, -s), slice(s, -s))
    centre, left, right = points[inner], points[s:-s, : -2 * s], points[s:-s, 2 * s :]
    up, down = points[: -2 * s, s:-s], points[2 * s :, s:-s]
    normals = np.cross(right - left, down - up)
    forward = np.cross(right - centre, down - centre)
    backward = np.cross(centre - left, centre - up)
    centre_z = z[inner]
    neighbours_z = np.stack((z[s:-s, : -2 * s], z[s:-s, 2 * s :], z[: -2 * s, s:-s], z[2 * s :, s:-s]))
    length = np.linalg.norm(normals, axis=-1)
    one_sided = np.linalg.norm(forward, axis=-1) * np.linalg.norm(backward, axis=-1)
    cos_limit = math.cos(math.radians(max_normal_angle_deg))
    valid = (
        mask[y0:y1, x0:x1][inner]
        & (centre_z > 0)
        & np.all(neighbours_z > 0, axis=0)
        & np.all(np.abs(neighbours_z - centre_z) < max_jump * centre_z, axis=0)
        & (length > 0)
        & (np.sum(forward * backward, axis=-1) > cos_limit * one_sided)
    )
    pts, nrm = centre[valid], normals[valid] / length[valid][:, None]
    nrm *= -np.sign(np.sum(nrm * pts, axis=1, keepdims=True) + 1e-12)  # face the camera (n · p < 0)
    return pts, nrm


def _render_window(t: np.ndarray, radius: float, K: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) image window holding the projection of a sphere of ``radius`` mm at ``t``."""
    if t[2] - radius <= 1.0:
        return 0, 0, width, height
    center = K @ t
    u, v = center[:2] / center[2]
    reach = max(K[0, 0], K[1, 1]) * radius / (t[2] - radius) + 2.0
    x0, y0 = max(int(math.floor(u - reach)), 0), max(int(math.floor(v - reach)), 0)
    x1, y1 = min(int(math.ceil(u + reach)) + 1, width), min(int(math.ceil(v + reach)) + 1, height)
    return x0, y0, max(x1, x0), max(y1, y0)


def _icp_points(
    R: np.ndarray, t: np.ndarray, depth_mm: np.ndarray, K: np.ndarray, mask: np.ndarray,
    renderer: Renderer, obj_id: int, max_source_points: int, max_target_points: int, normal_step: int,
) -> _IcpPoints:
    """Source (rendered surface) and target (sensor depth) points of one object, both in ``mask``.

    Both sets go through :func:`depth_points_and_normals` with the same mask and filters,
    so that at the true pose they cover the same surface: the depth edges and creases
    the filters drop from the target are dropped from the source too (a source point
    without a target counterpart would be pulled onto a wrong surface).
    """
    height, width = depth_mm.shape
    x0, y0, x1, y1 = _render_window(t, renderer.bounding_radius(obj_id), K, width, height)
    source = np.zeros((0, 3))
    if x1 > x0 and y1 > y0:
        K_window = K.copy()
        K_window[0, 2] -= x0
        K_window[1, 2] -= y0
        rendered = renderer.render_depth(obj_id, R, t, K_window, x1 - x0, y1 - y0)
        source, _ = depth_points_and_normals(rendered, K_window, mask[y0:y1, x0:x1], normal_step)
        source = source[_even_subset(len(source), max_source_points)]
    target, normals = depth_points_and_normals(depth_mm, K, mask, normal_step)
    keep = _even_subset(len(target), max_target_points)
    return _IcpPoints(source, target[keep], normals[keep])


def _pad(arrays: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, max len, 3] float32 zero-padded stack and [B, max len] validity of (n_i, 3) arrays."""
    longest = max(max(len(a) for a in arrays), 1)
    stacked = np.zeros((len(arrays), longest, 3), dtype=np.float32)
    valid = np.zeros((len(arrays), longest), dtype=bool)
    for i, a in enumerate(arrays):
        stacked[i, : len(a)] = a
        valid[i, : len(a)] = True
    return torch.from_numpy(stacked).to(device), torch.from_numpy(valid).to(device)


def icp_refine_many(
    poses: Sequence[tuple[int, np.ndarray, np.ndarray]],
    depth_mm: np.ndarray,
    K: np.ndarray,
    masks: Sequence[np.ndarray],
    renderer: Renderer,
    iterations: int = 10,
    max_distance_mm: float = 20.0,
    min_correspondences: int = 30,
    max_source_points: int = 1500,
    max_target_points: int = 4000,
    normal_step: int = 2,
    rotation_tol: float = 1e-4,
    translation_tol: float = 0.01,
    device: torch.device | str = "cpu",
) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """:func:`icp_refine` for several objects of one image, solved as one batch.

    Args:
        poses: (obj_id, R (3, 3), t (3,) mm) per object, model → camera.
        masks: (H, W) bool region per object.
        Others: as :func:`icp_refine`.

    Returns:
        (R, t, info) per object, in the order of ``poses``.
    """
    depth_mm = np.asarray(depth_mm, np.float32)
    K = np.asarray(K, np.float64)
    problems = [
        _icp_points(np.asarray(R, np.float64), np.asarray(t, np.float64).reshape(3), depth_mm, K, np.asarray(mask, bool),
                    renderer, obj_id, max_source_points, max_target_points, normal_step)
        for (obj_id, R, t), mask in zip(poses, masks)
    ]
    if not problems:
        return []
    device = torch.device(device)
    source, source_valid = _pad([p.source for p in problems], device)
    target, target_valid = _pad([p.target for p in problems], device)
    normals, _ = _pad([p.normals for p in problems], device)
    result = point_to_plane_icp(
        source, source_valid, target, normals, target_valid, iterations, max_distance_mm,
        min_correspondences, rotation_tol, translation_tol,
    )
    R_delta, t_delta = result.R_delta.cpu().numpy(), result.t_delta.cpu().numpy()
    out = []
    for i, (_, R, t) in enumerate(poses):
        R, t = np.asarray(R, np.float64), np.asarray(t, np.float64).reshape(3)
        info = {
            "supported": bool(result.supported[i]), "iterations": int(result.iterations[i]),
            "converged": bool(result.converged[i]), "inliers": int(result.inliers[i]),
            "rmse_mm": float(result.rmse_mm[i]), "source_points": len(problems[i].source),
            "target_points": len(problems[i].target),
        }
        if info["supported"]:
            R, t = R_delta[i] @ R, R_delta[i] @ t + t_delta[i]
        out.append((R, t, info))
    return out


def icp_refine(
    R: np.ndarray,
    t_mm: np.ndarray,
    depth_mm: np.ndarray,
    K: np.ndarray,
    mask: np.ndarray,
    renderer: Renderer,
    obj_id: int,
    iterations: int = 10,
    max_distance_mm: float = 20.0,
    min_correspondences: int = 30,
    max_source_points: int = 1500,
    max_target_points: int = 4000,
    normal_step: int = 2,
    rotation_tol: float = 1e-4,
    translation_tol: float = 0.01,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """6-DoF point-to-plane ICP of the visible model surface onto the sensor depth.

    Source: the model surface visible at the input pose, rendered (depth) in the image
    window covering the object's bounding sphere and back-projected, at the pixels inside
    ``mask``, at most ``max_source_points`` (evenly spread). Target: the sensor depth
    pixels inside ``mask``, back-projected with K, with normals from the depth image, at
    most ``max_target_points``. Both sets drop depth edges and creases the same way
    (:func:`depth_points_and_normals`). The source is rendered once; nearest-neighbour
    correspondences are re-computed every iteration (see :func:`point_to_plane_icp` for
    rejection and convergence). Parts of the model outside ``mask`` (occluded, or
    outside the predicted visible region) take no part.

    Args:
        R: (3, 3) rotation, model → camera.
        t_mm: (3,) translation in mm.
        depth_mm: (H, W) sensor depth in mm, 0 = missing.
        K: (3, 3) intrinsics in px.
        mask: (H, W) bool image region of the object (e.g. the predicted visible mask
            pasted back into the image).
        renderer: renderer with the mesh of ``obj_id`` (mm).
        obj_id: object id.
        iterations: maximum number of ICP updates.
        max_distance_mm: correspondence rejection distance in mm.
        min_correspondences: fewest inliers for an update; fewer → pose unchanged.
        max_source_points: cap on rendered model points.
        max_target_points: cap on sensor points.
        normal_step: pixel step of the depth-image normals.
        rotation_tol: convergence threshold on the rotation update in rad.
        translation_tol: convergence threshold on the translation update in mm.
        device: where the ICP runs.

    Returns:
        (R, t, info): refined (3, 3) rotation and (3,) translation in mm (float64; the
        input pose when unsupported) and info with ``supported``, ``iterations``,
        ``converged``, ``inliers``, ``rmse_mm``, ``source_points``, ``target_points``.
    """
    return icp_refine_many(
        [(obj_id, R, t_mm)], depth_mm, K, [mask], renderer, iterations, max_distance_mm, min_correspondences,
        max_source_points, max_target_points, normal_step, rotation_tol, translation_tol, device,
    )[0]


def paste_mask(
    mask_prob: np.ndarray, center: np.ndarray, crop_size: float, image_hw: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """(H, W) bool image mask of an ROI's (s, s) mask probability above ``threshold``.

    The inverse of the ROI crop affine, bilinear; outside the crop is False.
    """
    size = mask_prob.shape[-1]
    affine = crop_affine_matrix(center, crop_size, size)
    height, width = image_hw
    pasted = cv2.warpAffine(
        np.asarray(mask_prob, np.float32), affine, (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    return pasted > threshold


# ---------------------------------------------------------------------------------------
# Registry and the per-image driver

# A refiner: (targets of one image, sanitized depth (H, W) mm, K, renderer, device) → outcomes.
RefineFn = Callable[[Sequence[RefineTarget], np.ndarray, np.ndarray, "Renderer", torch.device], list[RefineOutcome]]

REFINERS: Registry[RefineFn] = Registry("depth refiner")


def _refine_none(
    targets: Sequence[RefineTarget], depth_mm: np.ndarray, K: np.ndarray, renderer: Renderer, device: torch.device
) -> list[RefineOutcome]:
    return [RefineOutcome(tg.R, tg.t, True) for tg in targets]


def _refine_fast(
    targets: Sequence[RefineTarget], depth_mm: np.ndarray, K: np.ndarray, renderer: Renderer, device: torch.device
) -> list[RefineOutcome]:
    outcomes = []
    for tg in targets:
        t, info = fast_refine(tg.R, tg.t, depth_mm, K, tg.center, tg.crop_size, tg.xyz_norm, tg.mask_prob, renderer, tg.obj_id)
        outcomes.append(RefineOutcome(tg.R, t, info["supported"], info))
    return outcomes


def _refine_icp(
    targets: Sequence[RefineTarget], depth_mm: np.ndarray, K: np.ndarray, renderer: Renderer, device: torch.device
) -> list[RefineOutcome]:
    masks = [paste_mask(tg.mask_prob, tg.center, tg.crop_size, depth_mm.shape) for tg in targets]
    results = icp_refine_many([(tg.obj_id, tg.R, tg.t) for tg in targets], depth_mm, K, masks, renderer, device=device)
    return [RefineOutcome(R, t, info["supported"], info) for R, t, info in results]


REFINERS.register("none", _refine_none)
REFINERS.register("fast", _refine_fast)
REFINERS.register("icp", _refine_icp)


def _is_valid_pose(R: np.ndarray, t: np.ndarray) -> bool:
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64)
    return (
        R.shape == (3, 3) and t.size == 3 and bool(np.all(np.isfinite(R)) and np.all(np.isfinite(t)))
        and bool(np.allclose(R @ R.T, np.eye(3), atol=1e-3))
    )


def refine_poses(
    method: str,
    targets: Sequence[RefineTarget],
    depth_mm: np.ndarray | None,
    depth_scale: float | None,
    K: np.ndarray,
    image_hw: tuple[int, int],
    renderer: Renderer | None,
    stats: RefineStats,
    device: torch.device | str = "cpu",
    limits: RefineLimits = RefineLimits(),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Refined (R, t mm) of every target of one image; the input pose wherever it fails.

    ``"none"`` returns the input poses and leaves ``stats`` alone. Otherwise the depth is
    checked (:func:`check_depth`, then :func:`check_depth_scale` against the scene): when
    unusable every target keeps its pose and counts as ``skipped_invalid_depth``, the
    reason in ``stats.invalid_depth_reasons``. Targets the refiner finds no support for
    count as ``skipped_no_support``, non-finite or non-rotation results as ``non_finite``,
    results that move the object farther than ``limits`` allow (or behind the camera) as
    ``rejected_implausible`` (input pose kept), the rest as ``refined``. The refiner's
    wall time (CUDA synchronized) is split evenly over the targets into ``stats.seconds``.

    Args:
        method: a name in :data:`REFINERS` ("none", "fast", "icp").
        targets: the detections of the image.
        depth_mm: (H, W) sensor depth in mm or None when the image has none.
        depth_scale: the image's depth scale (checked only).
        K: (3, 3) intrinsics in px.
        image_hw: (H, W) of the colour image.
        renderer: renderer with the object meshes (mm); needed unless ``method`` is "none".
        stats: counters to update.
        device: where batched refiners (ICP) run.
        limits: what counts as an implausible depth or update.

    Raises:
        UnknownNameError: for an unknown method.
        ValueError: when a refiner needs a renderer and none is given.
    """
    refiner = REFINERS.get(method)
    inputs = [(tg.R, tg.t) for tg in targets]
    if method == "none" or not targets:
        return inputs
    if renderer is None:
        raise ValueError(f"depth refinement {method!r} needs a renderer with the object meshes")
    reason = check_depth(depth_mm, image_hw, depth_scale)
    diameters = [2.0 * renderer.bounding_radius(tg.obj_id) for tg in targets]
    depth = sanitize_depth(depth_mm) if reason is None else None
    if reason is None:
        reason = check_depth_scale(depth, K, targets, diameters, limits)
    if reason is not None:
        stats.skipped_invalid_depth += len(targets)
        stats.invalid_depth_reasons[reason] = stats.invalid_depth_reasons.get(reason, 0) + 1
        return inputs
    synchronize = torch.cuda.is_available() and torch.device(device).type == "cuda"
    if synchronize:
        torch.cuda.synchronize()
    start = time.perf_counter()
    outcomes = refiner(targets, depth, np.asarray(K, np.float64), renderer, torch.device(device))
    if synchronize:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    stats.seconds += [elapsed / len(targets)] * len(targets)
    poses = []
    for (R, t), outcome, diameter in zip(inputs, outcomes, diameters):
        if not outcome.supported:
            stats.skipped_no_support += 1
            poses.append((R, t))
        elif not _is_valid_pose(outcome.R, outcome.t):
            stats.non_finite += 1
            poses.append((R, t))
        elif not limits.plausible(t, np.asarray(outcome.t, np.float64).reshape(3), diameter):
            stats.rejected_implausible += 1
            poses.append((R, t))
        else:
            stats.refined += 1
            poses.append((np.asarray(outcome.R, np.float64), np.asarray(outcome.t, np.float64).reshape(3)))
    return poses
