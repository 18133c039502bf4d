"""Pose errors: known answers, and the batched torch path against the per-pose reference."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fastgdr.data import shapes
from fastgdr.data.mesh import Mesh
from fastgdr.data.symmetry import rotation_about_axis, symmetry_transformations
from fastgdr.errors import MissingDependencyError
from fastgdr.eval import batched_errors as be
from fastgdr.eval import reference_errors as ref
from fastgdr.render import Renderer

WIDTH, HEIGHT = 160, 120
K = np.array([[150.0, 0.0, 79.3], [0.0, 152.0, 61.1], [0.0, 0.0, 1.0]])
TAUS = [0.05 * i for i in range(1, 11)]
DELTA = 15.0
STEP = 2 * math.pi / 315  # angle between BOP's samples of a continuous symmetry
BOX, BLOCK, CAN, BRACKET = 1, 2, 3, 4


def _objects() -> dict[int, shapes.SyntheticObject]:
    """A plain box without declared symmetry, and three objects with none/discrete/continuous."""
    rng = np.random.default_rng(0)
    vertices, faces = shapes.box((60.0, 40.0, 30.0), segments=4)
    plain = shapes.SyntheticObject("box", Mesh(vertices, faces), [], [])
    return {BOX: plain, BLOCK: shapes.make_block(rng, 1.0), CAN: shapes.make_can(rng, 1.0),
            BRACKET: shapes.make_bracket(rng, 1.0)}  # fmt: skip


OBJECTS = _objects()


def points(obj_id: int) -> np.ndarray:
    return OBJECTS[obj_id].mesh.vertices.astype(np.float64)


def symmetries(obj_id: int) -> tuple[np.ndarray, np.ndarray]:
    obj = OBJECTS[obj_id]
    return symmetry_transformations(obj.symmetries_discrete, obj.symmetries_continuous)


def diameter(obj_id: int) -> float:
    pts = points(obj_id)
    return float(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max())


def random_pairs(seed: int, n: int, shared_gt: int = 1) -> tuple[np.ndarray, ...]:
    """n pose pairs near z = 350 mm; every ``shared_gt`` consecutive pairs share one GT."""
    rng = np.random.default_rng(seed)
    n_gt = -(-n // shared_gt)
    R_g = np.repeat(Rotation.random(n_gt, random_state=seed).as_matrix(), shared_gt, axis=0)[:n]
    t_g = np.repeat(np.column_stack([rng.uniform(-40, 40, (n_gt, 2)), rng.uniform(320, 380, n_gt)]), shared_gt, 0)[:n]
    angles = rng.normal(0.0, 0.25, (n, 3)) * rng.choice([0.1, 1.0, 4.0], (n, 1))
    R_e = Rotation.from_rotvec(angles).as_matrix() @ R_g
    t_e = t_g + rng.normal(0.0, 12.0, (n, 3)) * rng.choice([0.1, 1.0, 3.0], (n, 1))
    return R_e, t_e, R_g, t_g


@pytest.fixture(scope="module")
def renderer():
    r = Renderer({obj_id: obj.mesh for obj_id, obj in OBJECTS.items()})
    try:
        r.render([], np.eye(3), 4, 4)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    yield r
    r.close()


def scene_depth(renderer: Renderer, obj_id: int, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A test depth image: the object in pose (R, t) on a wall at 600 mm, with an occluder
    strip at 330 mm and a patch of missing depth."""
    depth = renderer.render_depth(obj_id, R, t, K, WIDTH, HEIGHT)
    depth = np.where(depth > 0, depth, 600.0).astype(np.float32)
    depth[:, :70] = np.minimum(depth[:, :70], 330.0)
    depth[40:70, 85:110] = 0.0
    return depth


