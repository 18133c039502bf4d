"""Rotation representations and allocentric/egocentric conversions.

All functions are batched over arbitrary leading dimensions ``...``, work on any
device and floating dtype, and are differentiable. Rotation matrices act on
column vectors (``x_cam = R @ x_obj``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _check_shape(tensor: Tensor, name: str, trailing_shape: Sequence[int]) -> None:
    """Raise ValueError unless ``tensor`` has shape ``(..., *trailing_shape)``."""
    trailing = tuple(trailing_shape)
    shape = tuple(tensor.shape)
    if len(shape) < len(trailing) or shape[len(shape) - len(trailing) :] != trailing:
        expected = ", ".join(["..."] + [str(d) for d in trailing])
        raise ValueError(f"{name} must have shape ({expected}), got {shape}")


def _skew(v: Tensor) -> Tensor:
    """Cross-product matrix ``[v]_x`` of ``v`` [..., 3] -> [..., 3, 3]."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    rows = (
        torch.stack((zero, -z, y), dim=-1),
        torch.stack((z, zero, -x), dim=-1),
        torch.stack((-y, x, zero), dim=-1),
    )
    return torch.stack(rows, dim=-2)


def _eye_like(v: Tensor) -> Tensor:
    """Identity [..., 3, 3] with the leading shape, dtype and device of ``v`` [..., 3]."""
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye.expand(*v.shape[:-1], 3, 3)


