"""Tests for fastgdr.geometry (rotations, SITE translation, camera and crops)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from fastgdr.geometry import (
    allocentric_to_egocentric,
    axis_angle_to_matrix,
    coord_2d_map,
    crop_affine_matrix,
    crop_resize,
    egocentric_to_allocentric,
    matrix_to_rot6d,
    project_points,
    rot6d_to_matrix,
    rotation_angle_between,
    site_to_translation,
    test_time_crop,
    transform_points,
    translation_to_site,
    zoom_camera_matrix,
)

F64 = torch.float64
K_NP = np.array([[572.4114, 0.0, 325.2611], [0.0, 573.57043, 242.04899], [0.0, 0.0, 1.0]])


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    """n random rotations [n, 3, 3] (float64) via QR with a sign fix."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return q * torch.det(q)[..., None, None]


def random_translations(n: int, gen: torch.Generator) -> torch.Tensor:
    """n translations [n, 3] in front of the camera (z in [0.5, 1.5])."""
    t = torch.rand(n, 3, generator=gen, dtype=F64)
    return torch.stack((t[:, 0] - 0.5, t[:, 1] - 0.5, t[:, 2] + 0.5), dim=-1)


def rot_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=F64)


def rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=F64)


def assert_rotation(R: torch.Tensor) -> None:
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-2, -1), eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- rot6d


def test_rot6d_to_matrix_smoke_and_batch(gen):
    x = torch.randn(4, 5, 6, generator=gen)
    R = rot6d_to_matrix(x)
    assert R.shape == (4, 5, 3, 3) and R.dtype == torch.float32
    assert_rotation(R)


def test_rot6d_to_matrix_known_value():
    x = torch.tensor([2.0, 0.0, 0.0, 0.5, 3.0, 0.0], dtype=F64)
    torch.testing.assert_close(rot6d_to_matrix(x), torch.eye(3, dtype=F64))
    # first column = normalized a, second column in span(a, b)
    x = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.3, 0.0], dtype=F64)
    torch.testing.assert_close(rot6d_to_matrix(x), rot_z(math.pi / 2))


def test_rot6d_to_matrix_batch_of_three_matches_items(gen):
    x = torch.randn(3, 6, generator=gen, dtype=F64)
    batched = rot6d_to_matrix(x)
    items = torch.stack([rot6d_to_matrix(x[i]) for i in range(3)])
    torch.testing.assert_close(batched, items)
    x = torch.randn(3, 3, 6, generator=gen, dtype=F64)
    torch.testing.assert_close(rot6d_to_matrix(x)[1, 2], rot6d_to_matrix(x[1, 2]))


def test_rot6d_round_trip(gen):
    R = random_rotations(8, gen)
    rot6d = matrix_to_rot6d(R)
    assert rot6d.shape == (8, 6)
    torch.testing.assert_close(rot6d[:, :3], R[:, :, 0])
    torch.testing.assert_close(rot6d_to_matrix(rot6d), R)


def test_rot6d_gradcheck(gen):
    x = torch.randn(2, 6, generator=gen, dtype=F64, requires_grad=True)
    assert gradcheck(rot6d_to_matrix, (x,))
    R = random_rotations(2, gen).requires_grad_(True)
    assert gradcheck(matrix_to_rot6d, (R,))


def test_rot6d_shape_errors():
    with pytest.raises(ValueError, match="rot6d"):
        rot6d_to_matrix(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="matrix"):
        matrix_to_rot6d(torch.zeros(3))


# ----------------------------------------------------------------------------- axis-angle


def test_axis_angle_to_matrix_smoke_and_batch(gen):
    R = axis_angle_to_matrix(torch.randn(2, 3, 3, generator=gen))
    assert R.shape == (2, 3, 3, 3)
    assert_rotation(R)


def test_axis_angle_to_matrix_known_value():
    v = torch.tensor([[0.0, 0.0, math.pi / 2], [0.0, 0.3, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1e-3]], dtype=F64)
    R = axis_angle_to_matrix(v)
    torch.testing.assert_close(R[0], rot_z(math.pi / 2))
    torch.testing.assert_close(R[1], rot_y(0.3))
    torch.testing.assert_close(R[2], torch.eye(3, dtype=F64))
    torch.testing.assert_close(R[3], rot_z(1e-3))  # small-angle branch


