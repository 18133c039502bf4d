"""Tests of the mesh container, PLY I/O and the headless renderer (tiny procedural meshes)."""

import os
import pickle

import numpy as np
import pytest
import torch

from fastgdr.data.mesh import Mesh, compute_vertex_normals, load_ply, save_ply
from fastgdr.errors import DatasetError, MissingDependencyError, UnknownNameError
from fastgdr.geometry import axis_angle_to_matrix, project_points
from fastgdr.render import Renderer

PLANE, BOX, TETRA = 1, 2, 3


def box_mesh(size: tuple[float, float, float], colors: np.ndarray | None = None) -> Mesh:
    """An axis-aligned box centred at the origin (8 vertices, 12 triangles)."""
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    faces = [
        [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],  # x = -1, x = +1
        [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],  # y = -1, y = +1
        [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],  # z = -1, z = +1
    ]  # fmt: skip
    return Mesh(corners * np.asarray(size) / 2.0, np.array(faces), colors=colors)


def plane_mesh(x: tuple[float, float], y: tuple[float, float]) -> Mesh:
    """A rectangle in the plane z = 0 spanning x[0]..x[1], y[0]..y[1] (two triangles)."""
    vertices = [[x[0], y[0], 0.0], [x[1], y[0], 0.0], [x[1], y[1], 0.0], [x[0], y[1], 0.0]]
    return Mesh(np.array(vertices), np.array([[0, 1, 2], [0, 2, 3]]))


def tetra_mesh() -> Mesh:
    vertices = np.array([[0.0, 0.0, 0.0], [60.0, 0.0, 0.0], [0.0, 50.0, 0.0], [10.0, 15.0, 40.0]])
    return Mesh(vertices - [15.0, 15.0, 10.0], np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]]))


