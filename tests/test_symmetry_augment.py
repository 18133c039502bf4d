import math

import numpy as np
import pytest

from fastgdr.data.augment import COLOR_OPS, color_augment, random_background, replace_background, truncate_mask
from fastgdr.data.symmetry import (
    canonical_symmetry_index,
    farthest_point_sampling,
    region_labels,
    rotation_about_axis,
    symmetry_transformations,
)
from fastgdr.data.train_dataset import ObjectAssets, TrainSampler, canonical_pose_targets, clipped_box


def test_no_symmetry_gives_identity_only():
    R, t = symmetry_transformations([], [])
    assert R.shape == (1, 3, 3) and np.allclose(R[0], np.eye(3)) and np.allclose(t, 0)


def test_discrete_and_continuous_counts_and_composition():
    flip = np.eye(4)
    flip[:3, :3] = rotation_about_axis(np.array([1.0, 0.0, 0.0]), math.pi)
    flip[:3, 3] = [0.0, 0.0, 10.0]
    R, t = symmetry_transformations([flip], [(np.array([0.0, 0.0, 1.0]), np.zeros(3))])
    assert len(R) == 315 * 2  # ceil(pi / 0.01) continuous samples × (identity + flip)
    assert np.allclose(R[0], np.eye(3)) and np.allclose(t[0], 0)
    assert np.allclose(R[1], flip[:3, :3]) and np.allclose(t[1], [0, 0, 10])
    # continuous samples are rotations about z by multiples of 2π/315
    angle = math.atan2(R[2][1, 0], R[2][0, 0])
    assert math.isclose(angle, 2 * math.pi / 315, rel_tol=1e-9)
    assert np.allclose(np.einsum("sij,skj->sik", R, R), np.eye(3), atol=1e-12)


def test_continuous_symmetry_offset_keeps_the_axis_fixed():
    offset = np.array([5.0, -3.0, 0.0])
    R, t = symmetry_transformations([], [(np.array([0.0, 0.0, 1.0]), offset)])
    on_axis = offset + np.array([0.0, 0.0, 7.0])
    moved = np.einsum("sij,j->si", R, on_axis) + t
    assert np.allclose(moved, on_axis)


def test_fps_is_deterministic_and_spread():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3))
    a = farthest_point_sampling(points, 16)
    assert np.array_equal(a, farthest_point_sampling(points, 16))
    centre = (points.min(0) + points.max(0)) / 2
    assert np.allclose(a[0], points[np.argmax(((points - centre) ** 2).sum(1))])
    with pytest.raises(ValueError):
        farthest_point_sampling(points[:3], 4)


def test_region_labels():
    fps = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    xyz = np.array([[[0.1, 0, 0], [0.9, 0, 0]], [[0.4, 0, 0], [0.0, 0, 0]]])
    mask = np.array([[True, True], [True, False]])
    assert region_labels(xyz, mask, fps).tolist() == [[1, 2], [1, 0]]


@pytest.mark.parametrize("op, prob", COLOR_OPS)
def test_color_ops_keep_shape_and_dtype(op, prob):
    image = np.random.default_rng(1).integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    out = op(image, np.random.default_rng(2))
    assert out.shape == image.shape and out.dtype == np.uint8


def test_color_augment_is_deterministic_for_a_seed():
    image = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    a = color_augment(image, np.random.default_rng(5))
    assert np.array_equal(a, color_augment(image, np.random.default_rng(5)))


def test_truncation_only_removes_pixels():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 4:16] = True
    for seed in range(20):
        cut = truncate_mask(mask, np.random.default_rng(seed))
        assert not np.any(cut & ~mask)
        assert cut.sum() > 0


def test_background_replacement():
    image = np.full((8, 8, 3), 200, np.uint8)
    keep = np.zeros((8, 8), bool)
    keep[2:4, 2:4] = True
    bg = random_background(8, 8, np.random.default_rng(0))
    out = replace_background(image, keep, bg)
    assert np.all(out[keep] == 200) and np.array_equal(out[~keep], bg[~keep])


def test_clipped_box():
    center, size = clipped_box((-10, 20, 50, 30), 640, 480)
    assert np.allclose(center, [20, 35]) and np.allclose(size, [40, 30])


def test_sampler_shards_batches_and_resumes():
    full = list(TrainSampler(3, 4))
    assert full == list(range(12))
    ranks = [list(TrainSampler(3, 4, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0] == [0, 1, 4, 5, 8, 9] and ranks[1] == [2, 3, 6, 7, 10, 11]
    assert list(TrainSampler(3, 4, start_iter=2)) == full[8:]
    with pytest.raises(ValueError):
        TrainSampler(3, 5, world_size=2)


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def block_symmetries():
    flips = [np.eye(4)] + [np.eye(4) for _ in range(3)]
    for T, axis in zip(flips[1:], np.eye(3)):
        T[:3, :3] = np.round(rotation_about_axis(axis, math.pi))
    return symmetry_transformations([T for T in flips[1:]], [])


def test_canonical_index_picks_the_equivalent_nearest_the_identity():
    R_sym, _ = block_symmetries()
    for k in range(4):  # R_allo = S_k^T, so R_allo S_k = I
        assert canonical_symmetry_index(R_sym[k].T, R_sym) == k
    assert canonical_symmetry_index(np.eye(3), np.stack([np.eye(3), np.eye(3)])) == 0  # ties: the first
    rng = np.random.default_rng(0)
    for _ in range(20):
        R = random_rotation(rng)
        angles = [np.arccos(np.clip((np.trace(R @ S) - 1) / 2, -1, 1)) for S in R_sym]
        assert canonical_symmetry_index(R, R_sym) == int(np.argmin(angles))


@pytest.mark.parametrize("kind", ["discrete", "continuous", "continuous with offset"])
def test_symmetric_equivalents_get_the_same_canonical_targets(kind):
    offset = np.array([5.0, -3.0, 0.0]) if kind == "continuous with offset" else np.zeros(3)
    if kind == "discrete":
        R_sym, t_sym = block_symmetries()
    else:
        R_sym, t_sym = symmetry_transformations([], [(np.array([0.0, 0.0, 1.0]), offset)])
    assets = ObjectAssets(np.ones(3), np.zeros((4, 3)), np.zeros((4, 3)), R_sym, t_sym / 1000.0)
    rng = np.random.default_rng(1)
    points = rng.normal(scale=0.03, size=(6, 5, 3))  # an (H, W, 3) "rendered" coordinate map in m
    for _ in range(5):
        R, t = random_rotation(rng), np.array([0.05, -0.03, 0.6])
        reference = canonical_pose_targets(R, t, points, assets)
        # the canonical pose renders every point where the annotated pose does
        R_c, t_c, xyz_c = reference
        np.testing.assert_allclose(xyz_c @ R_c.T + t_c, points @ R.T + t, atol=1e-12)
        for j in rng.choice(len(R_sym), size=4, replace=False):
            S, s = R_sym[j], t_sym[j] / 1000.0
            # the same scene described by the equivalent pose (R S, R s + t): X' = S^T (X − s)
            other = canonical_pose_targets(R @ S, R @ s + t, (points - s) @ S, assets)
            if offset.any():
                # An offset moves the origin the viewing ray passes through (by 6 mm at 0.6 m), so
                # the choice among the 315 samples of the continuous symmetry may move by one.
                step = 2 * math.pi / len(R_sym)
                angle = np.arccos(np.clip((np.trace(reference[0].T @ other[0]) - 1) / 2, -1, 1))
                assert angle <= step + 1e-9
            else:
                for a, b in zip(reference, other):
                    np.testing.assert_allclose(a, b, atol=1e-9)