def test_axis_angle_round_trip_with_angle(gen):
    v = torch.randn(16, 3, generator=gen, dtype=F64)
    v = v / v.norm(dim=-1, keepdim=True) * torch.linspace(0.1, 3.0, 16, dtype=F64)[:, None]
    R = axis_angle_to_matrix(v)
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(rotation_angle_between(R, eye), v.norm(dim=-1))
    torch.testing.assert_close(R @ v[..., None], v[..., None])  # axis is fixed
    torch.testing.assert_close(axis_angle_to_matrix(-v), R.transpose(-2, -1))


def test_axis_angle_gradcheck(gen):
    v = torch.randn(3, 3, generator=gen, dtype=F64, requires_grad=True)
    assert gradcheck(axis_angle_to_matrix, (v,))
    zero = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    assert gradcheck(axis_angle_to_matrix, (zero,))


def test_rotation_angle_between(gen):
    R1 = random_rotations(5, gen)
    angles = torch.linspace(0.2, 3.0, 5, dtype=F64)
    R2 = torch.stack([rot_z(float(a)) for a in angles]) @ R1
    out = rotation_angle_between(R1, R2)
    assert out.shape == (5,)
    torch.testing.assert_close(out, angles)
    torch.testing.assert_close(rotation_angle_between(R2, R1), angles)
    same = rotation_angle_between(R1, R1)
    assert torch.isfinite(same).all() and same.abs().max() < 1e-6
    with pytest.raises(ValueError, match="rot2"):
        rotation_angle_between(R1, torch.zeros(5, 3))


def test_rotation_angle_between_gradcheck(gen):
    R1 = random_rotations(2, gen).requires_grad_(True)
    R2 = (torch.stack([rot_z(0.5), rot_y(1.2)]) @ R1.detach()).requires_grad_(True)
    assert gradcheck(rotation_angle_between, (R1, R2))


# ----------------------------------------------------------------------------- allo/ego


def test_allo_ego_smoke_and_batch(gen):
    R = random_rotations(6, gen).reshape(2, 3, 3, 3)
    t = random_translations(6, gen).reshape(2, 3, 3)
    ego = allocentric_to_egocentric(R, t)
    assert ego.shape == (2, 3, 3, 3)
    assert_rotation(ego)
    assert egocentric_to_allocentric(ego, t).shape == (2, 3, 3, 3)


def test_allo_ego_on_optical_axis_is_identity(gen):
    R = random_rotations(2, gen)
    t = torch.tensor([[0.0, 0.0, 0.7], [0.0, 0.0, 1200.0]], dtype=F64)
    torch.testing.assert_close(allocentric_to_egocentric(R, t), R)
    torch.testing.assert_close(egocentric_to_allocentric(R, t), R)


def test_allo_ego_known_value_about_y():
    x, z = 0.3, 0.8
    t = torch.tensor([x, 0.0, z], dtype=F64)
    ego = allocentric_to_egocentric(torch.eye(3, dtype=F64), t)
    torch.testing.assert_close(ego, rot_y(math.atan2(x, z)))
    # the optical axis is turned onto the viewing ray
    torch.testing.assert_close(ego[:, 2], t / t.norm())


def test_allo_ego_matches_axis_angle_definition(gen):
    R = random_rotations(5, gen)
    t = random_translations(5, gen) * 1000.0  # unit-free: mm works as well as m
    t_hat = t / t.norm(dim=-1, keepdim=True)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand_as(t)
    axis = torch.nn.functional.normalize(torch.linalg.cross(z, t_hat, dim=-1), dim=-1)
    angle = torch.acos((z * t_hat).sum(-1).clamp(-1, 1))
    expected = axis_angle_to_matrix(axis * angle[:, None]) @ R
    torch.testing.assert_close(allocentric_to_egocentric(R, t), expected)


def test_allo_ego_round_trip(gen):
    R = random_rotations(5, gen)
    t = random_translations(5, gen)
    torch.testing.assert_close(egocentric_to_allocentric(allocentric_to_egocentric(R, t), t), R)
    torch.testing.assert_close(allocentric_to_egocentric(egocentric_to_allocentric(R, t), t), R)