def reference_vsd(renderer, obj_id, R_e, t_e, R_g, t_g, depth, normalized=True, taus=TAUS) -> list[float]:
    def render(R, t):
        return renderer.render_depth(obj_id, R, t, K, WIDTH, HEIGHT)

    return ref.vsd(R_e, t_e, R_g, t_g, depth, K, DELTA, taus, normalized, diameter(obj_id), render)


class CountingRenderer:
    """Forwards ``render_depth`` and counts the calls."""

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.calls = 0

    def render_depth(self, *args):
        self.calls += 1
        return self.renderer.render_depth(*args)

    def bounding_radius(self, obj_id):
        return self.renderer.bounding_radius(obj_id)


def batched_all(obj_id, R_e, t_e, R_g, t_g) -> dict[str, np.ndarray]:
    sym_R, sym_t = symmetries(obj_id)
    pts = points(obj_id)
    return {
        "add": be.add_errors(R_e, t_e, R_g, t_g, pts).numpy(),
        "adi": be.adi_errors(R_e, t_e, R_g, t_g, pts).numpy(),
        "mssd": be.mssd_errors(R_e, t_e, R_g, t_g, pts, sym_R, sym_t).numpy(),
        "mspd": be.mspd_errors(R_e, t_e, R_g, t_g, K, pts, sym_R, sym_t).numpy(),
        "re": be.rotation_errors(R_e, R_g).numpy(),
        "te": be.translation_errors(t_e, t_g).numpy(),
    }


def reference_all(obj_id, R_e, t_e, R_g, t_g) -> dict[str, np.ndarray]:
    sym_R, sym_t = symmetries(obj_id)
    pts = points(obj_id)
    pairs = list(zip(R_e, t_e, R_g, t_g))
    return {
        "add": np.array([ref.add(*p, pts) for p in pairs]),
        "adi": np.array([ref.adi(*p, pts) for p in pairs]),
        "mssd": np.array([ref.mssd(*p, pts, sym_R, sym_t) for p in pairs]),
        "mspd": np.array([ref.mspd(*p, K, pts, sym_R, sym_t) for p in pairs]),
        "re": np.array([ref.re(p[0], p[2]) for p in pairs]),
        "te": np.array([ref.te(p[1], p[3]) for p in pairs]),
    }


@pytest.mark.parametrize("obj_id", [BLOCK, CAN, BRACKET])
def test_identical_poses_give_zero_errors(renderer, obj_id):
    R, t = Rotation.random(3, random_state=obj_id).as_matrix(), np.array([[5.0, -3.0, 340.0]] * 3)
    for name, values in {**batched_all(obj_id, R, t, R, t), **reference_all(obj_id, R, t, R, t)}.items():
        # arccos near 1 resolves angles to ~1e-6 degrees only.
        assert np.all(np.abs(values) < (1e-5 if name == "re" else 1e-9)), name
    depth = scene_depth(renderer, obj_id, R[0], t[0])
    assert reference_vsd(renderer, obj_id, R[0], t[0], R[0], t[0], depth) == [0.0] * len(TAUS)
    vsd = be.VSDEvaluator(renderer, WIDTH, HEIGHT, DELTA, TAUS).errors(obj_id, R, t, R, t, depth, K, diameter(obj_id))
    assert torch.all(vsd[0] == 0)


