"""Scale-invariant translation estimation (SITE) as used by GDRNPP.

SITE = (δx, δy, δz): the projected object origin relative to the detected box,
``(u - c_x) / w`` and ``(v - c_y) / h``, and a depth ``δz = t_z / resize_ratio``
with ``resize_ratio = output_res / crop_size``. All functions are batched over
leading dims ``...`` (broadcastable between arguments) and differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgdr.geometry.rotations import _check_shape


def _check_site_args(roi_center: Tensor, roi_wh: Tensor, intrinsics: Tensor) -> None:
    _check_shape(roi_center, "roi_center", (2,))
    _check_shape(roi_wh, "roi_wh", (2,))
    _check_shape(intrinsics, "K", (3, 3))


def site_to_translation(
    site: Tensor, roi_center: Tensor, roi_wh: Tensor, resize_ratio: Tensor | float, K: Tensor
) -> Tensor:
    """Recover the camera-frame translation from SITE.

    ``u = δx·w + c_x``, ``v = δy·h + c_y``, ``t_z = δz · resize_ratio``,
    ``t_x = t_z (u - K[0,2]) / K[0,0]``, ``t_y = t_z (v - K[1,2]) / K[1,1]``.

    Args:
        site: [..., 3] (δx, δy, δz); δx, δy dimensionless, δz in the unit of t divided
            by resize_ratio.
        roi_center: [..., 2] box centre (c_x, c_y) in px (original image).
        roi_wh: [..., 2] box width and height (w, h) in px (not the square crop size).
        resize_ratio: [...] or scalar, ``output_res / crop_size`` (e.g. 64 / s).
        K: [..., 3, 3] camera intrinsics (px) of the original image.

    Returns:
        [..., 3] translation t in the unit of δz (times resize_ratio).

    Raises:
        ValueError: on wrong trailing shapes.
    """
    _check_shape(site, "site", (3,))
    _check_site_args(roi_center, roi_wh, K)
    ratio = torch.as_tensor(resize_ratio, dtype=site.dtype, device=site.device)
    u = site[..., 0] * roi_wh[..., 0] + roi_center[..., 0]
    v = site[..., 1] * roi_wh[..., 1] + roi_center[..., 1]
    tz = site[..., 2] * ratio
    tx = tz * (u - K[..., 0, 2]) / K[..., 0, 0]
    ty = tz * (v - K[..., 1, 2]) / K[..., 1, 1]
    return torch.stack(torch.broadcast_tensors(tx, ty, tz), dim=-1)


def translation_to_site(
    translation: Tensor, roi_center: Tensor, roi_wh: Tensor, resize_ratio: Tensor | float, K: Tensor
) -> Tensor:
    """Encode a camera-frame translation as SITE (exact inverse of :func:`site_to_translation`).

    ``u = K[0,0] t_x / t_z + K[0,2]``, ``v = K[1,1] t_y / t_z + K[1,2]``,
    ``δx = (u - c_x) / w``, ``δy = (v - c_y) / h``, ``δz = t_z / resize_ratio``.

    Args:
        translation: [..., 3] translation t in the camera frame (any unit, t_z > 0).
        roi_center: [..., 2] box centre (c_x, c_y) in px.
        roi_wh: [..., 2] box width and height (w, h) in px.
        resize_ratio: [...] or scalar, ``output_res / crop_size``.
        K: [..., 3, 3] camera intrinsics (px).

    Returns:
        [..., 3] SITE (δx, δy, δz); δz has the unit of t divided by resize_ratio.

    Raises:
        ValueError: on wrong trailing shapes.
    """
    _check_shape(translation, "translation", (3,))
    _check_site_args(roi_center, roi_wh, K)
    ratio = torch.as_tensor(resize_ratio, dtype=translation.dtype, device=translation.device)
    tx, ty, tz = translation.unbind(-1)
    u = K[..., 0, 0] * tx / tz + K[..., 0, 2]
    v = K[..., 1, 1] * ty / tz + K[..., 1, 2]
    dx = (u - roi_center[..., 0]) / roi_wh[..., 0]
    dy = (v - roi_center[..., 1]) / roi_wh[..., 1]
    dz = tz / ratio
    return torch.stack(torch.broadcast_tensors(dx, dy, dz), dim=-1)