def test_allo_ego_gradcheck(gen):
    R = random_rotations(2, gen).requires_grad_(True)
    t = random_translations(2, gen).requires_grad_(True)
    assert gradcheck(allocentric_to_egocentric, (R, t))
    assert gradcheck(egocentric_to_allocentric, (R, t))
    t_axis = torch.tensor([[0.0, 0.0, 0.9]], dtype=F64, requires_grad=True)
    R1 = R[:1].detach().requires_grad_(True)
    assert gradcheck(allocentric_to_egocentric, (R1, t_axis))
    out = allocentric_to_egocentric(R1, t_axis)
    out.sum().backward()
    assert torch.isfinite(t_axis.grad).all()


# ----------------------------------------------------------------------------- SITE


def test_site_known_value():
    K = torch.tensor(K_NP)
    center = torch.tensor([300.0, 250.0], dtype=F64)
    wh = torch.tensor([80.0, 40.0], dtype=F64)
    ratio = torch.tensor(64.0 / 120.0, dtype=F64)
    site = torch.tensor([0.25, -0.5, 1.5], dtype=F64)
    t = site_to_translation(site, center, wh, ratio, K)
    tz = 1.5 * 64.0 / 120.0
    u, v = 0.25 * 80 + 300, -0.5 * 40 + 250
    expected = torch.tensor(
        [tz * (u - K_NP[0, 2]) / K_NP[0, 0], tz * (v - K_NP[1, 2]) / K_NP[1, 1], tz], dtype=F64
    )
    torch.testing.assert_close(t, expected)
    # an object projecting onto the box centre has zero offsets
    t_c = torch.tensor([(300 - K_NP[0, 2]) / K_NP[0, 0], (250 - K_NP[1, 2]) / K_NP[1, 1], 1.0], dtype=F64)
    site_c = translation_to_site(t_c * 0.8, center, wh, 0.5, K)
    torch.testing.assert_close(site_c, torch.tensor([0.0, 0.0, 1.6], dtype=F64))


def test_site_batch_and_round_trip(gen):
    n = 6
    t = random_translations(n, gen).reshape(2, 3, 3)
    center = torch.rand(2, 3, 2, generator=gen, dtype=F64) * 400 + 100
    wh = torch.rand(2, 3, 2, generator=gen, dtype=F64) * 100 + 20
    ratio = 64.0 / (wh.max(-1).values * 1.5)
    K = torch.tensor(K_NP)  # shared intrinsics broadcast over the batch
    site = translation_to_site(t, center, wh, ratio, K)
    assert site.shape == (2, 3, 3)
    back = site_to_translation(site, center, wh, ratio, K)
    torch.testing.assert_close(back, t)
    # the recovered translation projects to u = δx·w + c_x
    uv = project_points(back[..., None, :], K)[..., 0, :]
    torch.testing.assert_close(uv, site[..., :2] * wh + center)


def test_site_gradcheck(gen):
    site = torch.tensor([[0.1, -0.2, 1.3], [0.0, 0.3, 0.7]], dtype=F64, requires_grad=True)
    center = torch.tensor([[320.0, 240.0], [100.0, 200.0]], dtype=F64)
    wh = torch.tensor([[50.0, 70.0], [30.0, 30.0]], dtype=F64)
    ratio = torch.tensor([0.6, 1.1], dtype=F64)
    K = torch.tensor(K_NP).requires_grad_(True)
    assert gradcheck(lambda s, k: site_to_translation(s, center, wh, ratio, k), (site, K))
    t = random_translations(2, gen).requires_grad_(True)
    assert gradcheck(lambda x, k: translation_to_site(x, center, wh, ratio, k), (t, K))


def test_site_shape_errors():
    K = torch.tensor(K_NP)
    with pytest.raises(ValueError, match="roi_wh"):
        site_to_translation(torch.zeros(3), torch.zeros(2), torch.zeros(3), 1.0, K)
    with pytest.raises(ValueError, match="K"):
        translation_to_site(torch.ones(3), torch.zeros(2), torch.ones(2), 1.0, torch.eye(4))


# ----------------------------------------------------------------------------- camera


def test_project_and_transform_known_value():
    K = torch.tensor([[100.0, 0.0, 50.0], [0.0, 200.0, 40.0], [0.0, 0.0, 1.0]], dtype=F64)
    pts = torch.tensor([[0.0, 0.0, 2.0], [1.0, -1.0, 2.0]], dtype=F64)
    expected_uv = torch.tensor([[50.0, 40.0], [100.0, -60.0]], dtype=F64)
    torch.testing.assert_close(project_points(pts, K), expected_uv)
    R = rot_z(math.pi / 2)
    t = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    expected = torch.tensor([[1.0, 2.0, 5.0], [2.0, 3.0, 5.0]], dtype=F64)
    torch.testing.assert_close(transform_points(pts, R, t), expected)