@pytest.mark.parametrize("obj_id", [BLOCK, BRACKET])
def test_shift_along_x(obj_id):
    R_g = Rotation.random(4, random_state=1).as_matrix()
    t_g = np.array([[10.0, 20.0, 350.0]] * 4)
    t_e = t_g + np.array([5.0, 0.0, 0.0])
    errors = batched_all(obj_id, R_g, t_e, R_g, t_g)
    reference = reference_all(obj_id, R_g, t_e, R_g, t_g)
    for name in ("add", "mssd", "te"):
        np.testing.assert_allclose(errors[name], 5.0, rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(reference[name], 5.0, rtol=0, atol=1e-9, err_msg=name)
    assert np.all(errors["re"] < 1e-5) and np.all(reference["re"] < 1e-5)
    assert be.rotation_errors(np.eye(3)[None], np.eye(3)[None]).item() == 0.0


SHEAR = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    "transform, degrees",
    [
        (SHEAR, math.degrees(2 * math.asin(0.3 / math.sqrt(8)))),  # 12.18°; the trace formula: 0
        (0.5 * np.eye(3), math.degrees(2 * math.asin(0.5 * math.sqrt(3) / math.sqrt(8)))),  # 35.66°
        (np.diag([1.0, 1.0, -1.0]), 90.0),  # a reflection: ‖diag(0, 0, -2)‖ = 2
        (-np.eye(3), 180.0),
    ],
)
def test_rotation_error_of_matrices_that_are_not_rotations(transform, degrees):
    """R_e = R_g · M: the error is 2·arcsin(‖M − I‖_F / √8), whatever R_g, never 0 for M ≠ I."""
    R_g = Rotation.random(5, random_state=3).as_matrix()
    errors = be.rotation_errors(R_g @ transform, R_g).numpy()
    np.testing.assert_allclose(errors, degrees, rtol=0, atol=1e-9)
    if transform is SHEAR:  # what the toolkit's formula reports for it
        assert ref.re(R_g[0] @ SHEAR, R_g[0]) < 1e-5


def test_rotation_error_is_the_angle_between_rotations():
    R_g = Rotation.random(50, random_state=4).as_matrix()
    angles = np.linspace(0.0, 179.0, 50)
    axes = Rotation.random(50, random_state=5).as_rotvec()
    turns = Rotation.from_rotvec(axes / np.linalg.norm(axes, axis=1, keepdims=True) * np.radians(angles)[:, None])
    np.testing.assert_allclose(be.rotation_errors(turns.as_matrix() @ R_g, R_g).numpy(), angles, rtol=0, atol=1e-9)
    assert be.rotation_errors(R_g, R_g).abs().max().item() == 0.0


