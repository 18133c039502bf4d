"""Point-to-plane ICP, the ``icp`` depth refiner: a 6-DoF update of the network pose.

:func:`icp_refine` aligns the rendered visible model surface with the back-projected
sensor depth inside the object's mask; :func:`icp_refine_many` does it for the objects of
an image as one batch. :func:`point_to_plane_icp` is the batched solver on point sets
(:class:`IcpResult`); :func:`depth_points_and_normals` back-projects a depth image with
normals, for source and target alike. Conventions as in :mod:`fastgdr.inference.refine`
(poses model → camera in mm, depth z in mm with 0 = missing, OpenCV pixel centres).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastgdr.geometry import axis_angle_to_matrix

if TYPE_CHECKING:
    from fastgdr.render import Renderer


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
