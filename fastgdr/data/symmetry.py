"""Object symmetries as BOP declares them, and farthest-point-sampled surface regions."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

MAX_SYM_DISC_STEP = 0.01  # BOP: continuous symmetries sampled so the farthest vertex moves ≤ 1 % of d


def symmetry_transformations(
    symmetries_discrete: Sequence[np.ndarray],
    symmetries_continuous: Sequence[tuple[np.ndarray, np.ndarray]],
    max_sym_disc_step: float = MAX_SYM_DISC_STEP,
) -> tuple[np.ndarray, np.ndarray]:
    """All symmetry transformations of an object, as the BOP toolkit enumerates them.

    The discrete set is the identity plus each declared 4×4 matrix. Each continuous
    symmetry (axis, offset) is sampled at n = ceil(π / max_sym_disc_step) angles
    i·2π/n (315 for the default step) about ``axis`` through ``offset``:
    R = rotation, t = −R·offset + offset. The result composes every continuous sample with
    every discrete transformation: R = Rc·Rd, t = Rc·td + tc.

    Args:
        symmetries_discrete: 4×4 model-frame transformations, translation in mm.
        symmetries_continuous: (axis (3,), offset (3,) mm) pairs.

    Returns:
        R (S, 3, 3) and t (S, 3) in mm; index 0 is the identity.
    """
    discrete = [np.eye(4)] + [np.asarray(s, dtype=np.float64).reshape(4, 4) for s in symmetries_discrete]
    continuous = [np.eye(4)]
    if symmetries_continuous:
        n = int(math.ceil(math.pi / max_sym_disc_step))
        continuous = []
        for axis, offset in symmetries_continuous:
            axis = np.asarray(axis, dtype=np.float64)
            axis = axis / np.linalg.norm(axis)
            offset = np.asarray(offset, dtype=np.float64)
            for i in range(n):
                R = rotation_about_axis(axis, i * 2.0 * math.pi / n)
                T = np.eye(4)
                T[:3, :3] = R
                T[:3, 3] = -R @ offset + offset
                continuous.append(T)
    transforms = np.stack([c @ d for c in continuous for d in discrete])
    return transforms[:, :3, :3], transforms[:, :3, 3]


def rotation_about_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix (3, 3) of ``angle`` radians about the unit vector ``axis``."""
    x, y, z = axis
    K = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * K + (1.0 - math.cos(angle)) * (K @ K)


def farthest_point_sampling(points: np.ndarray, count: int) -> np.ndarray:
    """``count`` points of ``points`` (N, 3) chosen by greedy farthest-point sampling.

    Starts from the point farthest from the centre of the axis-aligned bounding box (as
    GDRNPP's region definition does); deterministic.

    Returns:
        (count, 3) array, in the unit of ``points``.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < count:
        raise ValueError(f"cannot sample {count} points from {len(points)}")
    centre = (points.min(axis=0) + points.max(axis=0)) / 2.0
    min_dist = np.sum((points - centre) ** 2, axis=1)
    chosen = np.empty(count, dtype=np.int64)
    for i in range(count):
        chosen[i] = int(np.argmax(min_dist))
        min_dist = np.minimum(min_dist, np.sum((points - points[chosen[i]]) ** 2, axis=1))
    return points[chosen]


def region_labels(xyz: np.ndarray, mask: np.ndarray, fps_points: np.ndarray) -> np.ndarray:
    """Surface-region label per pixel: 1 + index of the nearest FPS point, 0 outside ``mask``.

    Args:
        xyz: (H, W, 3) object coordinates, same unit as ``fps_points``.
        mask: (H, W) bool, pixels on the object.
        fps_points: (R, 3) region centres.

    Returns:
        (H, W) int64 labels in 0..R.
    """
    labels = np.zeros(mask.shape, dtype=np.int64)
    on = xyz[mask]
    if len(on):
        dist = np.sum((on[:, None, :] - fps_points[None, :, :]) ** 2, axis=2)
        labels[mask] = np.argmin(dist, axis=1) + 1
    return labels


def canonical_symmetry_index(rot_allo: np.ndarray, sym_rots: np.ndarray) -> int:
    """Index k of the symmetric equivalent ``rot_allo @ sym_rots[k]`` closest to the identity.

    An object with symmetries looks the same under every ``R @ S_k``; a network that sees
    only the image must therefore be given one of them as its target, chosen by the view
    alone. Picking, in the allocentric frame (the rotation as seen by a camera looking
    straight at the object, which fixes the object's appearance in its crop), the
    equivalent nearest to the identity — the largest ``trace(R_allo S_k)`` — is such a
    rule: the same appearance always gets the same target, except on the boundaries
    between the choices. Ties go to the lowest index (the identity comes first).

    Args:
        rot_allo: (3, 3) allocentric rotation of the instance.
        sym_rots: (S, 3, 3) object-frame symmetry rotations, identity first.
    """
    traces = np.einsum("ij,kji->k", np.asarray(rot_allo, dtype=np.float64), np.asarray(sym_rots, dtype=np.float64))
    return int(np.argmax(traces))
