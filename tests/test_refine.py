"""Depth refinement: GDRNPP's "fast" translation update, point-to-plane ICP, bad depth, inference."""

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fastgdr.checkpoint import save_checkpoint
from fastgdr.config import load_config, to_dict
from fastgdr.data.bop import BopDataset
from fastgdr.data.detections import load_detections
from fastgdr.data.mesh import load_ply
from fastgdr.data.shapes import make_objects
from fastgdr.data.mesh import Mesh
from fastgdr.errors import UnknownNameError
from fastgdr.eval.results import load_results
from fastgdr.geometry import (
    axis_angle_to_matrix,
    coord_2d_map,
    crop_resize,
    test_time_crop,
    translation_to_site,
    zoom_camera_matrix,
)
from fastgdr.inference import (
    REFINERS,
    PosePredictor,
    RefineLimits,
    RefineOutcome,
    RefineStats,
    RefineTarget,
    check_depth,
    check_depth_scale,
    decode_rois,
    depth_points_and_normals,
    fast_refine,
    icp_refine,
    icp_refine_many,
    infer_dataset,
    load_model,
    paste_mask,
    pnp_ransac_pose,
    refine_poses,
)
from fastgdr.models import GDRNPoseNet
from fastgdr.render import Renderer

from conftest import REPO, TINY_TRAIN_OVERRIDES

DUCK, BRACKET = 4, 5
W, H = 320, 240
K = np.array([[288.0, 0.0, 159.5], [0.0, 288.0, 119.5], [0.0, 0.0, 1.0]])


def rotation(axis_angle) -> np.ndarray:
    return axis_angle_to_matrix(torch.tensor(axis_angle, dtype=torch.float64)).numpy()


def angle_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R1 @ R2.T) - 1.0) / 2.0, -1.0, 1.0))))


@pytest.fixture(scope="module")
def scene():
    """Duck and bracket (no symmetry) at known poses; the rendered depth is the "sensor" depth."""
    objects = make_objects(5, 0)
    renderer = Renderer({i + 1: obj.mesh for i, obj in enumerate(objects)})
    poses = {
        DUCK: (rotation([0.4, -0.7, 0.3]), np.array([-45.0, -10.0, 400.0])),
        BRACKET: (rotation([-0.5, 0.2, 0.9]), np.array([60.0, 15.0, 430.0])),
    }
    rendered = renderer.render([(k, R, t) for k, (R, t) in poses.items()], K, W, H, with_xyz=False)
    masks = {k: rendered.instance == i for i, k in enumerate(poses)}
    extents = {k: objects[k - 1].mesh.extents for k in poses}
    return renderer, poses, rendered.depth, masks, extents


def perfect_roi(renderer, obj_id, R, t, mask, extent, size=64):
    """Crop of a detection at its visible box, and ideal network outputs there (true pose)."""
    ys, xs = np.nonzero(mask)
    bbox = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    center, crop_size = test_time_crop(bbox, (W, H))
    crop = renderer.render([(obj_id, R, t)], zoom_camera_matrix(K, center, crop_size, size), size, size)
    inside = crop.depth > 0
    xyz_norm = np.where(inside[None], crop.xyz.transpose(2, 0, 1) / extent[:, None, None] + 0.5, 0.0)
    return center, crop_size, xyz_norm, inside.astype(np.float64)


@pytest.mark.parametrize("obj_id", [DUCK, BRACKET])
def test_fast_refine_removes_a_depth_offset_along_the_ray(scene, obj_id):
    renderer, poses, depth, masks, extents = scene
    R, t = poses[obj_id]
    center, crop_size, xyz_norm, prob = perfect_roi(renderer, obj_id, R, t, masks[obj_id], extents[obj_id])
    t_off = t * (1.0 + 30.0 / np.linalg.norm(t))  # 30 mm farther along the viewing ray
    t_ref, info = fast_refine(R, t_off, depth, K, center, crop_size, xyz_norm, prob, renderer, obj_id)
    assert info["supported"] and len(info["deltas_mm"]) == 2 and info["deltas_mm"][0] < -20.0
    assert np.linalg.norm(t_ref - t) < 1.0  # measured: 0.62 mm (duck), 0.17 mm (bracket)
    # the translation changes along the ray only when the weighted centroid sits on it
    t_none, info = fast_refine(R, t_off, depth, K, center, crop_size, xyz_norm, np.zeros_like(prob), renderer, obj_id)
    assert not info["supported"] and np.array_equal(t_none, t_off)


