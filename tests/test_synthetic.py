"""The synthetic generator writes a BOP dataset that the readers accept and the renderer confirms."""

import json

import cv2
import numpy as np
import pytest

from fastgdr.data.bop import BopDataset
from fastgdr.data.mesh import load_ply
from fastgdr.data.shapes import make_objects
from fastgdr.data.symmetry import symmetry_transformations
from fastgdr.data.synthetic import SyntheticSpec, generate_dataset
from fastgdr.data.visibility import visibility_mask
from fastgdr.render import Renderer


def test_dataset_reads_back_and_passes_checks(tiny_dataset):
    ds = BopDataset(tiny_dataset)
    ds.check(["train_pbr", "test"], depth=True, masks=True)
    assert ds.obj_ids == (1, 2, 3) or list(ds.obj_ids) == [1, 2, 3]
    assert set(ds.symmetric_obj_ids) == {1, 2}
    assert ds.models_info[1].symmetries_discrete and not ds.models_info[1].symmetries_continuous
    assert ds.models_info[2].symmetries_continuous and not ds.models_info[2].symmetries_discrete
    assert ds.scene_ids("train_pbr") == [0]
    assert ds.image_size == (320, 240)
    assert ds.read_image("train_pbr", 0, 0).shape == (240, 320, 3)
    assert ds.image_path("train_pbr", 0, 0).suffix == ".jpg"
    assert ds.image_path("test", 1, 0).suffix == ".png"


def test_declared_symmetries_hold_for_shape_and_colour():
    block, can = make_objects(2, seed=0)
    v, c = block.mesh.vertices.astype(np.float64), block.mesh.colors
    Rs, ts = symmetry_transformations(block.symmetries_discrete, [])
    for R, t in zip(Rs, ts):
        moved = v @ R.T + t
        dist = np.linalg.norm(moved[:, None] - v[None, ::7], axis=2)  # subsample targets for speed
        nearest = np.argmin(np.linalg.norm(moved[::7, None] - v[None], axis=2), axis=1)
        assert np.allclose(moved[::7], v[nearest], atol=1e-4)
        assert np.allclose(c[::7], c[nearest], atol=1e-6)
        del dist
    # the can: colour is a function of height only, the surface is a solid of revolution
    v, c = can.mesh.vertices.astype(np.float64), can.mesh.colors
    for z in np.unique(np.round(v[:, 2], 4))[:5]:
        same = np.isclose(v[:, 2], z, atol=1e-4)
        assert np.allclose(c[same], c[same][0], atol=1e-6)
    (axis, offset), = can.symmetries_continuous
    assert np.allclose(axis, [0, 0, 1]) and np.allclose(offset, 0)


def test_masks_depth_and_visib_fract_agree_with_the_renderer(tiny_dataset):
    ds = BopDataset(tiny_dataset)
    renderer = Renderer({o: load_ply(ds.model_path(o)) for o in ds.obj_ids})
    K_delta = {"train_pbr": 5.0, "test": 15.0}
    for split, scene_id in (("train_pbr", 0), ("test", 1)):
        scene = ds.load_scene(split, scene_id)
        for im_id in list(scene.gt)[:3]:
            K = scene.camera[im_id].K
            depth = ds.read_depth(split, scene_id, im_id, scene.camera[im_id].depth_scale)
            for gt_index, (gt, info) in enumerate(zip(scene.gt[im_id], scene.gt_info[im_id])):
                alone = renderer.render_depth(gt.obj_id, gt.R, gt.t, K, 320, 240)
                amodal = ds.read_mask(split, scene_id, im_id, gt_index, visible=False)
                visible = ds.read_mask(split, scene_id, im_id, gt_index, visible=True)
                assert np.array_equal(amodal, alone > 0)
                expected = visibility_mask(depth, alone, K, K_delta[split])
                assert np.mean(expected != visible) < 0.002  # 0.1 mm depth quantization only
                assert info.px_count_visib == visible.sum()
                assert info.px_count_all >= (alone > 0).sum()
                if info.px_count_all:
                    assert info.visib_fract == pytest.approx(info.px_count_visib / info.px_count_all, abs=1e-6)
                on = alone > 0
                assert np.all(depth[on & visible] <= alone[on & visible] + 0.051)


def test_targets_and_detections(tiny_dataset):
    ds = BopDataset(tiny_dataset)
    targets = ds.load_test_targets()
    assert targets
    for target in targets:
        infos = ds.load_scene("test", target.scene_id)
        n = sum(
            1 for gt, info in zip(infos.gt[target.im_id], infos.gt_info[target.im_id])
            if gt.obj_id == target.obj_id and info.visib_fract >= 0.1
        )
        assert n == target.inst_count
    dets = json.loads((tiny_dataset / "detections" / "synth_default_detections_test.json").read_text())
    assert dets
    for det in dets:
        assert set(det) == {"scene_id", "image_id", "category_id", "score", "bbox", "time"}
        assert det["category_id"] in ds.obj_ids and 0 < det["score"] <= 1 and len(det["bbox"]) == 4


def test_generation_is_deterministic(tmp_path):
    spec = SyntheticSpec(num_objects=2, train_images=2, test_images=1, width=160, height=120, seed=11)
    a = generate_dataset(tmp_path / "a", spec)
    generate_dataset(tmp_path / "b", spec)
    assert a.images == 3 and a.images_per_second > 0
    for rel in ("train_pbr/000000/scene_gt.json", "train_pbr/000000/scene_gt_info.json", "test/000001/rgb/000000.png",
                "models/models_info.json", "test_targets_bop19.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    depth = cv2.imread(str(tmp_path / "a/test/000001/depth/000000.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.max() > 0
