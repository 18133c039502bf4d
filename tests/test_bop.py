"""BOP readers, dataset cards, up-front checks and the visibility test, on a tiny dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from fastgdr.data.bop import BopDataset
from fastgdr.data.bop_parsing import load_models_info
from fastgdr.data.bop_records import TestTarget
from fastgdr.data.cards import DATASET_CARDS, DatasetCard, detect_card
from fastgdr.data.visibility import (
    depth_to_distance,
    gt_info_for_object,
    mask_bbox,
    visibility_mask,
)
from fastgdr.errors import DatasetError, UnknownNameError

K_LIST = [4.0, 0.0, 1.5, 0.0, 4.0, 1.5, 0.0, 0.0, 1.0]
R_LIST = [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
FLIP_Z = [-1, 0, 0, 10.0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # 180° about z, 10 mm along x


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _image(value: int) -> np.ndarray:
    """4×4 BGR test image with distinct channels."""
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = value, value + 1, value + 2
    image[0, 0] = (10, 20, 30)
    return image


def _gt_info(visib_fract: float) -> dict:
    return {
        "bbox_obj": [0, 0, 3, 3], "bbox_visib": [1, 1, 2, 2], "px_count_all": 16,
        "px_count_valid": 12, "px_count_visib": 8, "visib_fract": visib_fract,
    }


def make_tiny_bop(root: Path) -> Path:
    """A BOP dataset: 3 objects (1: discrete symmetry, 2: continuous, 3: none), split
    ``test`` with scene 1 of two 4×4 images (image 0: objects 2 and 1, image 1: object 1)."""
    models = {
        "1": {"diameter": 50.0, "min_x": -10, "min_y": -11, "min_z": -12,
              "size_x": 20, "size_y": 22, "size_z": 24, "symmetries_discrete": [FLIP_Z]},
        "2": {"diameter": 30.5, "min_x": -5, "min_y": -5, "min_z": -5, "size_x": 10,
              "size_y": 10, "size_z": 10,
              "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 2]}]},
        "3": {"diameter": 12.0, "min_x": -1, "min_y": -2, "min_z": -3,
              "size_x": 2, "size_y": 4, "size_z": 6},
    }
    _write_json(root / "models" / "models_info.json", models)
    for obj_id in models:
        (root / "models" / f"obj_{int(obj_id):06d}.ply").write_text("ply\n")
    _write_json(root / "camera.json", {"fx": 4, "fy": 4, "cx": 1.5, "cy": 1.5,
                                       "width": 4, "height": 4, "depth_scale": 0.1})
    scene = root / "test" / "000001"
    camera = {"0": {"cam_K": K_LIST, "depth_scale": 0.1},
              "1": {"cam_K": K_LIST, "depth_scale": 0.1, "cam_R_w2c": R_LIST,
                    "cam_t_w2c": [1, 2, 3]}}
    gt = {"0": [{"obj_id": 2, "cam_R_m2c": R_LIST, "cam_t_m2c": [1.0, 2.0, 300.0]},
                {"obj_id": 1, "cam_R_m2c": [1, 0, 0, 0, 1, 0, 0, 0, 1], "cam_t_m2c": [0, 0, 400]}],
          "1": [{"obj_id": 1, "cam_R_m2c": R_LIST, "cam_t_m2c": [5, 6, 700]}]}
    _write_json(scene / "scene_camera.json", camera)
    _write_json(scene / "scene_gt.json", gt)
    _write_json(scene / "scene_gt_info.json",
                {"0": [_gt_info(0.5), _gt_info(0.25)], "1": [_gt_info(1.0)]})
    for sub in ("rgb", "depth", "mask", "mask_visib"):
        (scene / sub).mkdir(parents=True)
    for im_id, count in ((0, 2), (1, 1)):
        cv2.imwrite(str(scene / "rgb" / f"{im_id:06d}.png"), _image(40 * im_id))
        depth = np.full((4, 4), 1000 + im_id, np.uint16)
        depth[3, 3] = 0
        cv2.imwrite(str(scene / "depth" / f"{im_id:06d}.png"), depth)
        for gt_index in range(count):
            full = np.zeros((4, 4), np.uint8)
            full[:2, :3] = 255
            visib = full.copy()
            visib[0, 0] = 0
            cv2.imwrite(str(scene / "mask" / f"{im_id:06d}_{gt_index:06d}.png"), full)
            cv2.imwrite(str(scene / "mask_visib" / f"{im_id:06d}_{gt_index:06d}.png"), visib)
    _write_json(root / "test_targets_bop19.json",
                [{"scene_id": 1, "im_id": 0, "obj_id": 2, "inst_count": 1},
                 {"scene_id": 1, "im_id": 1, "obj_id": 1, "inst_count": 1}])
    return root


@pytest.fixture
def bop_root(tmp_path: Path) -> Path:
    return make_tiny_bop(tmp_path / "tiny")


@pytest.fixture
def dataset(bop_root: Path) -> BopDataset:
    return BopDataset(bop_root)


# ---- readers ---------------------------------------------------------------------


def test_models_info_round_trip(dataset: BopDataset) -> None:
    infos = dataset.models_info
    assert list(infos) == [1, 2, 3]
    one = infos[1]
    assert one.obj_id == 1 and one.diameter == 50.0
    np.testing.assert_array_equal(one.bbox_min, [-10, -11, -12])
    np.testing.assert_array_equal(one.extents, [20, 22, 24])
    assert len(one.symmetries_discrete) == 1
    sym = one.symmetries_discrete[0]
    assert sym.shape == (4, 4) and sym.dtype == np.float64
    assert sym[0, 3] == 10.0 and sym[0, 0] == -1 and sym[3, 3] == 1
    ((axis, offset),) = infos[2].symmetries_continuous
    np.testing.assert_array_equal(axis, [0, 0, 1])
    np.testing.assert_array_equal(offset, [0, 0, 2])
    assert one.is_symmetric and infos[2].is_symmetric and not infos[3].is_symmetric
    assert infos[3].symmetries_discrete == () and infos[3].symmetries_continuous == ()
    assert dataset.eval_models_info is dataset.models_info
    assert dataset.model_path(2) == dataset.root / "models" / "obj_000002.ply"
    assert dataset.model_path(2, eval=True) == dataset.model_path(2)


def test_eval_models_folder_used_when_present(bop_root: Path) -> None:
    eval_dir = bop_root / "models_eval"
    eval_dir.mkdir()
    info = json.loads((bop_root / "models" / "models_info.json").read_text())
    info["1"]["diameter"] = 49.0
    _write_json(eval_dir / "models_info.json", info)
    dataset = BopDataset(bop_root)
    assert dataset.eval_models_info[1].diameter == 49.0
    assert dataset.models_info[1].diameter == 50.0
    assert dataset.model_path(1, eval=True) == eval_dir / "obj_000001.ply"
    with pytest.raises(DatasetError, match=r"obj_000001\.ply: model file not found"):
        dataset.check(["test"])


def test_scene_round_trip(dataset: BopDataset) -> None:
    assert dataset.scene_ids("test") == [1]
    scene = dataset.load_scene("test", 1)
    assert scene.im_ids == [0, 1]
    camera = scene.camera[0]
    np.testing.assert_array_equal(camera.K, np.array(K_LIST).reshape(3, 3))
    assert camera.K.dtype == np.float64 and camera.depth_scale == 0.1
    assert camera.R_w2c is None and camera.t_w2c is None
    np.testing.assert_array_equal(scene.camera[1].R_w2c, np.array(R_LIST).reshape(3, 3))
    np.testing.assert_array_equal(scene.camera[1].t_w2c, [1, 2, 3])
    first, second = scene.gt[0]
    assert (first.obj_id, second.obj_id) == (2, 1)
    np.testing.assert_array_equal(first.R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(first.t, [1, 2, 300])
    assert first.R.shape == (3, 3) and first.t.shape == (3,)
    info = scene.gt_info[0][1]
    assert info.bbox_obj == (0, 0, 3, 3) and info.bbox_visib == (1, 1, 2, 2)
    assert (info.px_count_all, info.px_count_valid, info.px_count_visib) == (16, 12, 8)
    assert info.visib_fract == 0.25


def test_scene_gt_info_is_optional(dataset: BopDataset, bop_root: Path) -> None:
    (bop_root / "test" / "000001" / "scene_gt_info.json").unlink()
    scene = dataset.load_scene("test", 1)
    assert scene.gt_info is None and len(scene.gt[0]) == 2
    dataset.check(["test"])


def test_withheld_gt_allowed_only_when_not_required(dataset: BopDataset, bop_root: Path) -> None:
    (bop_root / "test" / "000001" / "scene_gt.json").unlink()
    scene = dataset.load_scene("test", 1, require_gt=False)
    assert scene.gt is None and scene.gt_info is None and scene.im_ids == [0, 1]
    dataset.check(["test"], require_gt=False)
    with pytest.raises(DatasetError, match="scene_gt.json: file not found"):
        dataset.load_scene("test", 1)


def test_read_image_png_is_bgr(dataset: BopDataset) -> None:
    image = dataset.read_image("test", 1, 1)
    assert image.shape == (4, 4, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, _image(40))
    assert dataset.image_path("test", 1, 0).name == "000000.png"


def test_jpg_found_when_no_png(dataset: BopDataset, bop_root: Path) -> None:
    rgb = bop_root / "test" / "000001" / "rgb"
    assert dataset.image_path("test", 1, 0).suffix == ".png"  # fills the layout cache
    (rgb / "000000.png").unlink()
    cv2.imwrite(str(rgb / "000000.jpg"), np.full((4, 4, 3), 128, np.uint8))
    assert dataset.image_path("test", 1, 0) == rgb / "000000.jpg"
    assert np.abs(dataset.read_image("test", 1, 0).astype(int) - 128).max() <= 2


def test_gray_tif_replicated_to_three_channels(bop_root: Path) -> None:
    scene = bop_root / "test" / "000001"
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    (scene / "gray").mkdir()
    cv2.imwrite(str(scene / "gray" / "000000.tif"), gray)
    (scene / "rgb" / "000000.png").unlink()
    itodd_like = DatasetCard(name="tiny", obj_ids=(1, 2, 3), symmetric_obj_ids=None,
                             image_size=(4, 4), gray=True)
    for card in (None, itodd_like):
        dataset = BopDataset(bop_root, card)
        assert dataset.image_path("test", 1, 0).name == "000000.tif"
        image = dataset.read_image("test", 1, 0)
        assert image.shape == (4, 4, 3) and image.dtype == np.uint8
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], gray)


def test_read_image_rejects_16_bit(dataset: BopDataset, bop_root: Path) -> None:
    path = bop_root / "test" / "000001" / "rgb" / "000000.png"
    cv2.imwrite(str(path), np.full((4, 4, 3), 300, np.uint16))
    with pytest.raises(DatasetError, match="expected 8-bit pixels, got uint16"):
        dataset.read_image("test", 1, 0)


def test_read_depth_applies_depth_scale(dataset: BopDataset) -> None:
    depth_scale = dataset.load_scene("test", 1).camera[1].depth_scale
    depth = dataset.read_depth("test", 1, 1, depth_scale)
    assert depth.shape == (4, 4) and depth.dtype == np.float32
    assert depth[0, 0] == pytest.approx(100.1) and depth[3, 3] == 0.0
    assert dataset.depth_path("test", 1, 1).name == "000001.png"


def test_read_masks(dataset: BopDataset) -> None:
    full = dataset.read_mask("test", 1, 0, 1, visible=False)
    visib = dataset.read_mask("test", 1, 0, 1, visible=True)
    assert full.dtype == bool and full.shape == (4, 4)
    assert full.sum() == 6 and visib.sum() == 5 and not visib[0, 0] and full[0, 0]
    assert dataset.mask_path("test", 1, 0, 1, visible=True).parts[-2:] == (
        "mask_visib", "000000_000001.png")
    with pytest.raises(DatasetError, match="000001_000005.png: file not found"):
        dataset.read_mask("test", 1, 1, 5, visible=False)


def test_load_test_targets(dataset: BopDataset) -> None:
    assert dataset.load_test_targets() == [TestTarget(1, 0, 2, 1), TestTarget(1, 1, 1, 1)]


def test_obj_ids_labels_and_symmetric_ids(dataset: BopDataset, bop_root: Path) -> None:
    assert dataset.obj_ids == (1, 2, 3)
    assert [dataset.label_of(i) for i in (1, 2, 3)] == [0, 1, 2]
    assert dataset.symmetric_obj_ids == (1, 2)  # from models_info
    assert dataset.image_size == (4, 4)  # from camera.json
    with pytest.raises(DatasetError, match="object id 7 is not one of"):
        dataset.label_of(7)
    card = DatasetCard(name="tiny", obj_ids=(3, 1), symmetric_obj_ids=(3,), image_size=(8, 6))
    carded = BopDataset(bop_root, card)
    assert carded.obj_ids == (3, 1) and carded.label_of(1) == 1 and carded.label_of(3) == 0
    assert carded.symmetric_obj_ids == (3,) and carded.image_size == (8, 6)
    carded.check(["test"])


def test_split_and_scene_folders(dataset: BopDataset, bop_root: Path) -> None:
    (bop_root / "test" / "not_a_scene").mkdir()
    (bop_root / "test" / "12345").mkdir()
    assert dataset.scene_ids("test") == [1]
    with pytest.raises(DatasetError, match="train_pbr: split folder not found"):
        dataset.scene_ids("train_pbr")


# ---- cards -------------------------------------------------------------------------


def test_dataset_cards() -> None:
    assert set(DATASET_CARDS.names()) == {"lmo", "ycbv", "tless", "itodd", "tudl", "hb", "icbin"}
    num_classes = {"lmo": 8, "ycbv": 21, "tless": 30, "itodd": 28, "hb": 16, "icbin": 2, "tudl": 3}
    for name, count in num_classes.items():
        card = DATASET_CARDS.get(name)
        assert card.name == name and len(card.obj_ids) == count == len(set(card.obj_ids))
    lmo = DATASET_CARDS.get("lmo")
    assert lmo.obj_ids == (1, 5, 6, 8, 9, 10, 11, 12) and lmo.symmetric_obj_ids == (10, 11)
    ycbv = DATASET_CARDS.get("ycbv")
    assert ycbv.camera_file == "camera_uw.json" and ycbv.train_splits == ("train_real", "train_pbr")
    tless = DATASET_CARDS.get("tless")
    assert tless.test_split == "test_primesense" and tless.image_size == (720, 540)
    assert tless.symmetric_obj_ids == tless.obj_ids and tless.det_topk_per_obj == 100
    itodd = DATASET_CARDS.get("itodd")
    assert itodd.gray and itodd.vsd_delta_mm == 5 and itodd.det_score_threshold == 0.05
    assert DATASET_CARDS.get("hb").camera_file == "camera_primesense.json"
    with pytest.raises(UnknownNameError, match="Did you mean 'lmo'"):
        DATASET_CARDS.get("lm0")


@pytest.mark.parametrize(
    ("folder", "expected"),
    [("lmo", "lmo"), ("ycbv", "ycbv"), ("T-LESS", "tless"), ("hb_bop19", "hb"), ("tiny", None)],
)
def test_detect_card(tmp_path: Path, folder: str, expected: str | None) -> None:
    card = detect_card(tmp_path / "bop" / folder)
    assert (card.name if card else None) == expected


# ---- check() -----------------------------------------------------------------------


def test_check_passes_on_good_dataset(dataset: BopDataset) -> None:
    dataset.check(["test"], depth=True, masks=True)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


SCENE = Path("test") / "000001"


def _cam_k_8(root: Path) -> None:
    _edit_json(root / SCENE / "scene_camera.json", lambda d: d["1"].update(cam_K=K_LIST[:8]))


def _unknown_obj(root: Path) -> None:
    _edit_json(root / SCENE / "scene_gt.json", lambda d: d["0"][1].update(obj_id=99))


def _short_t(root: Path) -> None:
    _edit_json(root / SCENE / "scene_gt.json", lambda d: d["1"][0].update(cam_t_m2c=[1, 2]))


def _no_diameter(root: Path) -> None:
    _edit_json(root / "models" / "models_info.json", lambda d: d["2"].pop("diameter"))


def _bad_symmetry(root: Path) -> None:
    _edit_json(root / "models" / "models_info.json",
               lambda d: d["1"].update(symmetries_discrete=[FLIP_Z[:15]]))


def _no_depth_scale(root: Path) -> None:
    _edit_json(root / SCENE / "scene_camera.json", lambda d: d["0"].pop("depth_scale"))


def _info_count(root: Path) -> None:
    _edit_json(root / SCENE / "scene_gt_info.json", lambda d: d["0"].pop())


def _camera_extra_image(root: Path) -> None:
    _edit_json(root / SCENE / "scene_camera.json", lambda d: d.update({"2": d["0"]}))


def _bad_target(root: Path) -> None:
    _edit_json(root / "test_targets_bop19.json", lambda d: d[0].update(im_id=5))


def _malformed_json(root: Path) -> None:
    (root / SCENE / "scene_gt_info.json").write_text('{\n  "0": [\n    {"bbox_obj": [0, 0,\n')


FAULTS = {
    "missing scene_gt.json": (lambda r: (r / SCENE / "scene_gt.json").unlink(),
                              ["000001/scene_gt.json", "file not found"]),
    "cam_K with 8 numbers": (_cam_k_8, ["scene_camera.json", "image 1", "'cam_K'",
                                        "must have 9 numbers, got 8"]),
    "unknown obj_id": (_unknown_obj, ["scene_gt.json", "image 0, entry 1", "'obj_id' 99",
                                      "models_info.json"]),
    "missing rgb file": (lambda r: (r / SCENE / "rgb" / "000001.png").unlink(),
                         ["000001", "image 1", "rgb/000001.png"]),
    "malformed JSON": (_malformed_json, ["scene_gt_info.json", "invalid JSON at line 4"]),
    "missing diameter": (_no_diameter, ["models_info.json", "object 2", "missing 'diameter'"]),
    "short cam_t_m2c": (_short_t, ["000001/scene_gt.json: image 1, entry 0: 'cam_t_m2c' "
                                   "must have 3 numbers, got 2"]),
    "15-number symmetry": (_bad_symmetry, ["models_info.json: object 1",
                                           "'symmetries_discrete[0]' must have 16 numbers"]),
    "missing depth_scale": (_no_depth_scale, ["scene_camera.json: image 0",
                                              "missing 'depth_scale'"]),
    "missing model file": (lambda r: (r / "models" / "obj_000003.ply").unlink(),
                           ["obj_000003.ply", "model file not found"]),
    "gt_info entry count": (_info_count, ["scene_gt_info.json: image 0", "1 entries",
                                          "scene_gt.json has 2"]),
    "image ids differ": (_camera_extra_image, ["scene_gt.json", "image ids differ",
                                               "scene_camera.json [2]"]),
    "target of a missing image": (_bad_target, ["test_targets_bop19.json: target 0",
                                                "image 5"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_check_reports_fault(bop_root: Path, fault: str) -> None:
    inject, expected = FAULTS[fault]
    inject(bop_root)
    with pytest.raises(DatasetError) as info:
        BopDataset(bop_root).check(["test"])
    for text in expected:
        assert text in str(info.value)


def test_check_depth_and_masks_only_when_asked(dataset: BopDataset, bop_root: Path) -> None:
    (bop_root / SCENE / "depth" / "000001.png").unlink()
    (bop_root / SCENE / "mask" / "000000_000001.png").unlink()
    dataset.check(["test"])
    with pytest.raises(DatasetError, match=r"depth: image 1: no depth file 000001\.png"):
        dataset.check(["test"], depth=True)
    with pytest.raises(DatasetError, match=r"mask/000000_000001\.png: file not found"):
        dataset.check(["test"], masks=True)


def test_models_info_errors_name_object_and_field(tmp_path: Path) -> None:
    path = tmp_path / "models_info.json"
    _write_json(path, {"4": {"diameter": 1, "min_x": 0, "min_y": 0, "min_z": 0,
                             "size_x": 1, "size_y": 1, "size_z": 1,
                             "symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]}})
    with pytest.raises(DatasetError, match=r"object 4, symmetries_continuous\[0\]: 'axis'"):
        load_models_info(path)
    _write_json(path, {"x": {}})
    with pytest.raises(DatasetError, match="key 'x' is not an integer object id"):
        load_models_info(path)


# ---- visibility ---------------------------------------------------------------------

# fx = fy = 4 px, principal point at pixel (0, 0).
K_VIS = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]])


def test_depth_to_distance_known_pixel() -> None:
    depth = np.zeros((3, 4))
    depth[0, 3] = 4.0  # X = (3 - 0) * 4 / 4 = 3, Y = 0, Z = 4
    depth[2, 0] = 4.0  # X = 0, Y = 2, Z = 4
    depth[0, 0] = 7.0  # on the optical axis
    distance = depth_to_distance(depth, K_VIS)
    assert distance[0, 3] == pytest.approx(5.0)
    assert distance[2, 0] == pytest.approx(np.sqrt(20.0))
    assert distance[0, 0] == pytest.approx(7.0)
    assert distance[1, 1] == 0.0


def test_depth_to_distance_matches_per_pixel_loop() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0, 2000, (5, 7)).astype(np.float32)
    K = np.array([[500.0, 0.0, 3.2], [0.0, 480.0, 2.1], [0.0, 0.0, 1.0]])
    expected = np.zeros(depth.shape)
    for v in range(depth.shape[0]):
        for u in range(depth.shape[1]):
            point = np.linalg.inv(K) @ np.array([u, v, 1.0]) * depth[v, u]
            expected[v, u] = np.linalg.norm(point)
    np.testing.assert_allclose(depth_to_distance(depth, K), expected, rtol=1e-6)


def test_visibility_mask_cases() -> None:
    scene = np.full((2, 3), 100.0)
    obj = np.zeros((2, 3))
    obj[0, 0] = 115.0  # exactly delta behind the scene surface: visible (≤ delta)
    obj[0, 1] = 90.0  # in front: visible
    obj[0, 2] = 200.0  # far behind: occluded
    obj[1, 0] = 500.0  # behind, but the scene depth is missing there: visible (bop19)
    scene[1, 0] = 0.0
    scene[1, 1] = 0.0  # no object at [1, 1]: never visible
    obj[1, 2] = 116.0  # at pixel (2, 1), off-axis; still behind by more than delta
    visible = visibility_mask(scene, obj, K_VIS, delta_mm=15.0)
    np.testing.assert_array_equal(visible, [[True, True, False], [True, False, False]])
    assert visibility_mask(scene, obj, K_VIS, delta_mm=14.9)[0, 0] == np.False_


def test_visibility_mask_compares_distances_not_depths() -> None:
    # Off the optical axis the ray is longer than the depth: at pixel (4, 0) with
    # fx = 4, the ray norm is √2, so a 10 mm depth gap is a 14.14 mm distance gap.
    scene, obj = np.full((1, 5), 100.0), np.full((1, 5), 110.0)
    visible = visibility_mask(scene, obj, K_VIS, delta_mm=12.0)
    assert visible[0, 0] and not visible[0, 4]


def test_gt_info_for_object() -> None:
    scene = np.full((4, 4), 100.0)
    scene[3, :] = 0.0
    obj = np.zeros((4, 4))
    obj[1:4, 1:3] = 90.0  # 6 pixels; 2 of them on the missing-depth row
    obj[1, 1] = 200.0  # occluded
    info = gt_info_for_object(obj, scene, None, K_VIS, 15.0)
    assert (info.px_count_all, info.px_count_valid, info.px_count_visib) == (6, 4, 5)
    assert info.visib_fract == pytest.approx(5 / 6)
    assert info.bbox_obj == (1, 1, 1, 2)
    assert info.bbox_visib == (1, 1, 1, 2)

    # The silhouette continues left of the image on a larger canvas (offset 2 px).
    canvas = np.zeros((4, 8), bool)
    canvas[1:4, 0:5] = True  # image columns -2..2
    truncated = gt_info_for_object(obj, scene, None, K_VIS, 15.0, silhouette=canvas,
                                   silhouette_offset=(2, 0))
    assert truncated.px_count_all == 15 and truncated.visib_fract == pytest.approx(5 / 15)
    assert truncated.bbox_obj == (-2, 1, 4, 2)

    nothing = gt_info_for_object(obj, scene, np.zeros((4, 4), bool), K_VIS, 15.0)
    assert nothing.px_count_visib == 0 and nothing.visib_fract == 0.0
    assert nothing.bbox_obj == nothing.bbox_visib == (-1, -1, -1, -1)
    empty = gt_info_for_object(np.zeros((4, 4)), scene, None, K_VIS, 15.0)
    assert empty.px_count_all == 0 and empty.visib_fract == 0.0


def test_mask_bbox_convention() -> None:
    mask = np.zeros((5, 6), bool)
    assert mask_bbox(mask) == (-1, -1, -1, -1)
    mask[2, 3] = True
    assert mask_bbox(mask) == (3, 2, 0, 0)
    mask[4, 5] = True
    assert mask_bbox(mask) == (3, 2, 2, 2)
    with pytest.raises(ValueError, match="must be an"):
        mask_bbox(np.zeros(3, bool))