def test_project_and_transform_batch_and_round_trip(gen):
    pts = torch.randn(2, 3, 7, 3, generator=gen, dtype=F64) * 0.1
    R = random_rotations(6, gen).reshape(2, 3, 3, 3)
    t = random_translations(6, gen).reshape(2, 3, 3)
    cam = transform_points(pts, R, t)
    assert cam.shape == (2, 3, 7, 3)
    back = transform_points(cam - t[..., None, :], R.transpose(-2, -1), torch.zeros_like(t))
    torch.testing.assert_close(back, pts)
    uv = project_points(cam, torch.tensor(K_NP))
    assert uv.shape == (2, 3, 7, 2)
    # back-project with the true depth
    K_inv = torch.linalg.inv(torch.tensor(K_NP))
    rays = torch.cat((uv, torch.ones_like(uv[..., :1])), dim=-1) @ K_inv.T
    torch.testing.assert_close(rays * cam[..., 2:3], cam)


def test_project_and_transform_gradcheck(gen):
    pts = torch.randn(2, 4, 3, generator=gen, dtype=F64) * 0.1 + torch.tensor([0, 0, 1.0], dtype=F64)
    K = torch.tensor(K_NP).requires_grad_(True)
    assert gradcheck(project_points, (pts.requires_grad_(True), K))
    R = random_rotations(2, gen).requires_grad_(True)
    t = random_translations(2, gen).requires_grad_(True)
    assert gradcheck(transform_points, (pts.detach().requires_grad_(True), R, t))


def test_project_shape_errors():
    with pytest.raises(ValueError, match="points"):
        project_points(torch.zeros(4, 2), torch.eye(3))
    with pytest.raises(ValueError, match="t must"):
        transform_points(torch.zeros(4, 3), torch.eye(3), torch.zeros(2))


# ----------------------------------------------------------------------------- crops


