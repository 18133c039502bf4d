"""Camera projection and the square crop / zoom geometry of GDRNPP.

``project_points`` and ``transform_points`` are batched, differentiable torch
functions. The crop helpers use numpy/OpenCV (``zoom_camera_matrix`` accepts
numpy or torch). Image coordinates (u, v) = (K X)[:2] / Z, u to the right (column), v down
(row), follow the package's pixel convention (:mod:`fastgdr.render.renderer`, the BOP
toolkit's): pixel (row i, column j) covers [j, j + 1) × [i, i + 1), its centre is
(j + 0.5, i + 0.5). The crop warp itself works on pixel *indices*, as GDRNPP's does.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from fastgdr.geometry.rotations import _check_shape


def project_points(points: Tensor, K: Tensor) -> Tensor:
    """Project camera-frame 3D points to pixels with a pinhole model.

    Args:
        points: [..., N, 3] points in the camera frame (any unit, z > 0).
        K: [..., 3, 3] intrinsics in px (leading dims broadcast with ``points``).

    Returns:
        [..., N, 2] pixel coordinates (u, v) in px.

    Raises:
        ValueError: on wrong trailing shapes.
    """
    _check_shape(points, "points", (3,))
    _check_shape(K, "K", (3, 3))
    homogeneous = points @ K.transpose(-2, -1)
    return homogeneous[..., :2] / homogeneous[..., 2:3]


def transform_points(points: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Apply a rigid transform ``R x + t`` to a set of points.

    Args:
        points: [..., N, 3] points (object frame).
        R: [..., 3, 3] rotation (broadcastable with ``points``' leading dims).
        t: [..., 3] translation, same unit as ``points``.

    Returns:
        [..., N, 3] transformed points (same unit as t).

    Raises:
        ValueError: on wrong trailing shapes.
    """
    _check_shape(points, "points", (3,))
    _check_shape(R, "R", (3, 3))
    _check_shape(t, "t", (3,))
    return points @ R.transpose(-2, -1) + t[..., None, :]


def crop_affine_matrix(
    center: Sequence[float] | np.ndarray, crop_size: float, output_size: int, *, inverse: bool = False
) -> np.ndarray:
    """Affine map of GDRNPP's square crop (no rotation), on pixel indices.

    The square of side ``s = crop_size`` centred at ``center`` maps to
    ``output_size × output_size``: ``x' = (x - (c_x - s/2)) · output_size / s``,
    same for y, where x is an image pixel index (column j) and x' an output pixel index:
    the map :func:`crop_resize` hands to ``cv2.warpAffine``, exactly GDRNPP's. In image
    coordinates (pixel centre j + 0.5) it is ``u' - 0.5 = A (u - 0.5)``; see
    :func:`zoom_camera_matrix`.

    Args:
        center: (c_x, c_y) crop centre in px (image, the warp's index coordinates).
        crop_size: side s of the square crop in px (image).
        output_size: side of the output in px.
        inverse: if True return the output → image map instead.

    Returns:
        2x3 float64 affine matrix (image → output, or output → image if ``inverse``).
    """
    cx, cy = (float(c) for c in np.asarray(center, dtype=np.float64).reshape(2))
    scale = output_size / float(crop_size)
    x0, y0 = cx - 0.5 * crop_size, cy - 0.5 * crop_size
    if inverse:
        return np.array([[1.0 / scale, 0.0, x0], [0.0, 1.0 / scale, y0]], dtype=np.float64)
    return np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], dtype=np.float64)


