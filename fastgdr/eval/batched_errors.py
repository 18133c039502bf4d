"""Pose errors of the BOP toolkit for many pose pairs of one object at once (torch, float64).

The fast counterpart of :mod:`fastgdr.eval.reference_errors`, which defines each error
and is the reference these functions are tested against. All inputs may be numpy arrays
or tensors; the computation runs in float64 on the device of ``R_e`` (when it is a
tensor; CPU otherwise) and returns tensors there.

Conventions: N pose pairs, model → camera, ``R`` [N, 3, 3], ``t`` [N, 3] in mm;
``points`` [P, 3] model vertices in mm (from ``models_eval``); symmetries ``sym_R``
[S, 3, 3], ``sym_t`` [S, 3] mm from :func:`fastgdr.data.symmetry.symmetry_transformations`
(identity included). No gating is applied: the scorer applies the gates
(:func:`spheres_overlap` for VSD, ‖t_e − t_g‖ ≥ diameter for MSSD/ADD/ADI).

Large products (N pairs × S symmetries × P points) are processed in blocks whose
temporaries stay below about :data:`CPU_BLOCK_BYTES` (CPU) or :data:`DEVICE_BLOCK_BYTES`
(other devices) each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fastgdr.data.visibility import depth_to_distance

ArrayLike = np.ndarray | Tensor
# Budget (bytes) of the largest temporary of one block of the pair × symmetry × point
# work: cache-sized on the CPU (larger blocks run several times slower there), large on
# an accelerator (fewer kernel launches).
CPU_BLOCK_BYTES = 8 * 2**20
DEVICE_BLOCK_BYTES = 256 * 2**20


class DepthRenderer(Protocol):
    """What :class:`VSDEvaluator` needs of a renderer (e.g. :class:`fastgdr.render.Renderer`)."""

    def render_depth(
        self, obj_id: int, R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int
    ) -> np.ndarray:
        """(H, W) float32 z-depth in mm of the object alone in pose (R, t); 0 = nothing."""

    def bounding_radius(self, obj_id: int) -> float:
        """Largest distance (mm) of a model vertex from the model origin."""


def _device_of(value: ArrayLike) -> torch.device:
    return value.device if isinstance(value, Tensor) else torch.device("cpu")


def _tensor(value: ArrayLike, name: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """``value`` as a float64 tensor on ``device``; -1 in ``shape`` matches any size."""
    tensor = torch.as_tensor(value).to(device=device, dtype=torch.float64)
    if tensor.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, tensor.shape)):
        expected = "[" + ", ".join("*" if s == -1 else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {expected}, got {list(tensor.shape)}")
    return tensor


def _pairs(
    R_e: ArrayLike, t_e: ArrayLike, R_g: ArrayLike, t_g: ArrayLike
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The N pose pairs as float64 tensors on the device of ``R_e``, shapes checked."""
    device = _device_of(R_e)
    R_e = _tensor(R_e, "R_e", (-1, 3, 3), device)
    n = len(R_e)
    return (
        R_e,
        _tensor(t_e, "t_e", (n, 3), device),
        _tensor(R_g, "R_g", (n, 3, 3), device),
        _tensor(t_g, "t_g", (n, 3), device),
    )


def _points(points: ArrayLike, device: torch.device) -> Tensor:
    points = _tensor(points, "points", (-1, 3), device)
    if len(points) == 0:
        raise ValueError("points must hold at least one model vertex, got none")
    return points


def _symmetries(sym_R: ArrayLike, sym_t: ArrayLike, device: torch.device) -> tuple[Tensor, Tensor]:
    sym_R = _tensor(sym_R, "sym_R", (-1, 3, 3), device)
    if len(sym_R) == 0:
        raise ValueError("sym_R must hold at least the identity, got no symmetry")
    return sym_R, _tensor(sym_t, "sym_t", (len(sym_R), 3), device)


