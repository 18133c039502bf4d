"""The BOP visibility test ("bop19" mode) and the per-instance numbers of scene_gt_info.

An object pixel is visible when the object's surface there is not farther than ``delta``
behind the measured scene surface, compared as distances from the camera centre, or when
the scene depth is missing at that pixel. Depths are in mm, 0 meaning "no value"; pixel
(u, v) = (column, row) has its centre at integer coordinates, as in OpenCV.
"""

from __future__ import annotations

import numpy as np

from fastgdr.data.bop_records import GTInfo

NO_BOX = (-1, -1, -1, -1)


def _check_image(array: np.ndarray, name: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) image, got shape {array.shape}")


def _check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    _check_image(a, a_name)
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {a.shape} and {b_name} {b.shape} must have the same shape")


def depth_to_distance(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Convert a depth image (Z per pixel) to distances from the camera centre.

    For the pixel in column u, row v (integer indices) with depth Z: X = (u - cx)·Z/fx,
    Y = (v - cy)·Z/fy and the distance is √(X² + Y² + Z²). Skew in K is ignored. This is
    the BOP toolkit's definition (``depth_im_to_dist_im_fast``, used by its VSD and
    visibility masks) and is kept as such, although its renderer shows at that pixel the
    ray through (u + 0.5, v + 0.5) (see :mod:`fastgdr.render.renderer`).

    Args:
        depth: (H, W) depth in mm (any real dtype); 0 = no value.
        K: (3, 3) intrinsics in px.

    Returns:
        (H, W) float64 distance in mm; 0 where the depth is 0.
    """
    _check_image(depth, "depth")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    height, width = depth.shape
    ray_x = (np.arange(width, dtype=np.float64) - K[0, 2]) / K[0, 0]
    ray_y = (np.arange(height, dtype=np.float64) - K[1, 2]) / K[1, 1]
    ray_norm = np.sqrt(ray_x[None, :] ** 2 + ray_y[:, None] ** 2 + 1.0)
    return depth.astype(np.float64) * ray_norm


def visibility_mask(
    scene_depth: np.ndarray, object_depth: np.ndarray, K: np.ndarray, delta_mm: float
) -> np.ndarray:
    """Visible pixels of a rendered object in a scene (BOP "bop19" visibility test).

    A pixel is visible when the object covers it (``object_depth > 0``) and either
    ``dist_object - dist_scene <= delta_mm`` or the scene depth is missing (0) there.
    The difference is taken in float32, as the BOP toolkit does.

    Args:
        scene_depth: (H, W) measured depth in mm; 0 = missing.
        object_depth: (H, W) depth of the object rendered alone, mm; 0 = background.
        K: (3, 3) intrinsics in px.
        delta_mm: tolerance in mm (15 in general; 5 for ITODD and PBR images).

    Returns:
        (H, W) bool visibility mask.
    """
    _check_same_shape(object_depth, "object_depth", scene_depth, "scene_depth")
    scene_distance = depth_to_distance(scene_depth, K).astype(np.float32)
    object_distance = depth_to_distance(object_depth, K).astype(np.float32)
    behind = object_distance - scene_distance
    return (object_depth > 0) & ((behind <= delta_mm) | (scene_depth == 0))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Box (x, y, w, h) of the True pixels, in the BOP toolkit's convention.

    ``w = x_max - x_min`` and ``h = y_max - y_min`` (pixel indices, so a single pixel has
    w = h = 0); (-1, -1, -1, -1) for an empty mask.

    Args:
        mask: (H, W) bool.
    """
    _check_image(mask, "mask")
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return NO_BOX
    x_min, y_min = int(xs.min()), int(ys.min())
    return x_min, y_min, int(xs.max()) - x_min, int(ys.max()) - y_min


def gt_info_for_object(
    object_depth: np.ndarray,
    scene_depth: np.ndarray,
    visible_mask: np.ndarray | None,
    K: np.ndarray,
    delta_mm: float,
    *,
    silhouette: np.ndarray | None = None,
    silhouette_offset: tuple[int, int] = (0, 0),
) -> GTInfo:
    """The scene_gt_info.json entry of one object instance, as BOP computes it.

    The whole silhouette (for ``px_count_all`` and ``bbox_obj``) may extend past the
    image. BOP renders it on a canvas three times the image size with the image at offset
    (W, H); pass such a render as ``silhouette`` with ``silhouette_offset`` = the canvas
    position (x, y) of the image's top-left pixel. Without it, the silhouette inside the
    image is used, which is exact only for objects that are not truncated.

    Args:
        object_depth: (H, W) depth of the object rendered alone in the image, mm.
        scene_depth: (H, W) measured depth, mm; 0 = missing.
        visible_mask: (H, W) bool visibility mask, or None to compute it with
            :func:`visibility_mask` (then ``K`` and ``delta_mm`` are used).
        K: (3, 3) intrinsics in px.
        delta_mm: visibility tolerance in mm.
        silhouette: optional (H', W') bool whole silhouette on a larger canvas.
        silhouette_offset: (x, y) of image pixel (0, 0) on the ``silhouette`` canvas, px.

    Returns:
        A :class:`~fastgdr.data.bop_records.GTInfo`. As in BOP, both boxes are
        (-1, -1, -1, -1) when no pixel is visible, and ``bbox_obj`` is in image
        coordinates (it can start at negative x, y).
    """
    _check_same_shape(object_depth, "object_depth", scene_depth, "scene_depth")
    on_object = object_depth > 0
    if visible_mask is None:
        visible_mask = visibility_mask(scene_depth, object_depth, K, delta_mm)
    else:
        _check_same_shape(visible_mask, "visible_mask", object_depth, "object_depth")
        visible_mask = visible_mask.astype(bool)
    if silhouette is None:
        silhouette, silhouette_offset = on_object, (0, 0)
    else:
        _check_image(silhouette, "silhouette")
        silhouette = silhouette.astype(bool)

    px_count_all = int(np.count_nonzero(silhouette))
    px_count_valid = int(np.count_nonzero(on_object & (scene_depth > 0)))
    px_count_visib = int(np.count_nonzero(visible_mask))
    visib_fract = px_count_visib / px_count_all if px_count_all > 0 else 0.0

    bbox_obj = bbox_visib = NO_BOX
    if px_count_visib > 0:
        x, y, w, h = mask_bbox(silhouette)
        bbox_obj = (x - silhouette_offset[0], y - silhouette_offset[1], w, h)
        bbox_visib = mask_bbox(visible_mask)
    return GTInfo(
        bbox_obj=bbox_obj,
        bbox_visib=bbox_visib,
        px_count_all=px_count_all,
        px_count_valid=px_count_valid,
        px_count_visib=px_count_visib,
        visib_fract=float(visib_fract),
    )