@pytest.mark.parametrize(
    "discrete, continuous",
    [
        ([], []),
        ([np.diag([-1.0, -1.0, 1.0, 1.0]), np.diag([1.0, -1.0, -1.0, 1.0]), np.diag([-1.0, 1.0, -1.0, 1.0])], []),
        ([], [(np.array([0.0, 0.0, 1.0]), np.zeros(3))]),
    ],
    ids=["asymmetric", "box", "cylinder"],
)
def test_symmetric_rotation_error_matches_the_reference(discrete, continuous):
    sym_R, _ = symmetry_transformations(discrete, continuous)
    R_g = Rotation.random(20, random_state=6).as_matrix()
    R_e = Rotation.random(20, random_state=7).as_matrix()
    fast = be.symmetric_rotation_errors(R_e, R_g, sym_R).numpy()
    reference = [ref.re_sym(a, b, sym_R) for a, b in zip(R_e, R_g)]
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-5)
    if len(sym_R) == 1:
        np.testing.assert_array_equal(fast, be.rotation_errors(R_e, R_g).numpy())
    else:  # a twin of the GT scores 0, the plain rotation error does not
        twins = R_g @ sym_R[len(sym_R) // 2]
        assert be.symmetric_rotation_errors(twins, R_g, sym_R).max().item() < 1e-6
        assert be.rotation_errors(twins, R_g).min().item() > 90.0


def test_symmetric_rotation_error_of_a_turn_between_continuous_samples():
    """A cylinder turned about its axis by half a sampling step: at most half a step (0.57°)."""
    sym_R, _ = symmetry_transformations([], [(np.array([0.0, 0.0, 1.0]), np.zeros(3))])
    half_step = math.pi / len(sym_R)
    R_g = Rotation.random(3, random_state=8).as_matrix()
    R_e = R_g @ rotation_about_axis(np.array([0.0, 0.0, 1.0]), 10 * 2 * half_step + half_step)
    errors = be.symmetric_rotation_errors(R_e, R_g, sym_R).numpy()
    np.testing.assert_allclose(errors, math.degrees(half_step), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="at least the identity"):
        be.symmetric_rotation_errors(R_e, R_g, np.zeros((0, 3, 3)))


def test_mspd_of_a_shift_along_z_has_closed_form():
    """A box (no symmetry) at depth Z moved by dz: the near-face corners move farthest."""
    size, Z, dz = np.array([60.0, 40.0, 30.0]), 350.0, 7.0
    near = Z - size[2] / 2
    expected = math.hypot(K[0, 0] * size[0] / 2, K[1, 1] * size[1] / 2) * dz / (near * (near + dz))
    R = np.eye(3)[None]
    t_g, t_e = np.array([[0.0, 0.0, Z]]), np.array([[0.0, 0.0, Z + dz]])
    sym_R, sym_t = symmetries(BOX)
    assert ref.mspd(R[0], t_e[0], R[0], t_g[0], K, points(BOX), sym_R, sym_t) == pytest.approx(expected, abs=1e-9)
    assert be.mspd_errors(R, t_e, R, t_g, K, points(BOX), sym_R, sym_t).item() == pytest.approx(expected, abs=1e-9)


def test_declared_flip_gives_zero_mssd_mspd_and_vsd(renderer):
    R_g = Rotation.random(3, random_state=7).as_matrix()
    t_g = np.array([[0.0, 10.0, 340.0], [-20.0, 0.0, 360.0], [15.0, -5.0, 330.0]])
    flip_z = np.round(rotation_about_axis(np.array([0.0, 0.0, 1.0]), math.pi))
    R_e = R_g @ flip_z
    errors = batched_all(BLOCK, R_e, t_g, R_g, t_g)
    reference = reference_all(BLOCK, R_e, t_g, R_g, t_g)
    for values in (errors, reference):
        assert np.all(values["mssd"] < 1e-9) and np.all(values["mspd"] < 1e-9)
        assert np.all(values["add"] > 10.0)
    evaluator = be.VSDEvaluator(renderer, WIDTH, HEIGHT, DELTA, TAUS)
    for i in range(3):
        depth = scene_depth(renderer, BLOCK, R_g[i], t_g[i])
        vsd = evaluator.errors(BLOCK, R_e[i : i + 1], t_g[i : i + 1], R_g[i : i + 1], t_g[i : i + 1], depth, K,
                               diameter(BLOCK))  # fmt: skip
        assert vsd.max().item() < 0.02  # a few silhouette-edge pixels may differ


def test_continuous_symmetry_error_is_the_sampling_residual():
    """A turn about the can's axis between two of BOP's 315 samples: MSSD is the chord
    the farthest vertex travels to the nearest sample, at most 2·r·sin(Δ/4)."""
    pts = points(CAN)
    radius = np.hypot(pts[:, 0], pts[:, 1]).max()
    bound = 2 * radius * math.sin(STEP / 4)
    sym_R, sym_t = symmetries(CAN)
    R_g = Rotation.random(2, random_state=3).as_matrix()
    t_g = np.array([[0.0, 0.0, 350.0], [30.0, -10.0, 400.0]])
    for fraction in (0.37, 0.5, 0.81):
        angle = (5 + fraction) * STEP
        residual = min(fraction, 1 - fraction) * STEP
        expected = 2 * radius * math.sin(residual / 2)
        R_e = R_g @ rotation_about_axis(np.array([0.0, 0.0, 1.0]), angle)
        batched = be.mssd_errors(R_e, t_g, R_g, t_g, pts, sym_R, sym_t).numpy()
        reference = [ref.mssd(R_e[i], t_g[i], R_g[i], t_g[i], pts, sym_R, sym_t) for i in range(2)]
        np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(reference, expected, rtol=0, atol=1e-6)
        assert np.all(batched > 0) and np.all(batched <= bound + 1e-9)
    assert be.add_errors(R_e, t_g, R_g, t_g, pts).min() > 5 * bound  # ADD ignores the symmetry


@pytest.mark.parametrize("obj_id", [BLOCK, CAN, BRACKET])
def test_batched_matches_reference(obj_id):
    pairs = random_pairs(seed=obj_id, n=24, shared_gt=3)
    batched, reference = batched_all(obj_id, *pairs), reference_all(obj_id, *pairs)
    for name in batched:
        np.testing.assert_allclose(batched[name], reference[name], rtol=0, atol=1e-6, err_msg=name)
    assert np.all(reference["adi"] <= reference["add"] + 1e-12)
    assert np.all(batched["adi"] <= batched["add"] + 1e-12)


def test_per_pair_intrinsics_match_shared_ones():
    R_e, t_e, R_g, t_g = random_pairs(seed=5, n=6)
    sym_R, sym_t = symmetries(BLOCK)
    shared = be.mspd_errors(R_e, t_e, R_g, t_g, K, points(BLOCK), sym_R, sym_t)
    per_pair = be.mspd_errors(R_e, t_e, R_g, t_g, np.repeat(K[None], 6, 0), points(BLOCK), sym_R, sym_t)
    torch.testing.assert_close(per_pair, shared, rtol=0, atol=1e-12)


def test_small_blocks_give_the_same_errors(monkeypatch):
    """Blocks of a few (pair, symmetry) columns, split inside one pair's symmetries too."""
    pairs = random_pairs(seed=11, n=5)
    sym_R, sym_t = symmetries(CAN)
    pts = points(CAN)
    expected = [be.mssd_errors(*pairs, pts, sym_R, sym_t), be.mspd_errors(*pairs[:4], K, pts, sym_R, sym_t),
                be.add_errors(*pairs, pts), be.adi_errors(*pairs, pts)]  # fmt: skip
    monkeypatch.setattr(be, "CPU_BLOCK_BYTES", 40 * len(pts) * 8 * 8)  # MSSD: 1 pair, MSPD: 53 syms
    got = [be.mssd_errors(*pairs, pts, sym_R, sym_t), be.mspd_errors(*pairs[:4], K, pts, sym_R, sym_t),
           be.add_errors(*pairs, pts), be.adi_errors(*pairs, pts, chunk=500)]  # fmt: skip
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-9)