def _intrinsics(K: ArrayLike, n: int, device: torch.device) -> Tensor:
    """[n, 3, 3] float64 intrinsics from a shared [3, 3] or per-pair [n, 3, 3] K."""
    K = torch.as_tensor(K).to(device=device, dtype=torch.float64)
    if K.shape == (3, 3):
        return K.expand(n, 3, 3)
    if K.shape != (n, 3, 3):
        raise ValueError(f"K must have shape [3, 3] or [{n}, 3, 3], got {list(K.shape)}")
    return K


def _block_bytes(device: torch.device) -> int:
    return CPU_BLOCK_BYTES if device.type == "cpu" else DEVICE_BLOCK_BYTES


def _symmetry_blocks(
    n: int, s: int, bytes_per_column: int, device: torch.device
) -> list[tuple[int, int, int, int]]:
    """Blocks (n0, n1, s0, s1) covering n pairs × s symmetries, each of at most
    ``block bytes // bytes_per_column`` (pair, symmetry) columns."""
    columns = max(1, _block_bytes(device) // bytes_per_column)
    if columns >= s:
        step = columns // s
        return [(n0, min(n, n0 + step), 0, s) for n0 in range(0, n, step)]
    return [(i, i + 1, s0, min(s, s0 + columns)) for i in range(n) for s0 in range(0, s, columns)]


def add_errors(R_e: ArrayLike, t_e: ArrayLike, R_g: ArrayLike, t_g: ArrayLike, points: ArrayLike) -> Tensor:
    """ADD per pair: mean vertex distance (mm), computed as ‖(R_e − R_g) x + (t_e − t_g)‖.

    Returns:
        [N] float64.
    """
    R_e, t_e, R_g, t_g = _pairs(R_e, t_e, R_g, t_g)
    points = _points(points, R_e.device)
    A, b = R_e - R_g, t_e - t_g
    out = torch.empty(len(A), dtype=torch.float64, device=A.device)
    step = max(1, _block_bytes(A.device) // (len(points) * 3 * 8))
    for n0 in range(0, len(A), step):
        diff = points @ A[n0 : n0 + step].transpose(1, 2) + b[n0 : n0 + step, None, :]
        out[n0 : n0 + step] = diff.norm(dim=2).mean(dim=1)
    return out


def adi_errors(
    R_e: ArrayLike, t_e: ArrayLike, R_g: ArrayLike, t_g: ArrayLike, points: ArrayLike, chunk: int = 4096
) -> Tensor:
    """ADI (ADD-S) per pair: mean over GT-posed vertices of the distance (mm) to the
    nearest estimate-posed vertex.

    Works in the estimate's model frame: GT-posed vertex x maps to
    ``y = R_eᵀ (R_g x + t_g − t_e)``, whose nearest model vertex is found with a k-d tree
    over the model vertices on the CPU (built once per call, as the BOP toolkit does per
    pair) and with :func:`torch.cdist` on blocks of ``chunk`` query points elsewhere; the
    distance to it is then recomputed exactly.

    Returns:
        [N] float64.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of points, got {chunk}")
    R_e, t_e, R_g, t_g = _pairs(R_e, t_e, R_g, t_g)
    points = _points(points, R_e.device)
    num_points = len(points)
    M = R_e.transpose(1, 2) @ R_g
    v = (R_e.transpose(1, 2) @ (t_g - t_e)[:, :, None])[:, :, 0]
    out = torch.empty(len(M), dtype=torch.float64, device=M.device)
    if M.device.type == "cpu":
        from scipy.spatial import cKDTree

        queries = points @ M.transpose(1, 2) + v[:, None, :]  # [N, P, 3]
        index = torch.from_numpy(cKDTree(points.numpy()).query(queries.reshape(-1, 3).numpy())[1])
        nearest = (queries.reshape(-1, 3) - points[index]).norm(dim=1)
        return nearest.view(len(M), num_points).mean(dim=1)
    pairs_per_block = max(1, chunk // num_points)
    for n0 in range(0, len(M), pairs_per_block):
        n1 = min(len(M), n0 + pairs_per_block)
        queries = (points @ M[n0:n1].transpose(1, 2) + v[n0:n1, None, :]).reshape(-1, 3)
        nearest = torch.empty(len(queries), dtype=torch.float64, device=M.device)
        for q0 in range(0, len(queries), chunk):
            block = queries[q0 : q0 + chunk]
            index = torch.cdist(block, points).argmin(dim=1)
            nearest[q0 : q0 + chunk] = (block - points[index]).norm(dim=1)
        out[n0:n1] = nearest.view(n1 - n0, num_points).mean(dim=1)
    return out


def _quadratic_features(points: Tensor) -> Tensor:
    """[10, P] monomials (x², y², z², xy, xz, yz, x, y, z, 1) of the points."""
    x, y, z = points.unbind(dim=1)
    return torch.stack([x * x, y * y, z * z, x * y, x * z, y * z, x, y, z, torch.ones_like(x)])


def mssd_errors(
    R_e: ArrayLike,
    t_e: ArrayLike,
    R_g: ArrayLike,
    t_g: ArrayLike,
    points: ArrayLike,
    sym_R: ArrayLike,
    sym_t: ArrayLike,
) -> Tensor:
    """MSSD per pair: min over symmetries of the max vertex distance (mm) between
    ``R_e x + t_e`` and ``R_g (S_R x + S_t) + t_g``.

    For pair n and symmetry s the distance is ‖A x + b‖ with A = R_e − R_g S_R and
    b = t_e − R_g S_t − t_g. Its square is the quadratic form xᵀAᵀAx + 2bᵀAx + bᵀb,
    a dot product of 10 coefficients with the 10 monomials of x, so one matrix product
    [columns, 10] @ [10, P] gives every squared distance of a block; nothing is
    transformed per symmetry.

    Returns:
        [N] float64.
    """
    R_e, t_e, R_g, t_g = _pairs(R_e, t_e, R_g, t_g)
    points = _points(points, R_e.device)
    sym_R, sym_t = _symmetries(sym_R, sym_t, R_e.device)
    features = _quadratic_features(points)
    out = torch.full((len(R_e),), math.inf, dtype=torch.float64, device=R_e.device)
    for n0, n1, s0, s1 in _symmetry_blocks(len(R_e), len(sym_R), len(points) * 8, R_e.device):
        A = R_e[n0:n1, None] - R_g[n0:n1, None] @ sym_R[None, s0:s1]  # [n, s, 3, 3]
        b = (t_e - t_g)[n0:n1, None] - (R_g[n0:n1, None] @ sym_t[None, s0:s1, :, None])[..., 0]
        M = A.transpose(-1, -2) @ A
        v = (A.transpose(-1, -2) @ b[..., None])[..., 0]
        coefficients = torch.stack(
            [M[..., 0, 0], M[..., 1, 1], M[..., 2, 2], 2 * M[..., 0, 1], 2 * M[..., 0, 2], 2 * M[..., 1, 2],
             2 * v[..., 0], 2 * v[..., 1], 2 * v[..., 2], (b * b).sum(dim=-1)],
            dim=-1,
        )  # fmt: skip
        squared_max = (coefficients.reshape(-1, 10) @ features).amax(dim=1).view(n1 - n0, s1 - s0)
        block_min = squared_max.clamp(min=0.0).sqrt().amin(dim=1)
        out[n0:n1] = torch.minimum(out[n0:n1], block_min)
    return out


def mspd_errors(
    R_e: ArrayLike,
    t_e: ArrayLike,
    R_g: ArrayLike,
    t_g: ArrayLike,
    K: ArrayLike,
    points: ArrayLike,
    sym_R: ArrayLike,
    sym_t: ArrayLike,
) -> Tensor:
    """MSPD per pair: like :func:`mssd_errors` with the 2D distance (px) between the
    projections through K of ``R_e x + t_e`` and ``R_g (S_R x + S_t) + t_g``.

    Each (pair, symmetry) projects the points with the composed matrix K R_g S_R and
    vector K (R_g S_t + t_g) in one matrix product per block.

    Args:
        K: [N, 3, 3] per-pair or [3, 3] shared intrinsics in px.

    Returns:
        [N] float64.
    """
    R_e, t_e, R_g, t_g = _pairs(R_e, t_e, R_g, t_g)
    device = R_e.device
    points = _points(points, device)
    sym_R, sym_t = _symmetries(sym_R, sym_t, device)
    K = _intrinsics(K, len(R_e), device)
    num_points = len(points)
    points_T = points.T
    KR_g = K @ R_g
    Kt_g = (K @ t_g[:, :, None])[:, None, :, 0]  # [N, 1, 3]
    out = torch.full((len(R_e),), math.inf, dtype=torch.float64, device=device)
    for n0, n1, s0, s1 in _symmetry_blocks(len(R_e), len(sym_R), num_points * 8 * 6, device):
        n, s = n1 - n0, s1 - s0
        est = K[n0:n1] @ (R_e[n0:n1] @ points_T + t_e[n0:n1, :, None])  # [n, 3, P]
        u_e, v_e = est[:, 0] / est[:, 2], est[:, 1] / est[:, 2]  # [n, P] px
        Q = KR_g[n0:n1, None] @ sym_R[None, s0:s1]  # [n, s, 3, 3]
        q = (KR_g[n0:n1, None] @ sym_t[None, s0:s1, :, None])[..., 0] + Kt_g[n0:n1]  # [n, s, 3]
        gt = (Q.reshape(-1, 3) @ points_T).view(n, s, 3, num_points) + q[..., None]
        du = gt[:, :, 0] / gt[:, :, 2] - u_e[:, None]
        dv = gt[:, :, 1] / gt[:, :, 2] - v_e[:, None]
        block_min = (du.square_() + dv.square_()).amax(dim=2).amin(dim=1).sqrt()
        out[n0:n1] = torch.minimum(out[n0:n1], block_min)
    return out


def rotation_errors(R_e: ArrayLike, R_g: ArrayLike) -> Tensor:
    """Rotation error per pair in degrees, from the chordal distance:
    2·arcsin(‖R_e − R_g‖_F / √8), the argument clamped to 1.

    For rotations this is the angle of R_e R_gᵀ, the BOP toolkit's
    arccos((tr(R_e R_gᵀ) − 1) / 2) (‖R_e − R_g‖_F² = 8 sin²(θ/2)), and it is exact at 0
    where the arccos resolves only ~1e-6°. A results file may hold any matrix as R_e; this
    error then reflects the matrix given and is 0 only for R_e = R_g, where the trace
    formula reports 0 for every R_e = R_g S with tr S = 3 (a shear, e.g.) and treats
    scaled rotations as rotations: R_g S with a shear of 0.3 in S gives 12.2°, 0.5·R_g
    35.7°, R_g·diag(1, 1, −1) 90°, −R_g 180°.

    Args:
        R_e, R_g: [N, 3, 3].

    Returns:
        [N] float64 in [0, 180].
    """
    device = _device_of(R_e)
    R_e = _tensor(R_e, "R_e", (-1, 3, 3), device)
    R_g = _tensor(R_g, "R_g", (len(R_e), 3, 3), device)
    chord = torch.linalg.matrix_norm(R_e - R_g) / math.sqrt(8.0)
    return torch.rad2deg(2.0 * torch.arcsin(chord.clamp(max=1.0)))


def symmetric_rotation_errors(R_e: ArrayLike, R_g: ArrayLike, sym_R: ArrayLike) -> Tensor:
    """Rotation error per pair in degrees up to the object's symmetries: the smallest
    :func:`rotation_errors` between R_e and any R_g·S over the symmetry rotations S.

    An estimate that is one of the GT's symmetric twins (the box turned by 180° about a
    symmetry axis, a cylinder turned about its axis) has error 0, as its MSSD and MSPD
    are 0. A continuous symmetry is sampled (:func:`fastgdr.data.symmetry.symmetry_transformations`,
    steps of 360°/315), so for a turn between two samples the error is at most half a step
    (0.57°) above the exact one.

    Args:
        R_e, R_g: [N, 3, 3].
        sym_R: [S, 3, 3] symmetry rotations, identity included.

    Returns:
        [N] float64 in [0, 180].
    """
    device = _device_of(R_e)
    R_e = _tensor(R_e, "R_e", (-1, 3, 3), device)
    R_g = _tensor(R_g, "R_g", (len(R_e), 3, 3), device)
    sym_R = _tensor(sym_R, "sym_R", (-1, 3, 3), device)
    if len(sym_R) == 0:
        raise ValueError("sym_R must hold at least the identity, got no symmetry")
    twins = R_g[:, None] @ sym_R[None]  # [N, S, 3, 3]
    estimates = R_e[:, None].expand_as(twins)
    return rotation_errors(estimates.reshape(-1, 3, 3), twins.reshape(-1, 3, 3)).view(len(R_e), -1).amin(dim=1)


def translation_errors(t_e: ArrayLike, t_g: ArrayLike) -> Tensor:
    """Translation error ‖t_e − t_g‖ per pair in mm; t_e, t_g [N, 3]. Returns [N] float64."""
    device = _device_of(t_e)
    t_e = _tensor(t_e, "t_e", (-1, 3), device)
    return (t_e - _tensor(t_g, "t_g", (len(t_e), 3), device)).norm(dim=1)


def spheres_overlap(t_e: ArrayLike, t_g: ArrayLike, K: ArrayLike, radius: float | ArrayLike) -> Tensor:
    """The VSD gate per pair: whether the image projections of two spheres of ``radius``
    centred at t_e and t_g overlap (the toolkit's approximation).

    Same rule as :func:`fastgdr.eval.reference_errors.overlapping_sphere_projections`:
    on the normalized image plane, ‖(x_e, y_e)/z_e − (x_g, y_g)/z_g‖ <
    radius · (1/z_e + 1/z_g), and False when a z is 0. The rule does not depend on the
    intrinsics (with fx = fy it is the same test in pixels), so of ``K`` only the shape
    is checked; it is taken so that callers pass what a pixel-space gate would need.

    Args:
        t_e, t_g: [N, 3] sphere centres in the camera frame, mm.
        K: [N, 3, 3] or [3, 3] intrinsics in px (shape checked only).
        radius: sphere radius in mm, a float or [N] (the scorer passes diameter / 2).

    Returns:
        [N] bool.
    """
    device = _device_of(t_e)
    t_e = _tensor(t_e, "t_e", (-1, 3), device)
    t_g = _tensor(t_g, "t_g", (len(t_e), 3), device)
    _intrinsics(K, len(t_e), device)
    radius = torch.as_tensor(radius, dtype=torch.float64, device=device)
    z_e, z_g = t_e[:, 2], t_g[:, 2]
    distance = (t_e[:, :2] / z_e[:, None] - t_g[:, :2] / z_g[:, None]).norm(dim=1)
    return (z_e != 0) & (z_g != 0) & (distance < radius * (1.0 / z_e + 1.0 / z_g))


class _Render:
    """One rendered pose: a depth window [h, w] float32 (mm, 0 = nothing) whose top-left
    pixel is image pixel ``origin`` (row, col), and the silhouette's box in image
    coordinates (row0, row1, col0, col1), end-exclusive, or None when nothing is seen."""

    def __init__(self, depth: np.ndarray, origin: tuple[int, int], device: torch.device) -> None:
        mask = depth > 0
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        r, c = origin
        self.box = None if rows.size == 0 else (r + int(rows[0]), r + int(rows[-1]) + 1, c + int(cols[0]), c + int(cols[-1]) + 1)
        self.origin = origin
        self.depth = torch.from_numpy(np.ascontiguousarray(depth)).to(device)

    def region(self, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        """Depth over image rows r0:r1, columns c0:c1 (0 outside the rendered window)."""
        out = torch.zeros(r1 - r0, c1 - c0, dtype=self.depth.dtype, device=self.depth.device)
        wr, wc = self.origin
        h, w = self.depth.shape
        a0, a1, b0, b1 = max(r0, wr), min(r1, wr + h), max(c0, wc), min(c1, wc + w)
        if a0 < a1 and b0 < b1:
            out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = self.depth[a0 - wr : a1 - wr, b0 - wc : b1 - wc]
        return out


def render_window(
    t: np.ndarray, radius: float, K: np.ndarray, width: int, height: int, near: float = 10.0
) -> tuple[int, int, int, int]:
    """Image rows/columns (r0, r1, c0, c1), end-exclusive, that contain the projection of a
    sphere of ``radius`` (mm) centred at ``t`` (camera frame, mm): the projections of the
    corners of the sphere's box in (x, z) and (y, z), widened by one pixel; the whole image
    when the sphere reaches closer than ``near`` mm. Pinhole K without skew."""
    x, y, z = (float(v) for v in t)
    if z - radius <= near:
        return 0, height, 0, width
    zs = (z - radius, z + radius)
    us = [K[0, 0] * (x + s * radius) / d + K[0, 2] for s in (-1, 1) for d in zs]
    vs = [K[1, 1] * (y + s * radius) / d + K[1, 2] for s in (-1, 1) for d in zs]
    c0, c1 = max(0, int(np.floor(min(us))) - 1), min(width, int(np.ceil(max(us))) + 2)
    r0, r1 = max(0, int(np.floor(min(vs))) - 1), min(height, int(np.ceil(max(vs))) + 2)
    if r0 >= r1 or c0 >= c1:  # entirely outside the image: render one pixel, it stays empty
        return 0, 1, 0, 1
    return r0, r1, c0, c1


class VSDEvaluator:
    """VSD (step cost, "bop19" visibility) for many pose pairs of one object in one image.

    Computes the values of :func:`fastgdr.eval.reference_errors.vsd` (same float32/float64
    steps). Each pose is rendered only in the window its bounding sphere can cover (same
    pixels, a fraction of the raster work at full image size), and within one
    :meth:`errors` call each distinct pose is rendered once (one GT against several
    estimates costs one GT render); the pixel work runs in torch over the union of the
    two silhouettes' boxes only (every mask involved lies inside it).

    Args:
        renderer: has ``render_depth(obj_id, R, t, K, width, height)`` (e.g.
            :class:`fastgdr.render.Renderer` holding the ``models_eval`` meshes).
        width: image width W in px.
        height: image height H in px.
        delta: visibility tolerance in mm (15; 5 for ITODD).
        taus: T misalignment tolerances (fractions of the diameter when
            ``normalized_by_diameter``, else mm).
        normalized_by_diameter: divide pixel distances by the object diameter.
        device: where the pixel work runs.
    """

    def __init__(
        self,
        renderer: DepthRenderer,
        width: int,
        height: int,
        delta: float,
        taus: Sequence[float],
        normalized_by_diameter: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got width={width}, height={height}")
        if len(taus) == 0:
            raise ValueError("taus must hold at least one misalignment tolerance, got none")
        self.renderer = renderer
        self.width = int(width)
        self.height = int(height)
        self.device = torch.device(device)
        # The toolkit compares float32 distance differences with delta (as float32).
        self.delta = torch.tensor(delta, dtype=torch.float32, device=self.device)
        self.taus = torch.tensor([float(tau) for tau in taus], dtype=torch.float64, device=self.device)
        self.normalized_by_diameter = bool(normalized_by_diameter)
        self._ray_norm_cache: tuple[bytes, Tensor] | None = None

    def errors(
        self,
        obj_id: int,
        R_e: ArrayLike,
        t_e: ArrayLike,
        R_g: ArrayLike,
        t_g: ArrayLike,
        depth_test: ArrayLike,
        K: ArrayLike,
        diameter: float,
    ) -> Tensor:
        """VSD of N pose pairs of object ``obj_id`` in one test image.

        Args:
            obj_id: object id known to the renderer.
            R_e, R_g: [N, 3, 3] rotations, model → camera.
            t_e, t_g: [N, 3] translations in mm.
            depth_test: (H, W) measured depth in mm, 0 = missing.
            K: (3, 3) intrinsics in px of the test image.
            diameter: object diameter in mm.

        Returns:
            [N, T] float64 errors in [0, 1] (1.0 where both visible masks are empty).
        """
        R_e, t_e, R_g, t_g = (x.cpu().numpy() for x in _pairs(R_e, t_e, R_g, t_g))
        K = _tensor(K, "K", (3, 3), torch.device("cpu")).numpy()
        depth_test = _tensor(depth_test, "depth_test", (self.height, self.width), self.device)
        ray_norm = self._ray_norm(K)
        renders: dict[bytes, _Render] = {}

        radius = self.renderer.bounding_radius(obj_id)

        def render(R: np.ndarray, t: np.ndarray) -> _Render:
            key = np.concatenate([R.ravel(), t]).tobytes()
            if key not in renders:
                # only the window the object can cover: far fewer pixels to rasterize and read
                r0, r1, c0, c1 = render_window(t, radius, K, self.width, self.height)
                K_window = K.copy()
                K_window[0, 2] -= c0
                K_window[1, 2] -= r0
                depth = self.renderer.render_depth(obj_id, R, t, K_window, c1 - c0, r1 - r0)
                renders[key] = _Render(np.asarray(depth), (r0, c0), self.device)
            return renders[key]

        out = torch.empty(len(R_e), len(self.taus), dtype=torch.float64, device=self.device)
        for i in range(len(R_e)):
            est, gt = render(R_e[i], t_e[i]), render(R_g[i], t_g[i])
            out[i] = self._pair_errors(est, gt, depth_test, ray_norm, diameter)
        return out

    def _ray_norm(self, K: np.ndarray) -> Tensor:
        """[H, W] per-pixel factor from depth to distance, exactly as
        :func:`~fastgdr.data.visibility.depth_to_distance` computes it; kept for the last K."""
        key = K.tobytes()
        if self._ray_norm_cache is None or self._ray_norm_cache[0] != key:
            ones = np.ones((self.height, self.width), dtype=np.float64)
            self._ray_norm_cache = (key, torch.from_numpy(depth_to_distance(ones, K)).to(self.device))
        return self._ray_norm_cache[1]

    def _pair_errors(
        self, est: _Render, gt: _Render, depth_test: Tensor, ray_norm: Tensor, diameter: float
    ) -> Tensor:
        """[T] VSD errors of one pair, over the union of the silhouettes' boxes."""
        boxes = [box for box in (est.box, gt.box) if box is not None]
        if not boxes:
            return torch.ones_like(self.taus)
        r0, c0 = min(b[0] for b in boxes), min(b[2] for b in boxes)
        r1, c1 = max(b[1] for b in boxes), max(b[3] for b in boxes)
        ray = ray_norm[r0:r1, c0:c1]
        test = depth_test[r0:r1, c0:c1]
        test_missing = test == 0
        dist_test = (test * ray).float()
        depth_g, depth_e = gt.region(r0, r1, c0, c1), est.region(r0, r1, c0, c1)
        dist_g, dist_e = depth_g.double() * ray, depth_e.double() * ray
        on_g, on_e = depth_g > 0, depth_e > 0
        visib_g = on_g & ((dist_g.float() - dist_test <= self.delta) | test_missing)
        visib_e = (on_e & ((dist_e.float() - dist_test <= self.delta) | test_missing)) | (visib_g & on_e)
        inter = visib_g & visib_e
        union_count = int((visib_g | visib_e).sum())
        if union_count == 0:
            return torch.ones_like(self.taus)
        outside_count = union_count - int(inter.sum())
        dists = (dist_g[inter] - dist_e[inter]).abs()
        if self.normalized_by_diameter:
            dists = dists / diameter
        wrong = (dists[:, None] >= self.taus[None, :]).sum(dim=0)
        return (wrong + outside_count).double() / union_count