def crop_resize(
    image: np.ndarray,
    center: Sequence[float] | np.ndarray,
    crop_size: float,
    output_size: int,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Crop a square around ``center`` and resize it to ``output_size`` (cv2.warpAffine).

    Pixels outside the image are 0.

    Args:
        image: HxW or HxWxC array.
        center: (c_x, c_y) crop centre in px.
        crop_size: side of the square crop in px.
        output_size: side of the output in px.
        interpolation: OpenCV interpolation flag (e.g. cv2.INTER_NEAREST for masks).

    Returns:
        output_size x output_size (x C) array with the dtype of ``image``.

    Raises:
        ValueError: if ``image`` is not 2D or 3D.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {image.shape}")
    matrix = crop_affine_matrix(center, crop_size, output_size)
    out = cv2.warpAffine(
        image,
        matrix,
        (output_size, output_size),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def zoom_camera_matrix(
    K: np.ndarray | Tensor, center: Sequence[float] | np.ndarray, crop_size: float, output_size: int
) -> np.ndarray | Tensor:
    """Intrinsics of the crop made by :func:`crop_resize` / :func:`crop_affine_matrix`.

    The crop affine A maps pixel indices, i.e. image coordinates minus half a pixel
    (pixel (i, j) is centred at (j + 0.5, i + 0.5), see :mod:`fastgdr.render.renderer`).
    In image coordinates the crop is therefore ``u' = A (u - 0.5) + 0.5``: with
    ``k = output_size / s`` and the top-left corner ``x0 = c_x - s/2``, the focal lengths
    and skew are scaled by k and the principal point becomes
    ``k (c_x - 0.5 - x0) + 0.5`` (same for y). Rendering with the result at
    ``output_size`` gives the pixels :func:`crop_resize` cuts from a full-size render
    (up to the resampling), and a point projected with it lands in the crop pixel that
    shows it.

    Args:
        K: [..., 3, 3] intrinsics in px, numpy array or torch tensor.
        center: (c_x, c_y) crop centre in px.
        crop_size: side s of the square crop in px.
        output_size: side of the output in px.

    Returns:
        [..., 3, 3] zoomed intrinsics, same type (and dtype/device for torch) as ``K``.

    Raises:
        ValueError: if K is not [..., 3, 3].
    """
    _check_shape(K, "K", (3, 3))
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    index_affine = np.vstack((crop_affine_matrix(center, crop_size, output_size), [0.0, 0.0, 1.0]))
    affine = half @ index_affine @ np.linalg.inv(half)
    if isinstance(K, Tensor):
        return torch.as_tensor(affine, dtype=K.dtype, device=K.device) @ K
    return (affine @ K).astype(np.result_type(K.dtype, np.float32), copy=False)


def coord_2d_map(width: int, height: int) -> np.ndarray:
    """Normalized pixel-index map of an image: GDRNPP's ``coord_2d`` network input.

    It holds pixel *indices* j / W, as GDRNPP's does (checkpoints are trained on it); the
    image coordinate of the centre of pixel j is j + 0.5 (:mod:`fastgdr.render.renderer`),
    so a value c of this map (or of a crop of it) is the image point ``c · W + 0.5``.

    Args:
        width: image width W in px.
        height: image height H in px.

    Returns:
        [2, H, W] float32; channel 0 = u / W, channel 1 = v / H for integer pixel
        indices u in 0..W-1, v in 0..H-1 (values in [0, 1)).
    """
    u = np.arange(width, dtype=np.float32) / np.float32(width)
    v = np.arange(height, dtype=np.float32) / np.float32(height)
    uu, vv = np.meshgrid(u, v)
    return np.stack((uu, vv), axis=0)


def test_time_crop(
    bbox_xywh: Sequence[float] | np.ndarray, image_size: Sequence[int], pad_scale: float = 1.5
) -> tuple[np.ndarray, float]:
    """Square crop around a detected box, as used at test time.

    Args:
        bbox_xywh: (x, y, w, h) box in px, (x, y) the top-left corner.
        image_size: (W, H) image size in px.
        pad_scale: crop side relative to the longer box side.

    Returns:
        (center, crop_size): center = float64 array (x + w/2, y + h/2) in px;
        crop_size = max(w, h) · pad_scale, clipped to at most max(W, H), in px.
    """
    x, y, w, h = (float(c) for c in np.asarray(bbox_xywh, dtype=np.float64).reshape(4))
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float64)
    crop_size = min(max(w, h) * pad_scale, float(max(image_size)))
    return center, crop_size


test_time_crop.__test__ = False  # tell pytest this is not a test when imported into test modules