def test_crop_affine_known_value_and_inverse():
    M = crop_affine_matrix((100.0, 60.0), 40.0, 64)
    assert M.shape == (2, 3) and M.dtype == np.float64
    pts = np.array([[100.0, 60.0, 1.0], [80.0, 40.0, 1.0], [120.0, 80.0, 1.0]])
    np.testing.assert_allclose(pts @ M.T, [[32.0, 32.0], [0.0, 0.0], [64.0, 64.0]])
    M_inv = crop_affine_matrix(np.array([100.0, 60.0]), 40.0, 64, inverse=True)
    full = np.vstack((M, [0, 0, 1]))
    full_inv = np.vstack((M_inv, [0, 0, 1]))
    np.testing.assert_allclose(full_inv @ full, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(full @ full_inv, np.eye(3), atol=1e-12)


def test_coord_2d_map_values():
    c = coord_2d_map(4, 3)
    assert c.shape == (2, 3, 4) and c.dtype == np.float32
    np.testing.assert_allclose(c[0, 1], [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(c[1, :, 2], [0.0, 1 / 3, 2 / 3], rtol=1e-6)


def test_crop_resize_shapes_and_border():
    img = np.full((30, 40, 3), 7, dtype=np.uint8)
    out = crop_resize(img, (39.0, 0.0), 20.0, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0] and out[12, 4].tolist() == [7, 7, 7]
    gray = crop_resize(img[..., 0], (20.0, 15.0), 10.0, 8, interpolation=cv2.INTER_NEAREST)
    assert gray.shape == (8, 8) and (gray == 7).all()
    assert crop_resize(img[..., :1], (20.0, 15.0), 10.0, 8).shape == (8, 8, 1)
    with pytest.raises(ValueError, match="image"):
        crop_resize(np.zeros(5), (0.0, 0.0), 2.0, 4)


def test_crop_resize_of_coord_map_matches_inverse_affine():
    W, H, out_size = 64, 48, 32
    center, size = (30.5, 22.0), 40.0
    coords = coord_2d_map(W, H).transpose(1, 2, 0)  # HxWx2
    crop = crop_resize(coords, center, size, out_size)
    jj, ii = np.meshgrid(np.arange(out_size), np.arange(out_size))
    M_inv = crop_affine_matrix(center, size, out_size, inverse=True)
    src = np.stack((jj, ii, np.ones_like(jj)), axis=-1) @ M_inv.T  # image (x, y) for output (i, j)
    inside = (src[..., 0] >= 0) & (src[..., 0] <= W - 1) & (src[..., 1] >= 0) & (src[..., 1] <= H - 1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(crop[..., 0][inside] * W, src[..., 0][inside], atol=0.05)
    np.testing.assert_allclose(crop[..., 1][inside] * H, src[..., 1][inside], atol=0.05)


@pytest.mark.parametrize("as_torch", [False, True])
def test_zoom_camera_matrix_matches_crop_affine(as_torch, gen):
    center, size, out_size = np.array([310.0, 200.0]), 150.0, 64
    pts = torch.randn(10, 3, generator=gen, dtype=F64) * 0.05 + torch.tensor([0.0, -0.05, 0.8], dtype=F64)
    K = torch.tensor(K_NP) if as_torch else K_NP
    K_zoom = zoom_camera_matrix(K, center, size, out_size)
    assert isinstance(K_zoom, torch.Tensor) == as_torch
    K_zoom = torch.as_tensor(K_zoom)
    uv_zoom = project_points(pts, K_zoom)
    uv = project_points(pts, torch.tensor(K_NP)).numpy()
    M = crop_affine_matrix(center, size, out_size)
    # the warp maps pixel indices, i.e. image coordinates minus the half pixel to the centre
    expected = np.concatenate((uv - 0.5, np.ones((10, 1))), axis=1) @ M.T + 0.5
    np.testing.assert_allclose(uv_zoom.numpy(), expected, rtol=0, atol=1e-9)
    # principal point as a pixel index, minus the top-left corner, scaled, back to coordinates
    np.testing.assert_allclose(K_zoom[0, 2].item(), (K_NP[0, 2] - 0.5 - (310.0 - 75.0)) * 64 / 150 + 0.5)
    np.testing.assert_allclose(K_zoom[2].numpy(), [0.0, 0.0, 1.0])


def test_zoom_camera_matrix_maps_image_points_to_the_crop_pixels_that_show_them():
    """Pixel (i, j) is centred at (j + 0.5, i + 0.5) in crops and images alike: the crop of
    the map of pixel-centre coordinates holds, at crop pixel (i', j'), the image point that
    ``zoom_camera_matrix`` sends to (j' + 0.5, i' + 0.5)."""
    W, H, out_size = 120, 100, 24
    center, size = (57.3, 45.6), 60.0  # inside the image; 0.4 crop px per image px
    jj, ii = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    centres = np.stack((jj + 0.5, ii + 0.5), axis=-1)
    crop = crop_resize(centres, center, size, out_size)  # bilinear: exact on a linear map
    K_zoom = zoom_camera_matrix(K_NP, center, size, out_size)
    to_crop = K_zoom @ np.linalg.inv(K_NP)  # image coordinates → crop coordinates
    mapped = crop @ to_crop[:2, :2].T + to_crop[:2, 2]
    cj, ci = np.meshgrid(np.arange(out_size) + 0.5, np.arange(out_size) + 0.5)
    # OpenCV interpolates at 1/32 px; the half-pixel terms are worth 0.5 · (1 - 0.4) = 0.3 px
    np.testing.assert_allclose(mapped, np.stack((cj, ci), axis=-1), atol=0.02)


def test_zoom_camera_matrix_batch():
    K = torch.tensor(K_NP).expand(4, 3, 3)
    assert zoom_camera_matrix(K, (10.0, 20.0), 30.0, 64).shape == (4, 3, 3)
    with pytest.raises(ValueError, match="K"):
        zoom_camera_matrix(np.eye(2), (0.0, 0.0), 1.0, 4)


def test_test_time_crop():
    center, size = test_time_crop((10.0, 20.0, 40.0, 30.0), (640, 480))
    np.testing.assert_allclose(center, [30.0, 35.0])
    assert size == pytest.approx(60.0)
    _, size = test_time_crop(np.array([0.0, 0.0, 500.0, 100.0]), (640, 480), pad_scale=2.0)
    assert size == pytest.approx(640.0)  # clipped to max(W, H)
