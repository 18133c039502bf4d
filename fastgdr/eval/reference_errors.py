"""Pose errors of the BOP toolkit, one pose pair at a time in numpy (the slow reference).

Each function mirrors the definition in the BOP toolkit's ``pose_error.py`` and
``misc.py``; :mod:`fastgdr.eval.batched_errors` computes the same numbers for many pairs
at once and is tested against these.

Conventions: poses are model → camera, ``X_cam = R @ x + t`` with R (3, 3) and t (3,)
in mm; ``pts`` (P, 3) are model vertices in mm (from ``models_eval``); K (3, 3) are
intrinsics in px; symmetries are ``sym_R`` (S, 3, 3), ``sym_t`` (S, 3) mm from
:func:`fastgdr.data.symmetry.symmetry_transformations` (identity included). No gating
is applied here (see :func:`overlapping_sphere_projections` for the VSD gate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.spatial import cKDTree

from fastgdr.data.visibility import depth_to_distance, visibility_mask

RenderDepth = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _pose(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if R.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"a pose needs R (3, 3) and t (3,), got R {R.shape} and t {t.shape}")
    return R, t


def _points(pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"pts must be a non-empty (P, 3) array, got shape {pts.shape}")
    return pts


def _symmetries(sym_R: np.ndarray, sym_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sym_R = np.asarray(sym_R, dtype=np.float64)
    sym_t = np.asarray(sym_t, dtype=np.float64)
    if sym_R.ndim != 3 or sym_R.shape[1:] != (3, 3) or sym_t.shape != (len(sym_R), 3) or len(sym_R) == 0:
        raise ValueError(
            f"symmetries must be sym_R (S, 3, 3) and sym_t (S, 3) with S >= 1, "
            f"got {sym_R.shape} and {sym_t.shape}"
        )
    return sym_R, sym_t


def _transform(pts: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return pts @ R.T + t


def _project(pts_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    homogeneous = pts_cam @ K.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def add(R_e: np.ndarray, t_e: np.ndarray, R_g: np.ndarray, t_g: np.ndarray, pts: np.ndarray) -> float:
    """ADD: mean distance (mm) between the vertices in the estimated and the GT pose."""
    R_e, t_e = _pose(R_e, t_e)
    R_g, t_g = _pose(R_g, t_g)
    pts = _points(pts)
    return float(np.linalg.norm(_transform(pts, R_e, t_e) - _transform(pts, R_g, t_g), axis=1).mean())


def adi(R_e: np.ndarray, t_e: np.ndarray, R_g: np.ndarray, t_g: np.ndarray, pts: np.ndarray) -> float:
    """ADI (ADD-S): mean over GT-posed vertices of the distance (mm) to the nearest
    estimate-posed vertex (k-d tree search)."""
    R_e, t_e = _pose(R_e, t_e)
    R_g, t_g = _pose(R_g, t_g)
    pts = _points(pts)
    nearest, _ = cKDTree(_transform(pts, R_e, t_e)).query(_transform(pts, R_g, t_g), k=1)
    return float(nearest.mean())


def mssd(
    R_e: np.ndarray,
    t_e: np.ndarray,
    R_g: np.ndarray,
    t_g: np.ndarray,
    pts: np.ndarray,
    sym_R: np.ndarray,
    sym_t: np.ndarray,
) -> float:
    """MSSD: min over symmetries S of the max vertex distance (mm) between
    ``R_e x + t_e`` and ``R_g (S_R x + S_t) + t_g``."""
    R_e, t_e = _pose(R_e, t_e)
    R_g, t_g = _pose(R_g, t_g)
    pts = _points(pts)
    sym_R, sym_t = _symmetries(sym_R, sym_t)
    pts_e = _transform(pts, R_e, t_e)
    per_symmetry = [
        np.linalg.norm(pts_e - _transform(pts, R_g @ S_R, R_g @ S_t + t_g), axis=1).max()
        for S_R, S_t in zip(sym_R, sym_t)
    ]
    return float(min(per_symmetry))


def mspd(
    R_e: np.ndarray,
    t_e: np.ndarray,
    R_g: np.ndarray,
    t_g: np.ndarray,
    K: np.ndarray,
    pts: np.ndarray,
    sym_R: np.ndarray,
    sym_t: np.ndarray,
) -> float:
    """MSPD: like :func:`mssd` but with the 2D distance (px) between the projections
    through K."""
    R_e, t_e = _pose(R_e, t_e)
    R_g, t_g = _pose(R_g, t_g)
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    pts = _points(pts)
    sym_R, sym_t = _symmetries(sym_R, sym_t)
    proj_e = _project(_transform(pts, R_e, t_e), K)
    per_symmetry = [
        np.linalg.norm(proj_e - _project(_transform(pts, R_g @ S_R, R_g @ S_t + t_g), K), axis=1).max()
        for S_R, S_t in zip(sym_R, sym_t)
    ]
    return float(min(per_symmetry))


def re(R_e: np.ndarray, R_g: np.ndarray) -> float:
    """Rotation error in degrees: arccos((tr(R_e R_gᵀ) − 1) / 2), cosine clamped to [−1, 1].

    Near 0 the arccos limits the precision to about 1e-6 degrees.
    """
    R_e = np.asarray(R_e, dtype=np.float64)
    R_g = np.asarray(R_g, dtype=np.float64)
    if R_e.shape != (3, 3) or R_g.shape != (3, 3):
        raise ValueError(f"R_e and R_g must have shape (3, 3), got {R_e.shape} and {R_g.shape}")
    cosine = min(1.0, max(-1.0, 0.5 * (float(np.trace(R_e @ R_g.T)) - 1.0)))
    return math.degrees(math.acos(cosine))


def re_sym(R_e: np.ndarray, R_g: np.ndarray, sym_R: np.ndarray) -> float:
    """Rotation error in degrees up to symmetry: the smallest :func:`re` between R_e and
    R_g·S over the symmetry rotations ``sym_R`` (S, 3, 3), identity included."""
    sym_R = np.asarray(sym_R, dtype=np.float64).reshape(-1, 3, 3)
    if len(sym_R) == 0:
        raise ValueError("sym_R must hold at least the identity, got no symmetry")
    R_g = np.asarray(R_g, dtype=np.float64)
    return min(re(R_e, R_g @ S) for S in sym_R)


def te(t_e: np.ndarray, t_g: np.ndarray) -> float:
    """Translation error ‖t_e − t_g‖ in mm."""
    t_e = np.asarray(t_e, dtype=np.float64).reshape(-1)
    t_g = np.asarray(t_g, dtype=np.float64).reshape(-1)
    if t_e.shape != (3,) or t_g.shape != (3,):
        raise ValueError(f"t_e and t_g must have 3 elements, got {t_e.shape} and {t_g.shape}")
    return float(np.linalg.norm(t_e - t_g))


def vsd(
    R_e: np.ndarray,
    t_e: np.ndarray,
    R_g: np.ndarray,
    t_g: np.ndarray,
    depth_test: np.ndarray,
    K: np.ndarray,
    delta: float,
    taus: Sequence[float],
    normalized_by_diameter: bool,
    diameter: float,
    render_depth: RenderDepth,
) -> list[float]:
    """VSD (Visible Surface Discrepancy) with the step cost and "bop19" visibility.

    1. Render the object's depth in both poses; convert test, GT and estimate depths to
       distance images (:func:`~fastgdr.data.visibility.depth_to_distance`).
    2. ``visib_gt`` = bop19 visibility of the GT render in the test depth;
       ``visib_est`` = that of the estimate's render, OR (``visib_gt`` AND estimate
       render > 0).
    3. Over the intersection: d = |dist_gt − dist_est| (÷ ``diameter`` when
       ``normalized_by_diameter``); a pixel is wrong when d ≥ τ.
    4. e(τ) = (wrong pixels + |union \\ intersection|) / |union|; 1.0 for an empty union.

    Args:
        depth_test: (H, W) measured depth in mm, 0 = missing.
        K: (3, 3) intrinsics in px.
        delta: visibility tolerance in mm (15; 5 for ITODD).
        taus: misalignment tolerances (fractions of the diameter when normalized, else mm).
        normalized_by_diameter: divide the pixel distances by ``diameter``.
        diameter: object diameter in mm.
        render_depth: ``(R, t) -> (H, W)`` depth in mm of the object alone in that pose
            (0 = background), rendered with K at the image size.

    Returns:
        One error in [0, 1] per τ.
    """
    R_e, t_e = _pose(R_e, t_e)
    R_g, t_g = _pose(R_g, t_g)
    depth_test = np.asarray(depth_test)
    depth_e = np.asarray(render_depth(R_e, t_e))
    depth_g = np.asarray(render_depth(R_g, t_g))
    if depth_e.shape != depth_test.shape or depth_g.shape != depth_test.shape:
        raise ValueError(
            f"renders {depth_e.shape}, {depth_g.shape} must have the test depth's shape {depth_test.shape}"
        )
    visib_g = visibility_mask(depth_test, depth_g, K, delta)
    visib_e = visibility_mask(depth_test, depth_e, K, delta) | (visib_g & (depth_e > 0))
    inter = visib_g & visib_e
    union_count = int(np.count_nonzero(visib_g | visib_e))
    if union_count == 0:
        return [1.0] * len(taus)
    outside_count = union_count - int(np.count_nonzero(inter))
    dists = np.abs(depth_to_distance(depth_g, K)[inter] - depth_to_distance(depth_e, K)[inter])
    if normalized_by_diameter:
        dists = dists / diameter
    return [(int(np.count_nonzero(dists >= tau)) + outside_count) / union_count for tau in taus]


def overlapping_sphere_projections(radius: float, p1: np.ndarray, p2: np.ndarray) -> bool:
    """The VSD gate: whether the image projections of two spheres overlap (approximated).

    The toolkit's rule, on the normalized image plane (so independent of K): the centres
    project to ``(X/Z, Y/Z)``, and the projections are taken to overlap iff the distance
    between the projected centres is strictly less than ``radius · (1/Z1 + 1/Z2)`` (the
    sum of the projected radii r/Z). A centre with Z = 0 never overlaps. In pixels with
    fx = fy = f the same test reads: distance < f·r/Z1 + f·r/Z2.

    Args:
        radius: radius of both spheres in mm (the scorer passes diameter / 2).
        p1: (3,) centre of the first sphere in the camera frame, mm (t_e).
        p2: (3,) centre of the second sphere, mm (t_g).
    """
    p1 = np.asarray(p1, dtype=np.float64).reshape(-1)
    p2 = np.asarray(p2, dtype=np.float64).reshape(-1)
    if p1.shape != (3,) or p2.shape != (3,):
        raise ValueError(f"p1 and p2 must have 3 elements, got {p1.shape} and {p2.shape}")
    if p1[2] == 0 or p2[2] == 0:
        return False
    centre_distance = np.linalg.norm(p1[:2] / p1[2] - p2[:2] / p2[2])
    return bool(centre_distance < radius * (1.0 / p1[2] + 1.0 / p2[2]))