def rot6d_to_matrix(rot6d: Tensor) -> Tensor:
    """Convert the continuous 6D rotation representation to rotation matrices.

    Gram-Schmidt as in GDRNPP: with ``a = rot6d[..., 0:3]`` and ``b = rot6d[..., 3:6]``,
    ``x = normalize(a)``, ``z = normalize(x × b)``, ``y = z × x``; the matrix has
    ``x, y, z`` as its columns. Cross products are always taken along the last dim.

    Args:
        rot6d: [..., 6] unnormalized pair of vectors (dimensionless).

    Returns:
        [..., 3, 3] rotation matrices (orthonormal, det = +1).

    Raises:
        ValueError: if the last dimension is not 6.
    """
    _check_shape(rot6d, "rot6d", (6,))
    a, b = rot6d[..., 0:3], rot6d[..., 3:6]
    x = torch.nn.functional.normalize(a, dim=-1)
    z = torch.nn.functional.normalize(torch.linalg.cross(x, b, dim=-1), dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    return torch.stack((x, y, z), dim=-1)


def matrix_to_rot6d(matrix: Tensor) -> Tensor:
    """Convert rotation matrices to the 6D representation (first two columns).

    Inverse of :func:`rot6d_to_matrix` on rotation matrices:
    ``rot6d_to_matrix(matrix_to_rot6d(R)) == R``.

    Args:
        matrix: [..., 3, 3] rotation matrices.

    Returns:
        [..., 6] = concatenation of the first column and the second column.

    Raises:
        ValueError: if the input is not [..., 3, 3].
    """
    _check_shape(matrix, "matrix", (3, 3))
    return torch.cat((matrix[..., :, 0], matrix[..., :, 1]), dim=-1)


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula: rotation vector to rotation matrix.

    ``R = I + sin(θ)/θ [v]_x + (1 - cos θ)/θ² [v]_x²`` with ``θ = |v|``; a Taylor
    expansion is used for small ``θ`` so value and gradient are finite at ``v = 0``.

    Args:
        axis_angle: [..., 3] rotation vector = unit axis · angle (radians).

    Returns:
        [..., 3, 3] rotation matrices (counter-clockwise about the axis).

    Raises:
        ValueError: if the last dimension is not 3.
    """
    _check_shape(axis_angle, "axis_angle", (3,))
    theta2 = (axis_angle * axis_angle).sum(dim=-1)
    small = theta2 < 1e-4
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    half_sin = torch.sin(0.5 * theta)
    coef_a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, torch.sin(theta) / theta)
    coef_b = torch.where(
        small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0, 2.0 * half_sin * half_sin / (theta * theta)
    )
    skew = _skew(axis_angle)
    return (
        _eye_like(axis_angle)
        + coef_a[..., None, None] * skew
        + coef_b[..., None, None] * (skew @ skew)
    )


def rotation_angle_between(rot1: Tensor, rot2: Tensor) -> Tensor:
    """Geodesic angle between two rotations.

    ``arccos(clamp((trace(R1 R2^T) - 1) / 2, -1, 1))``. The gradient is unbounded
    as the angle approaches 0 or π (derivative of arccos).

    Args:
        rot1: [..., 3, 3] rotation matrices.
        rot2: [..., 3, 3] rotation matrices (broadcastable with ``rot1``).

    Returns:
        [...] angles in radians, in [0, π].

    Raises:
        ValueError: if an input is not [..., 3, 3].
    """
    _check_shape(rot1, "rot1", (3, 3))
    _check_shape(rot2, "rot2", (3, 3))
    trace = (rot1 * rot2).sum(dim=(-2, -1))
    return torch.acos(((trace - 1.0) * 0.5).clamp(-1.0, 1.0))


def _ray_rotation(translation: Tensor) -> Tensor:
    """Rotation turning the optical axis ẑ = (0, 0, 1) onto the viewing ray t/|t|.

    With ``t̂ = t/|t|``, ``v = ẑ × t̂`` (so ``|v| = sin``) and ``c = ẑ·t̂ = cos``,
    ``R = I + [v]_x + [v]_x² / (1 + c)``: the rotation about ``normalize(v)`` by
    ``acos(c)``, written so that it is smooth at ``v = 0`` (t on the optical axis).
    It is singular only for ``t̂ = -ẑ`` (object exactly behind the camera).
    """
    unit = torch.nn.functional.normalize(translation, dim=-1)
    tx, ty, tz = unit.unbind(-1)
    v = torch.stack((-ty, tx, torch.zeros_like(tz)), dim=-1)
    skew = _skew(v)
    return _eye_like(v) + skew + (skew @ skew) / (1.0 + tz)[..., None, None]


def allocentric_to_egocentric(rot_allo: Tensor, translation: Tensor) -> Tensor:
    """Convert an allocentric rotation to the egocentric (camera-frame) rotation.

    The allocentric rotation is the object's rotation as seen by a camera looking
    straight at it. ``R_ego = R_ray @ R_allo`` where ``R_ray`` rotates the optical
    axis ẑ onto ``t/|t|`` about ``normalize(ẑ × t)`` by ``acos(ẑ·t/|t|)``.
    Exact and differentiable, including for t on the optical axis (``R_ego = R_allo``);
    singular only for t pointing exactly backwards (t_z < 0 on the axis), which cannot
    happen for objects in front of the camera.

    Args:
        rot_allo: [..., 3, 3] allocentric rotation matrices.
        translation: [..., 3] object translation in the camera frame (any unit, non-zero).

    Returns:
        [..., 3, 3] egocentric rotation matrices.

    Raises:
        ValueError: on wrong input shapes.
    """
    _check_shape(rot_allo, "rot_allo", (3, 3))
    _check_shape(translation, "translation", (3,))
    return _ray_rotation(translation) @ rot_allo


def egocentric_to_allocentric(rot_ego: Tensor, translation: Tensor) -> Tensor:
    """Convert an egocentric (camera-frame) rotation to the allocentric rotation.

    Inverse of :func:`allocentric_to_egocentric`: ``R_allo = R_ray^T @ R_ego``.

    Args:
        rot_ego: [..., 3, 3] egocentric rotation matrices.
        translation: [..., 3] object translation in the camera frame (any unit, non-zero,
            not pointing exactly backwards).

    Returns:
        [..., 3, 3] allocentric rotation matrices.

    Raises:
        ValueError: on wrong input shapes.
    """
    _check_shape(rot_ego, "rot_ego", (3, 3))
    _check_shape(translation, "translation", (3,))
    return _ray_rotation(translation).transpose(-2, -1) @ rot_ego
