"""Depth checks of refinement: can an image's depth be used, and is a refined pose plausible.

:func:`fastgdr.inference.refine.refine_poses` runs these around every refiner:
:func:`check_depth` (missing, wrong size, no valid pixel, bad depth_scale),
:func:`sanitize_depth` (non-finite and negative pixels set to 0), :func:`check_depth_scale`
(a depth whose unit cannot match the scene, e.g. a depth_scale off by ×10 or ×1000), and
:class:`RefineLimits`, the bounds of that check and of a plausible update.

Depth images are camera-frame z in mm (not the distance along the ray), 0 = missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fastgdr.inference.refine import RefineTarget


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