def test_fast_refine_moves_along_the_ray_through_the_pixel_centre(scene):
    """With all weight on one crop pixel (i, j), t moves along the ray through that pixel's
    centre (j + 0.5, i + 0.5): the point the renderer samples there (fastgdr.render)."""
    renderer, poses, depth, masks, extents = scene
    R, t = poses[BRACKET]
    center, crop_size, xyz_norm, prob = perfect_roi(renderer, BRACKET, R, t, masks[BRACKET], extents[BRACKET])
    i, j = np.argwhere(prob > 0)[len(np.argwhere(prob > 0)) // 2]
    one = np.zeros_like(prob)
    one[i, j] = 1.0
    t_off = t + np.array([0.0, 0.0, 25.0])
    t_ref, info = fast_refine(R, t_off, depth, K, center, crop_size, xyz_norm, one, renderer, BRACKET, iterations=1)
    assert info["supported"]
    ray = zoom_camera_matrix(K, center, crop_size, 64) @ (t_ref - t_off)
    np.testing.assert_allclose(ray[:2] / ray[2], [j + 0.5, i + 0.5], atol=1e-6)


def test_depth_points_lie_on_the_rendered_surface():
    """Back-projected through the pixel centres, the rendered depth of a slanted plane lies on
    the plane (through the pixel corners it would be off by ~0.5 mm here)."""
    plane = Mesh(np.array([[-150.0, -150.0, 0.0], [150.0, -150.0, 0.0], [150.0, 150.0, 0.0], [-150.0, 150.0, 0.0]]),
                 np.array([[0, 1, 2], [0, 2, 3]]))
    renderer = Renderer({1: plane})
    R, t = rotation([0.8, 0.3, 0.0]), np.array([5.0, -8.0, 420.0])
    depth = renderer.render_depth(1, R, t, K, W, H)
    points, _ = depth_points_and_normals(depth, K, depth > 0)
    renderer.close()
    assert len(points) > 1000
    normal = R[:, 2]
    assert np.abs(points @ normal - normal @ t).max() < 0.05


def test_epnp_on_perfect_correspondences_recovers_the_pose(scene):
    """EPnP on ideal network outputs: the coordinates rendered in the crop (as the training
    targets are) and the crop of coord_2d, read at the pixel centres, give back the pose."""
    renderer, poses, _, masks, extents = scene
    for obj_id in (DUCK, BRACKET):
        R, t = poses[obj_id]
        center, crop_size, xyz_norm, prob = perfect_roi(renderer, obj_id, R, t, masks[obj_id], extents[obj_id])
        coord = crop_resize(coord_2d_map(W, H).transpose(1, 2, 0), center, crop_size, 64)
        as_batch = lambda a: torch.as_tensor(np.asarray(a, np.float32))[None]  # noqa: E731
        batch = SimpleNamespace(coord_2d=as_batch(coord.transpose(2, 0, 1)))
        out = SimpleNamespace(visible_mask=as_batch(prob[None]), xyz=as_batch(xyz_norm))
        solved = pnp_ransac_pose(out, batch, 0, extents[obj_id] / 1000.0, K, W, H, reprojection_px=1.0)
        assert solved is not None
        assert angle_deg(solved[0], R) < 0.05 and np.linalg.norm(solved[1] - t) < 0.2  # corners: ~0.7 mm


@pytest.mark.parametrize("decoder", ["patchpnp", "epnp", "epnp-rot"])
def test_decoders_take_rotation_and_translation_from_where_they_say(scene, decoder):
    renderer, poses, _, masks, extents = scene
    R, t = poses[DUCK]
    center, crop_size, xyz_norm, prob = perfect_roi(renderer, DUCK, R, t, masks[DUCK], extents[DUCK])
    coord = crop_resize(coord_2d_map(W, H).transpose(1, 2, 0), center, crop_size, 64)
    as_batch = lambda a: torch.as_tensor(np.asarray(a, np.float32))[None]  # noqa: E731
    # Patch-PnP "predicts" the identity (allocentric) and a translation 40 mm off in depth.
    batch = SimpleNamespace(coord_2d=as_batch(coord.transpose(2, 0, 1)), centers=as_batch(center),
                            whs=as_batch([crop_size / 1.5] * 2), resize_ratios=as_batch(64 / crop_size)[0])
    t_site = (t + np.array([0.0, 0.0, 40.0])) / 1000.0
    site = translation_to_site(torch.as_tensor(t_site[None]), batch.centers.double(), batch.whs.double(),
                               batch.resize_ratios.double(), torch.as_tensor(K)).float()
    rot6d = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    out = SimpleNamespace(visible_mask=as_batch(prob[None]), xyz=as_batch(xyz_norm), rot6d=rot6d, site=site)
    R_out, t_out = decode_rois(out, batch, K, decoder, [extents[DUCK] / 1000.0], W, H)
    epnp_rotation = decoder in ("epnp", "epnp-rot")
    assert (angle_deg(R_out[0], R) < 0.05) == epnp_rotation
    if decoder == "epnp":
        assert np.linalg.norm(t_out[0] - t) < 0.2
    else:  # Patch-PnP's translation
        assert np.allclose(t_out[0], t_site * 1000.0, atol=1e-2)


def perturb(R, t):
    axis = np.array([1.0, 2.0, -1.0]) / np.sqrt(6.0)
    return rotation(axis * np.radians(3.0)) @ R, t + np.array([3.0, -2.0, 3.5])  # 3°, 5.0 mm


@pytest.mark.parametrize("obj_id", [DUCK, BRACKET])
def test_icp_recovers_a_small_rotation_and_translation(scene, obj_id):
    renderer, poses, depth, masks, _ = scene
    R, t = poses[obj_id]
    R0, t0 = perturb(R, t)
    assert angle_deg(R0, R) == pytest.approx(3.0) and np.linalg.norm(t0 - t) == pytest.approx(5.025, abs=1e-3)
    R_ref, t_ref, info = icp_refine(R0, t0, depth, K, masks[obj_id], renderer, obj_id)
    assert info["supported"] and info["converged"] and info["iterations"] <= 10
    assert angle_deg(R_ref, R) < 0.5 and np.linalg.norm(t_ref - t) < 1.0  # measured: < 0.15°, < 0.05 mm
    assert np.allclose(R_ref @ R_ref.T, np.eye(3), atol=1e-9)


def test_icp_batch_matches_one_object_at_a_time(scene):
    renderer, poses, depth, masks, _ = scene
    inputs = [(k, *perturb(*poses[k])) for k in (DUCK, BRACKET)]
    batched = icp_refine_many(inputs, depth, K, [masks[k] for k in (DUCK, BRACKET)], renderer)
    for (obj_id, R0, t0), (R_b, t_b, info_b) in zip(inputs, batched):
        R_1, t_1, info_1 = icp_refine(R0, t0, depth, K, masks[obj_id], renderer, obj_id)
        assert np.allclose(R_b, R_1, atol=1e-6) and np.allclose(t_b, t_1, atol=1e-3)
        assert info_b["iterations"] == info_1["iterations"]


def test_icp_without_support_keeps_the_pose(scene):
    renderer, poses, depth, masks, _ = scene
    R, t = poses[DUCK]
    R_ref, t_ref, info = icp_refine(R, t, depth, K, np.zeros_like(masks[DUCK]), renderer, DUCK)
    assert not info["supported"] and np.array_equal(R_ref, R) and np.array_equal(t_ref, t)


def test_paste_mask_inverts_the_crop(scene):
    renderer, poses, _, masks, extents = scene
    center, crop_size, _, prob = perfect_roi(renderer, DUCK, *poses[DUCK], masks[DUCK], extents[DUCK])
    pasted = paste_mask(prob, center, crop_size, (H, W))
    overlap = (pasted & masks[DUCK]).sum() / (pasted | masks[DUCK]).sum()
    assert overlap > 0.85


def test_check_depth_reasons():
    ok = np.full((H, W), 500.0, np.float32)
    assert check_depth(ok, (H, W), 0.1) is None
    assert check_depth(None, (H, W), 0.1) == "missing"
    assert "wrong size" in check_depth(ok[:10], (H, W), 0.1)
    assert "depth_scale" in check_depth(ok, (H, W), 0.0)
    assert "depth_scale" in check_depth(ok, (H, W), float("nan"))
    assert "no valid pixel" in check_depth(np.zeros_like(ok), (H, W), 0.1)
    assert "no valid pixel" in check_depth(np.full_like(ok, np.inf), (H, W), 0.1)


BAD_DEPTHS = {
    "none": (None, 0.1),
    "zeros": (np.zeros((H, W), np.float32), 0.1),
    "nan": (np.full((H, W), np.nan, np.float32), 0.1),
    "wrong size": (np.full((H // 2, W), 400.0, np.float32), 0.1),
    "zero depth_scale": (np.full((H, W), 400.0, np.float32), 0.0),
}


@pytest.mark.parametrize("method", ["fast", "icp"])
def test_bad_depth_keeps_the_poses_and_counts(scene, method):
    renderer, poses, depth, masks, extents = scene
    targets = [
        RefineTarget(k, *perturb(*poses[k]), *perfect_roi(renderer, k, *poses[k], masks[k], extents[k]))
        for k in (DUCK, BRACKET)
    ]
    stats = RefineStats()
    for bad, depth_scale in BAD_DEPTHS.values():
        out = refine_poses(method, targets, bad, depth_scale, K, (H, W), renderer, stats)
        for (R, t), tg in zip(out, targets):
            assert R is tg.R and t is tg.t and np.all(np.isfinite(t))
    assert stats.skipped_invalid_depth == 2 * len(BAD_DEPTHS) == stats.skipped and stats.refined == 0
    assert sum(stats.invalid_depth_reasons.values()) == len(BAD_DEPTHS) and not stats.seconds
    # partly invalid depth (NaN holes) is usable: NaN counts as missing
    holes = depth.copy()
    holes[::7] = np.nan
    out = refine_poses(method, targets, holes, 0.1, K, (H, W), renderer, stats)
    assert stats.refined == 2 and len(stats.seconds) == 2 and stats.mean_ms_per_object > 0
    assert all(np.all(np.isfinite(t)) for _, t in out)


def test_no_support_and_non_finite_results_keep_the_pose(scene, monkeypatch):
    renderer, poses, depth, masks, extents = scene
    R, t = poses[DUCK]
    center, crop_size, xyz_norm, prob = perfect_roi(renderer, DUCK, R, t, masks[DUCK], extents[DUCK])
    target = RefineTarget(DUCK, R, t, center, crop_size, xyz_norm, np.zeros_like(prob))
    stats = RefineStats()
    assert refine_poses("fast", [target], depth, 0.1, K, (H, W), renderer, stats) == [(R, t)]
    assert stats.skipped_no_support == 1 and stats.refined == 0
    nan_refiner = lambda targets, *_: [RefineOutcome(tg.R, tg.t * np.nan, True) for tg in targets]
    monkeypatch.setitem(REFINERS._entries, "fast", nan_refiner)
    out = refine_poses("fast", [target], depth, 0.1, K, (H, W), renderer, stats)
    assert out == [(R, t)] and stats.non_finite == 1 and stats.skipped == 2
    assert refine_poses("none", [target], None, None, K, (H, W), None, stats) == [(R, t)]
    with pytest.raises(UnknownNameError, match="Valid: none, fast, icp"):
        refine_poses("icpp", [target], depth, 0.1, K, (H, W), renderer, stats)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = load_config(REPO / "configs/p.yaml", [*TINY_TRAIN_OVERRIDES, "model.num_classes=3"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    save_checkpoint(path, GDRNPoseNet.from_config(cfg.model), config=to_dict(cfg))
    return path


def tiny_predictor(checkpoint, dataset, refine):
    model, cfg = load_model(checkpoint)
    renderer = Renderer({k: load_ply(dataset.model_path(k)) for k in dataset.obj_ids})
    labels = {k: dataset.label_of(k) for k in dataset.obj_ids}
    extents = {k: dataset.models_info[k].extents for k in dataset.obj_ids}
    return PosePredictor(model, labels, extents, cfg.model.input_res, refine=refine, renderer=renderer)


def test_inference_times_include_refinement_and_missing_depth_is_counted(tiny_dataset, tiny_checkpoint, tmp_path):
    dataset = BopDataset(tiny_dataset)
    all_detections = load_detections(tiny_dataset / "detections/synth_default_detections_test.json")
    first = min(all_detections)
    detections = {first: all_detections[first]}  # one image with detections keeps the test fast
    predictor = tiny_predictor(tiny_checkpoint, dataset, "fast")
    estimates, stats = infer_dataset(predictor, dataset, "test", detections, None)
    refine = stats.refine
    assert refine.refined + refine.skipped == len(estimates) > 0 and refine.skipped_invalid_depth == 0
    assert len(stats.refine_seconds) == len(stats.network_seconds) == stats.images
    index = sorted({(t.scene_id, t.im_id) for t in dataset.load_test_targets()}).index(first)
    times = {e.time for e in estimates}
    expected = stats.network_seconds[index] + stats.refine_seconds[index] + 0.012
    assert len(times) == 1 and times.pop() == pytest.approx(expected) and stats.refine_seconds[index] > 0
    with pytest.raises(ValueError, match="needs a renderer"):
        PosePredictor(predictor.model, predictor.labels, {}, 128, refine="icp")

    no_depth = tmp_path / "synth"
    shutil.copytree(tiny_dataset, no_depth, ignore=shutil.ignore_patterns("train_pbr"))
    for folder in (no_depth / "test").glob("*/depth"):
        shutil.rmtree(folder)
    estimates, stats = infer_dataset(predictor, BopDataset(no_depth), "test", detections, None)
    assert stats.refine.skipped_invalid_depth == len(estimates) and stats.refine.refined == 0
    assert all(np.all(np.isfinite(e.t)) for e in estimates)


def test_tool_refine_fast_end_to_end(tiny_dataset, tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    dets = json.loads((tiny_dataset / "detections/synth_default_detections_test.json").read_text())
    first = min((d["scene_id"], d["image_id"]) for d in dets)
    one_image = tmp_path / "dets.json"  # detections of one image: less network time
    one_image.write_text(json.dumps([d for d in dets if (d["scene_id"], d["image_id"]) == first]))
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/test.py"), "--ckpt", str(tiny_checkpoint), "--data", str(tiny_dataset),
         "--out", str(out), "--refine", "fast", "--no-eval", "--detections", str(one_image)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "depth refinement 'fast'" in result.stdout and "ms per object" in result.stdout
    summary = json.loads((out / "inference.json").read_text())
    assert summary["refine"] == "fast" and summary["refine_ms_per_object"] > 0
    assert summary["fused_blocks"] > 0  # the ConvNeXt blocks ran fused (tools/test.py's default)
    assert summary["refine_skipped"] == summary["estimates"] - summary["refine_counts"]["refined"]
    estimates = load_results(out / "fastgdr_synth-test.csv")
    assert len(estimates) == summary["estimates"] > 0 and len({e.time for e in estimates}) == 1
    # the other images have no detections: their network and refinement times are ~0
    images = summary["images"]
    network_and_refine = images * (summary["mean_network_seconds_per_image"] + summary["mean_refine_seconds_per_image"])
    assert estimates[0].time == pytest.approx(network_and_refine + 0.012, rel=1e-2, abs=1e-3)


def scene_targets(scene, perturbed=True):
    renderer, poses, depth, masks, extents = scene
    return [
        RefineTarget(k, *(perturb(*poses[k]) if perturbed else poses[k]),
                     *perfect_roi(renderer, k, *poses[k], masks[k], extents[k]))
        for k in (DUCK, BRACKET)
    ]


@pytest.mark.parametrize("method", ["fast", "icp"])
@pytest.mark.parametrize("factor", [10.0, 1000.0, 0.001, 1e30])
def test_depth_in_the_wrong_unit_leaves_the_poses_and_is_reported(scene, method, factor):
    """A depth_scale off by ×10, ×1000, ×0.001 or 1e30 is detected from the scene, not trusted."""
    renderer, _, depth, _, _ = scene
    targets = scene_targets(scene)
    stats = RefineStats()
    out = refine_poses(method, targets, depth * np.float32(factor), 0.1 * factor, K, (H, W), renderer, stats)
    for (R, t), tg in zip(out, targets):
        assert R is tg.R and t is tg.t
    assert stats.refined == 0 and stats.skipped_invalid_depth == 2 == stats.skipped
    (reason,) = stats.invalid_depth_reasons
    assert "depth unit does not match the scene" in reason and f"~{10.0 ** round(np.log10(factor)):g}×" in reason
    good = RefineStats()  # the same poses are refined with the depth in mm
    refine_poses(method, targets, depth, 0.1, K, (H, W), renderer, good)
    assert good.refined == 2


def test_check_depth_scale_accepts_the_true_unit(scene):
    renderer, _, depth, _, _ = scene
    targets = scene_targets(scene)
    diameters = [2 * renderer.bounding_radius(tg.obj_id) for tg in targets]
    assert check_depth_scale(depth, K, targets, diameters) is None
    assert check_depth_scale(depth * 10, K, targets, diameters) is not None
    assert check_depth_scale(np.zeros_like(depth), K, targets, diameters) is None  # no verdict without depth


@pytest.mark.parametrize("shift, why", [((0.0, 0.0, 5000.0), "metres away"), ((0.0, 0.0, -1000.0), "behind the camera")])
def test_implausible_updates_are_rejected_and_counted(scene, monkeypatch, shift, why):
    renderer, _, depth, _, _ = scene
    targets = scene_targets(scene, perturbed=False)
    far = lambda tgs, *_: [RefineOutcome(tg.R, tg.t + np.array(shift), True) for tg in tgs]
    monkeypatch.setitem(REFINERS._entries, "fast", far)
    stats = RefineStats()
    out = refine_poses("fast", targets, depth, 0.1, K, (H, W), renderer, stats)
    assert [t for _, t in out] == [tg.t for tg in targets], why
    assert stats.rejected_implausible == 2 == stats.skipped and stats.refined == 0
    small = lambda tgs, *_: [RefineOutcome(tg.R, tg.t + np.array([0.0, 0.0, 30.0]), True) for tg in tgs]
    monkeypatch.setitem(REFINERS._entries, "fast", small)
    refine_poses("fast", targets, depth, 0.1, K, (H, W), renderer, stats)
    assert stats.refined == 2  # a 30 mm correction is what refinement is for


def test_refine_limits_bound_the_shift_by_diameter_or_depth():
    limits = RefineLimits()
    assert limits.max_shift_mm(100.0, 400.0) == 100.0 and limits.max_shift_mm(100.0, 2000.0) == 500.0
    assert limits.plausible(np.array([0, 0, 400.0]), np.array([0, 0, 480.0]), 100.0)
    assert not limits.plausible(np.array([0, 0, 400.0]), np.array([0, 0, 4000.0]), 100.0)
    assert not limits.plausible(np.array([0, 0, 40.0]), np.array([0, 0, -10.0]), 100.0)