def camera(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def rotation(axis_angle) -> np.ndarray:
    return axis_angle_to_matrix(torch.tensor(axis_angle, dtype=torch.float64)).numpy()


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    return project_points(torch.from_numpy(points), torch.from_numpy(K)).numpy()


# Plane edges fall between pixel centres (j + 0.5): u in [10.2, 40.8], v in [5.7, 25.3] at z = 500 mm.
K_PLANE = camera(500.0, 500.0, 31.7, 20.3)
PLANE_X = (10.2 - 31.7, 40.8 - 31.7)
PLANE_Y = (5.7 - 20.3, 25.3 - 20.3)
SQUARE = 4


@pytest.fixture(scope="module")
def renderer():
    r = Renderer({
        PLANE: plane_mesh(PLANE_X, PLANE_Y), BOX: box_mesh((80, 60, 40)), TETRA: tetra_mesh(),
        SQUARE: plane_mesh((-10.0, 10.0), (-10.0, 10.0)),
    })
    try:
        r.render([], np.eye(3), 4, 4)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    yield r
    r.close()


def test_square_covers_the_pixels_of_the_bop_convention(renderer):
    """The BOP toolkit's pixel convention: pixel (row i, column j) covers [j, j+1) × [i, i+1)
    of the image coordinates (u, v) = (K X)[:2] / Z and shows the ray through its centre
    (j + 0.5, i + 0.5); it is covered when that centre is inside the projected square."""
    K = camera(500.0, 500.0, 20.0, 23.75)
    R, t = rotation([0.0, 0.0, np.pi / 2]), np.array([3.1, -2.3, 400.0])  # the 20 mm square, turned 90°
    result = renderer.render([(SQUARE, R, t)], K, 48, 48, with_xyz=False)
    # 1.25 px per mm at 400 mm: u in cx + 1.25 · (3.1 ± 10) = [11.375, 36.375],
    # v in cy + 1.25 · (-2.3 ± 10) = [8.375, 33.375]. Centres j + 0.5 inside: columns
    # 11..35, rows 8..32 (sampling at (j, i) instead would give columns 12..36, rows 9..33).
    expected = np.zeros((48, 48), dtype=bool)
    expected[8:33, 11:36] = True
    np.testing.assert_array_equal(result.instance >= 0, expected)
    np.testing.assert_allclose(result.depth[expected], 400.0, atol=1e-3)
    assert np.all(result.depth[~expected] == 0)


def test_plane_depth_and_footprint_follow_pixel_centres(renderer):
    t = np.array([0.0, 0.0, 500.0])
    result = renderer.render([(PLANE, np.eye(3), t)], K_PLANE, 64, 48, with_xyz=False)
    corners = np.array([[PLANE_X[0], PLANE_Y[0], 500], [PLANE_X[1], PLANE_Y[1], 500]], dtype=np.float64)
    (u0, v0), (u1, v1) = project(corners, K_PLANE)
    expected = np.zeros((48, 64), dtype=bool)
    centres_u, centres_v = np.arange(64) + 0.5, np.arange(48) + 0.5
    cols = np.arange(64)[(centres_u > u0) & (centres_u < u1)]
    rows = np.arange(48)[(centres_v > v0) & (centres_v < v1)]
    expected[np.ix_(rows, cols)] = True
    assert (cols[0], cols[-1], rows[0], rows[-1]) == (10, 40, 6, 24)
    np.testing.assert_array_equal(result.instance >= 0, expected)
    np.testing.assert_array_equal(result.instance[expected], 0)
    np.testing.assert_allclose(result.depth[expected], 500.0, atol=1e-3)
    assert np.all(result.depth[~expected] == 0)


def test_rotated_plane_covers_pixels_whose_centre_is_inside(renderer):
    R, t = rotation([0.0, 0.0, 0.35]), np.array([3.0, -2.0, 500.0])
    result = renderer.render([(PLANE, R, t)], K_PLANE, 64, 48, with_xyz=False)
    corners = np.array([[PLANE_X[i], PLANE_Y[j], 0.0] for i, j in ((0, 0), (1, 0), (1, 1), (0, 1))])
    polygon = project(corners @ R.T + t, K_PLANE)
    v, u = np.mgrid[0:48, 0:64] + 0.5  # pixel centres
    # Distance (px) of each pixel centre to each edge of the convex polygon, > 0 inside.
    following = np.roll(polygon, -1, axis=0)
    orientation = np.sign(np.sum(polygon[:, 0] * following[:, 1] - following[:, 0] * polygon[:, 1]))
    distances = []
    for a, b in zip(polygon, following):
        edge = (b - a) / np.linalg.norm(b - a)
        distances.append(orientation * (edge[0] * (v - a[1]) - edge[1] * (u - a[0])))
    inside = np.all(np.stack(distances) > 0, axis=0)
    clear = np.all(np.abs(np.stack(distances)) > 1e-2, axis=0)  # GL snaps vertices to 1/256 px
    assert inside.sum() > 300
    np.testing.assert_array_equal((result.instance >= 0)[clear], inside[clear])
    np.testing.assert_allclose(result.depth[result.instance >= 0], 500.0, atol=1e-3)


@pytest.mark.parametrize("obj_id", [BOX, TETRA])
def test_xyz_reprojects_to_pixel_centre_and_depth(renderer, obj_id):
    K = camera(450.0, 470.0, 30.2, 29.6)
    R, t = rotation([0.4, -0.7, 0.3]), np.array([5.0, -4.0, 600.0])
    result = renderer.render([(obj_id, R, t)], K, 64, 64)
    mask = result.instance == 0
    assert mask.sum() > 200
    points = result.xyz[mask].astype(np.float64) @ R.T + t
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(project(points, K), np.stack((cols, rows), axis=1) + 0.5, atol=1e-2)
    np.testing.assert_allclose(points[:, 2], result.depth[mask], rtol=1e-5)
    assert np.all(result.xyz[~mask] == 0)


def test_nearer_object_wins_instance_map(renderer):
    K = camera(400.0, 400.0, 32.0, 32.0)
    far = (BOX, rotation([0.2, 0.3, 0.0]), np.array([0.0, 0.0, 900.0]))
    near = (TETRA, rotation([0.0, 0.5, 0.5]), np.array([20.0, 10.0, 500.0]))
    both = renderer.render([far, near], K, 64, 64)
    alone = [renderer.render_depth(obj_id, R, t, K, 64, 64) > 0 for obj_id, R, t in (far, near)]
    overlap = alone[0] & alone[1]
    assert overlap.sum() > 50 and (alone[0] & ~alone[1]).sum() > 50
    np.testing.assert_array_equal(both.instance[overlap], 1)
    for index, silhouette in enumerate(alone):
        assert np.all(silhouette[both.instance == index])
    np.testing.assert_array_equal(both.instance >= 0, alone[0] | alone[1])
    depth_far = renderer.render_depth(*far, K, 64, 64)
    np.testing.assert_array_equal(both.depth[alone[0] & ~alone[1]], depth_far[alone[0] & ~alone[1]])


def test_render_is_deterministic_across_size_changes(renderer):
    pose = (TETRA, rotation([0.3, 0.2, -0.1]), np.array([0.0, 0.0, 400.0]))
    small = renderer.render([pose], camera(300.0, 300.0, 32.0, 32.0), 64, 64, with_color=True)
    large = renderer.render([pose], camera(572.4, 573.6, 325.3, 242.0), 640, 480, with_color=True)
    again = renderer.render([pose], camera(300.0, 300.0, 32.0, 32.0), 64, 64, with_color=True)
    assert large.depth.shape == large.instance.shape == (480, 640)
    assert large.xyz.shape == large.color.shape == (480, 640, 3)
    assert (large.instance == 0).sum() > 1000
    for name in ("depth", "instance", "xyz", "color"):
        np.testing.assert_array_equal(getattr(small, name), getattr(again, name))


def test_color_is_shaded_on_object_and_black_elsewhere():
    red = np.tile([1.0, 0.0, 0.0], (8, 1))
    renderer = Renderer({7: box_mesh((50, 50, 50), colors=red)})
    try:
        result = renderer.render(
            [(7, rotation([0.5, 0.4, 0.0]), np.array([0.0, 0.0, 300.0]))],
            camera(300.0, 300.0, 32.0, 32.0),
            64,
            64,
            with_xyz=False,
            with_color=True,
        )
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    finally:
        renderer.close()
    mask = result.instance >= 0
    assert result.xyz is None and result.color.dtype == np.uint8
    assert mask.sum() > 100 and np.all(result.color[mask, 0] > 0)
    assert np.all(result.color[mask, 1:] == 0) and np.all(result.color[~mask] == 0)
    assert len(np.unique(result.color[mask, 0])) >= 2  # faces at different angles shade differently


def test_renderer_errors_and_pickled_copy(renderer):
    with pytest.raises(UnknownNameError, match="known ids"):
        renderer.render([(99, np.eye(3), np.zeros(3))], np.eye(3), 8, 8)
    with pytest.raises(ValueError, match="K must have shape"):
        renderer.render([], np.eye(4), 8, 8)
    pose = (BOX, np.eye(3), np.array([0.0, 0.0, 500.0]))
    copy = pickle.loads(pickle.dumps(renderer))
    np.testing.assert_array_equal(
        copy.render_depth(*pose, K_PLANE, 32, 32), renderer.render_depth(*pose, K_PLANE, 32, 32)
    )
    copy.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_of_a_rendering_process_refuses_to_render(renderer):
    pid = os.fork()
    if pid == 0:  # child: must raise at once instead of hanging inside EGL
        code = 1
        try:
            renderer.render_depth(BOX, np.eye(3), np.array([0.0, 0.0, 500.0]), K_PLANE, 8, 8)
        except RuntimeError as exc:
            code = 0 if "spawn" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_missing_egl_names_the_packages(monkeypatch):
    moderngl = pytest.importorskip("moderngl")

    def fail(**kwargs):
        raise Exception("libEGL.so.1 not loaded")  # what glcontext raises

    monkeypatch.setattr(moderngl, "create_standalone_context", fail)
    with pytest.raises(MissingDependencyError, match="libegl1 libegl-mesa0 libgl1-mesa-dri"):
        Renderer({BOX: box_mesh((1.0, 1.0, 1.0))}).render_depth(
            BOX, np.eye(3), np.ones(3), K_PLANE, 4, 4
        )


def test_ply_round_trip_binary(tmp_path):
    rng = np.random.default_rng(0)
    mesh = box_mesh((30.0, 20.0, 10.0), colors=rng.integers(0, 256, (8, 3)) / 255.0)
    mesh.normals = compute_vertex_normals(mesh.vertices, mesh.faces)
    save_ply(tmp_path / "box.ply", mesh)
    assert (tmp_path / "box.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0")
    loaded = load_ply(tmp_path / "box.ply")
    np.testing.assert_array_equal(loaded.vertices, mesh.vertices)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_allclose(loaded.colors, mesh.colors, atol=1e-6)
    np.testing.assert_array_equal(loaded.normals, mesh.normals)
    plain = Mesh(mesh.vertices, mesh.faces)
    save_ply(tmp_path / "plain.ply", plain)
    loaded = load_ply(tmp_path / "plain.ply")
    assert loaded.colors is None and loaded.normals is None


def test_load_ascii_ply_and_errors(tmp_path):
    header = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
    header += "property float z\n"
    colors = "property uchar red\nproperty uchar green\nproperty uchar blue\n"
    body = "0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 0 0 0 51\n"
    path = tmp_path / "tri.ply"
    faces = "element face 1\nproperty list uchar int vertex_index\nend_header\n"
    path.write_text(header + colors + faces + body + "3 0 1 2\n")
    mesh = load_ply(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2]])
    np.testing.assert_allclose(mesh.colors[2], [0.0, 0.0, 0.2])
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32

    with pytest.raises(DatasetError, match="not found"):
        load_ply(tmp_path / "missing.ply")
    path.write_text(header + colors + "end_header\n" + body)
    with pytest.raises(DatasetError, match="no 'face' element"):
        load_ply(path)
    quad = header.replace("vertex 3", "vertex 4") + "element face 1\n"
    quad += "property list uchar int vertex_indices\nend_header\n"
    path.write_text(quad + "0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    with pytest.raises(DatasetError, match="only triangles"):
        load_ply(path)


def test_extents_and_diameter():
    box = box_mesh((1.0, 1.0, 1.0))
    np.testing.assert_allclose(box.extents, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(box.bbox_min, [-0.5, -0.5, -0.5])
    assert box.diameter == pytest.approx(np.sqrt(3.0), rel=1e-6)
    assert plane_mesh((0.0, 3.0), (0.0, 4.0)).diameter == pytest.approx(5.0)  # flat: no 3D hull
    points = np.random.default_rng(1).normal(size=(300, 3)) * [40.0, 20.0, 10.0]
    as_stored = points.astype(np.float32).astype(np.float64)
    brute = np.sqrt(((as_stored[:, None] - as_stored[None]) ** 2).sum(-1)).max()
    cloud = Mesh(points, np.zeros((0, 3)))
    assert cloud.diameter == pytest.approx(float(brute), rel=1e-6)


def test_vertex_normals_of_a_plane_point_along_z():
    plane = plane_mesh((0.0, 2.0), (0.0, 1.0))
    normals = compute_vertex_normals(plane.vertices, plane.faces)
    np.testing.assert_allclose(normals, np.tile([0.0, 0.0, 1.0], (4, 1)), atol=1e-7)