@pytest.mark.parametrize("obj_id", [BLOCK, CAN, BRACKET])
def test_vsd_batched_equals_reference_and_is_monotone(renderer, obj_id):
    R_e, t_e, R_g, t_g = random_pairs(seed=20 + obj_id, n=8, shared_gt=4)
    d = diameter(obj_id)
    counting = CountingRenderer(renderer)
    evaluator = be.VSDEvaluator(counting, WIDTH, HEIGHT, DELTA, TAUS)
    for first in (0, 4):  # one test image per GT pose
        depth = scene_depth(renderer, obj_id, R_g[first], t_g[first])
        part = slice(first, first + 4)
        counting.calls = 0
        batched = evaluator.errors(obj_id, R_e[part], t_e[part], R_g[part], t_g[part], depth, K, d)
        assert counting.calls == 5  # one GT render shared by four estimates
        pairs = zip(R_e[part], t_e[part], R_g[part], t_g[part])
        reference = [reference_vsd(renderer, obj_id, *p, depth) for p in pairs]
        assert batched.tolist() == reference
        assert torch.all((batched >= 0) & (batched <= 1))
        assert torch.all(batched[:, 1:] <= batched[:, :-1])
    assert 0 < batched.mean() < 1


def test_vsd_in_mm_and_empty_union(renderer):
    R_e, t_e, R_g, t_g = random_pairs(seed=30, n=3)
    t_e[2] = [4000.0, 0.0, 350.0]  # far outside the image
    t_g[2] = [-4000.0, 0.0, 350.0]
    depth = scene_depth(renderer, BRACKET, R_g[0], t_g[0])
    taus_mm = [5.0, 20.0, 80.0]
    evaluator = be.VSDEvaluator(renderer, WIDTH, HEIGHT, DELTA, taus_mm, normalized_by_diameter=False)
    batched = evaluator.errors(BRACKET, R_e, t_e, R_g, t_g, torch.from_numpy(depth), K, diameter(BRACKET))
    reference = [reference_vsd(renderer, BRACKET, *p, depth, normalized=False, taus=taus_mm)
                 for p in zip(R_e, t_e, R_g, t_g)]  # fmt: skip
    assert batched.tolist() == reference
    assert reference[2] == [1.0, 1.0, 1.0]


