"""Depth-based pose refinement: the refiners, GDRNPP's "fast" update and the per-image driver.

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
    * ``icp`` (:func:`~fastgdr.inference.icp.icp_refine`, batched over the objects of an
      image by :func:`~fastgdr.inference.icp.icp_refine_many`, in :mod:`fastgdr.inference.icp`):
      point-to-plane ICP between the rendered visible model surface and the back-projected
      sensor depth inside the predicted visible mask (:func:`paste_mask`).
    * ``none``: the network pose.

:func:`refine_poses` runs one of :data:`REFINERS` on the detections of an image
(:class:`RefineTarget`). It checks the depth first (:mod:`fastgdr.inference.depth`:
``check_depth``: missing, wrong size, no valid pixel; ``check_depth_scale``: a depth whose
unit cannot match the scene, e.g. a depth_scale off by ×10 or ×1000), keeps the network
pose wherever refinement is impossible, produces a non-finite pose or moves it implausibly
far (``RefineLimits``), and counts all of it in a :class:`RefineStats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from fastgdr.geometry import crop_affine_matrix, crop_resize, zoom_camera_matrix
from fastgdr.inference.depth import RefineLimits, check_depth, check_depth_scale, sanitize_depth
from fastgdr.inference.icp import icp_refine_many
from fastgdr.registry import Registry

if TYPE_CHECKING:
    from fastgdr.render import Renderer


# ---------------------------------------------------------------------------------------
# Bookkeeping


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


TEST_CROP_PAD = 1.5  # test-time crop side / longer box side (fastgdr.inference.predictor.PAD_SCALE)


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
# Registry and the per-image driver


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
