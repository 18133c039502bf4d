"""Pose decoding: the network outputs of a batch of ROIs → R (3, 3) and t (mm) per ROI.

:data:`DECODERS` names the ways: from Patch-PnP's allocentric rot6d and SITE translation
(``patchpnp``, GDRNPP's), by EPnP-RANSAC from the predicted 2D–3D correspondences
(``epnp``, :func:`pnp_ransac_pose`), or with EPnP-RANSAC's rotation and Patch-PnP's
translation (``epnp-rot``). :func:`decode_rois` applies one to the ROIs of an image;
:func:`mask_probability` reads the regressed visible mask as probabilities (also for
depth refinement).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

from fastgdr.models import PoseNetOutput, decode_pose

if TYPE_CHECKING:
    from fastgdr.inference.predictor import RoiBatch

# Pose decoders: name → (rotation from EPnP-RANSAC, translation from EPnP-RANSAC).
DECODERS: dict[str, tuple[bool, bool]] = {
    "patchpnp": (False, False),  # GDRNPP: Patch-PnP's rot6d and SITE
    "epnp": (True, True),  # EPnP-RANSAC on the predicted correspondences
    "epnp-rot": (True, False),  # EPnP-RANSAC's rotation, Patch-PnP's SITE translation
}


def decode_rois(
    out: PoseNetOutput, batch: RoiBatch, K: np.ndarray, decoder: str, extents_m: Sequence[np.ndarray], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poses of a batch of ROIs by one of :data:`DECODERS`: R (B, 3, 3) and t (B, 3) in mm.

    Patch-PnP's rot6d and SITE are decoded first; the EPnP decoders then replace the
    rotation (``epnp-rot``) or the whole pose (``epnp``) of every ROI where EPnP-RANSAC
    finds a solution (:func:`pnp_ransac_pose`).

    Args:
        out, batch: the network outputs and inputs of the ROIs.
        K: (3, 3) intrinsics in px.
        extents_m: per ROI, the object's bounding-box size (3,) in m.
        width, height: image size in px.
    """
    K_t = torch.as_tensor(K, dtype=torch.float32, device=out.rot6d.device)
    R, t = decode_pose(out.rot6d, out.site, batch.centers, batch.whs, batch.resize_ratios, K_t)
    R_np = R.double().cpu().numpy()
    t_np = t.double().cpu().numpy() * 1000.0
    epnp_rotation, epnp_translation = DECODERS[decoder]
    if epnp_rotation or epnp_translation:
        for i, extent in enumerate(extents_m):
            solved = pnp_ransac_pose(out, batch, i, extent, K, width, height)
            if solved is not None:
                R_np[i] = solved[0]
                if epnp_translation:
                    t_np[i] = solved[1]
    return R_np, t_np


def mask_probability(mask: torch.Tensor) -> torch.Tensor:
    """GDRNPP's mask probability for L1-regressed masks: per-ROI min-max normalization."""
    flat = mask.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-6)).view_as(mask)


def pnp_ransac_pose(
    out: PoseNetOutput, batch: RoiBatch, index: int, extent_m: np.ndarray, K: np.ndarray, width: int, height: int,
    mask_threshold: float = 0.5, reprojection_px: float = 3.0, iterations: int = 100,
) -> tuple[np.ndarray, np.ndarray] | None:
    """EPnP-RANSAC on predicted correspondences of ROI ``index`` (R, t in mm), or None.

    2D points are the image coordinates of the output pixels' centres: the crop of
    ``coord_2d`` holds pixel indices / (W, H), so c · (W, H) + 0.5 (the pixel convention of
    :mod:`fastgdr.render.renderer`, which the coordinate targets are rendered in); 3D points the
    de-normalized predicted coordinates; pixels with mask probability > 0.5 and a
    non-degenerate coordinate are used. None when fewer than 4 points or no solution.
    """
    prob = mask_probability(out.visible_mask[index : index + 1])[0, 0].cpu().numpy()
    xyz = ((out.xyz[index].cpu().numpy().transpose(1, 2, 0) - 0.5) * extent_m).reshape(-1, 3)
    uv = batch.coord_2d[index].cpu().numpy().transpose(1, 2, 0).reshape(-1, 2) * (width, height) + 0.5
    keep = (prob.reshape(-1) > mask_threshold) & np.all(np.abs(xyz) > 1e-4 * extent_m, axis=1)
    if keep.sum() < 4:
        return None
    ok, rvec, tvec, _ = cv2.solvePnPRansac(
        xyz[keep].astype(np.float64), uv[keep].astype(np.float64), np.asarray(K, np.float64), None,
        flags=cv2.SOLVEPNP_EPNP, reprojectionError=reprojection_px, iterationsCount=iterations,
    )
    if not ok:
        return None
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3) * 1000.0