def test_sphere_gate_agrees_with_reference():
    rng = np.random.default_rng(4)
    t_g = np.column_stack([rng.uniform(-100, 100, (200, 2)), rng.uniform(200, 800, 200)])
    t_e = t_g + rng.normal(0.0, 60.0, (200, 3))
    t_e[:5, 2] = 0.0
    t_e[5:10, 2] = -300.0
    radius = 40.0
    batched = be.spheres_overlap(t_e, t_g, K, radius).numpy()
    reference = [ref.overlapping_sphere_projections(radius, p, q) for p, q in zip(t_e, t_g)]
    assert batched.tolist() == reference
    assert 20 < batched.sum() < 190 and not batched[:10].any()
    # Equal depths Z: overlap iff the lateral distance < 2·radius.
    t_g1 = np.array([[0.0, 0.0, 500.0]] * 2)
    t_e1 = t_g1 + np.array([[79.9, 0.0, 0.0], [80.1, 0.0, 0.0]])
    assert be.spheres_overlap(t_e1, t_g1, K, radius).tolist() == [True, False]
    assert be.spheres_overlap(t_e1, t_g1, np.repeat(K[None], 2, 0), np.array([radius, 41.0])).tolist() == [True, True]


def test_shape_errors_name_the_argument():
    R, t = np.eye(3)[None], np.zeros((1, 3))
    with pytest.raises(ValueError, match="t_g"):
        be.add_errors(R, t, R, np.zeros((2, 3)), points(BOX))
    with pytest.raises(ValueError, match="points"):
        be.mssd_errors(R, t, R, t, np.zeros((5, 2)), *symmetries(BOX))
    with pytest.raises(ValueError, match="K"):
        be.mspd_errors(R, t, R, t, np.eye(4), points(BOX), *symmetries(BOX))
    with pytest.raises(ValueError, match="sym_t"):
        ref.mssd(R[0], t[0], R[0], t[0], points(BOX), np.eye(3)[None], np.zeros((2, 3)))


def test_render_window_holds_the_whole_silhouette(renderer):
    rng = np.random.default_rng(5)
    for obj_id in renderer.object_ids:
        radius = renderer.bounding_radius(obj_id)
        for _ in range(20):
            R = Rotation.random(random_state=rng).as_matrix()
            # centres around and beyond the image border: truncated, outside, near
            t = np.array([rng.uniform(-250, 250), rng.uniform(-200, 200), rng.uniform(radius + 20, 900)])
            full = renderer.render_depth(obj_id, R, t, K, WIDTH, HEIGHT) > 0
            r0, r1, c0, c1 = be.render_window(t, radius, K, WIDTH, HEIGHT)
            inside = np.zeros_like(full)
            inside[r0:r1, c0:c1] = True
            assert not np.any(full & ~inside)
            K_window = K.copy()
            K_window[0, 2] -= c0
            K_window[1, 2] -= r0
            window = renderer.render_depth(obj_id, R, t, K_window, c1 - c0, r1 - r0) > 0
            assert np.array_equal(window, full[r0:r1, c0:c1])
    assert be.render_window(np.array([0.0, 0.0, 5.0]), 50.0, K, WIDTH, HEIGHT) == (0, HEIGHT, 0, WIDTH)

