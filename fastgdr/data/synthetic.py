"""A complete synthetic BOP-format dataset, rendered headless (the embedded default).

Writes, under one folder::

    camera.json, models/ and models_eval/ (obj_XXXXXX.ply + models_info.json),
    train_pbr/000000/…  (rgb/*.jpg, depth/*.png, mask/, mask_visib/, scene_*.json; 1000 images per chunk)
    test/000001/…       (rgb/*.png, the same annotations; 25 images per scene)
    test_targets_bop19.json
    detections/synth_default_detections_test.json   (BOP 2023 default-detections format)

Scenes hold several objects at random poses in front of a textured background plane
with random lighting, so objects occlude each other and leave the image (truncation).
Visible masks and ``visib_fract`` follow the BOP toolkit (visibility test with δ = 5 mm
for PBR-style training images and 15 mm for test images; the whole silhouette, also
outside the image, for ``px_count_all`` and ``bbox_obj``). ``models_eval/`` holds the
same meshes as ``models/`` (BOP resamples them; ours are already evenly meshed).
Every image depends only on (seed, split, index): generation is deterministic.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from fastgdr.data.bop_records import GTInfo
from fastgdr.data.mesh import save_ply
from fastgdr.data.shapes import SyntheticObject, background_plane, make_objects
from fastgdr.data.symmetry import rotation_about_axis
from fastgdr.data.visibility import gt_info_for_object, visibility_mask

DEPTH_SCALE = 0.1  # mm per stored depth unit
TRAIN_SPLIT, TEST_SPLIT = "train_pbr", "test"
TRAIN_CHUNK, TEST_SCENE_SIZE = 1000, 25
VISIB_DELTA = {TRAIN_SPLIT: 5.0, TEST_SPLIT: 15.0}
BACKGROUND_ID_BASE = 1000  # renderer ids of background planes (never written as objects)
NUM_BACKGROUNDS = 8
DETECTOR_TIME_S = 0.012  # per-image time written into the detections file


@dataclass
class SyntheticSpec:
    """What to generate.

    Attributes:
        num_objects: objects in the dataset (≥ 2 gives a discrete and a continuous symmetry).
        train_images, test_images: image counts.
        width, height: image size in px.
        objects_per_image: inclusive range of object instances per image.
        depth_range: range of object distances in mm.
        seed: seeds everything.
    """

    num_objects: int = 4
    train_images: int = 400
    test_images: int = 50
    width: int = 640
    height: int = 480
    objects_per_image: tuple[int, int] = (3, 6)
    depth_range: tuple[float, float] = (450.0, 850.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_objects < 1 or self.train_images < 0 or self.test_images < 0:
            raise ValueError("num_objects must be >= 1 and image counts >= 0")
        if not 1 <= self.objects_per_image[0] <= self.objects_per_image[1]:
            raise ValueError(f"objects_per_image must be 1 <= min <= max, got {self.objects_per_image}")

    def camera_matrix(self) -> np.ndarray:
        f = 0.9 * self.width
        return np.array([[f, 0.0, self.width / 2.0 - 0.5], [0.0, f, self.height / 2.0 - 0.5], [0.0, 0.0, 1.0]])


@dataclass
class GenerationReport:
    """What was written and how fast."""

    out_dir: Path
    images: int
    seconds: float
    instances: int
    per_split: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed rotation matrix (from a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def sample_poses(
    spec: SyntheticSpec, diameters: dict[int, float], obj_ids: list[int], rng: np.random.Generator
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Random instances: ids (with repetition), rotations, and translations in mm.

    Object centres project within the image or slightly past its border (truncation) and
    are kept apart in 3D by 0.6 × the mean of two diameters (occlusion, little overlap).
    """
    K = spec.camera_matrix()
    count = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    placed: list[tuple[int, np.ndarray, np.ndarray]] = []
    for _ in range(count):
        obj_id = int(rng.choice(obj_ids))
        for _attempt in range(30):
            z = rng.uniform(*spec.depth_range)
            u = rng.uniform(-0.05, 1.05) * spec.width
            v = rng.uniform(-0.05, 1.05) * spec.height
            t = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
            if all(
                np.linalg.norm(t - other_t) > 0.6 * (diameters[obj_id] + diameters[other]) / 2
                for other, _, other_t in placed
            ):
                placed.append((obj_id, random_rotation(rng), t))
                break
    return placed


def write_models(out_dir: Path, objects: list[SyntheticObject]) -> dict[int, dict]:
    """models/ and models_eval/ with PLY files and models_info.json; returns the info."""
    info = {}
    for obj_id, obj in enumerate(objects, start=1):
        mesh = obj.mesh
        entry = {
            "diameter": mesh.diameter,
            **{f"min_{a}": float(m) for a, m in zip("xyz", mesh.bbox_min)},
            **{f"size_{a}": float(s) for a, s in zip("xyz", mesh.extents)},
        }
        if obj.symmetries_discrete:
            entry["symmetries_discrete"] = [np.asarray(T, dtype=float).ravel().tolist() for T in obj.symmetries_discrete]
        if obj.symmetries_continuous:
            entry["symmetries_continuous"] = [
                {"axis": np.asarray(a, dtype=float).tolist(), "offset": np.asarray(o, dtype=float).tolist()}
                for a, o in obj.symmetries_continuous
            ]
        info[obj_id] = entry
        for folder in ("models", "models_eval"):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
            save_ply(out_dir / folder / f"obj_{obj_id:06d}.ply", mesh)
    for folder in ("models", "models_eval"):
        _write_json(out_dir / folder / "models_info.json", {str(k): v for k, v in info.items()})
    return info


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if split == TRAIN_SPLIT else 1, index])


def _whole_silhouette(renderer, obj_id: int, R, t, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Silhouette on a 3×-size canvas with the image at offset (W, H), as BOP renders it."""
    K_big = K.copy()
    K_big[0, 2] += width
    K_big[1, 2] += height
    return renderer.render_depth(obj_id, R, t, K_big, 3 * width, 3 * height) > 0


class _Scene:
    """Annotations of one BOP scene folder, accumulated image by image."""

    def __init__(self) -> None:
        self.camera: dict[str, dict] = {}
        self.gt: dict[str, list] = {}
        self.gt_info: dict[str, list] = {}


def render_image(
    renderer, spec: SyntheticSpec, split: str, index: int, diameters: dict[int, float], obj_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, list, list[np.ndarray], list[np.ndarray], list[GTInfo]]:
    """One image: BGR uint8, depth (mm), instances, amodal masks, visible masks, GT infos."""
    rng = _image_rng(spec.seed, split, index)
    K = spec.camera_matrix()
    W, H = spec.width, spec.height
    instances = sample_poses(spec, diameters, obj_ids, rng)
    plane_R = _small_tilt(rng)
    plane_t = np.array([0.0, 0.0, rng.uniform(spec.depth_range[1] + 150.0, spec.depth_range[1] + 600.0)])
    background = (BACKGROUND_ID_BASE + int(rng.integers(NUM_BACKGROUNDS)), plane_R, plane_t)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), 1.0])
    scene = renderer.render(
        instances + [background], K, W, H, with_xyz=False, with_color=True,
        light_direction=light, ambient=float(rng.uniform(0.3, 0.6)),
    )
    noise = rng.normal(0.0, rng.uniform(1.0, 4.0), size=scene.color.shape)
    bgr = np.clip(scene.color[..., ::-1].astype(np.float32) + noise, 0, 255).astype(np.uint8)

    amodal_masks, visible_masks, infos = [], [], []
    for obj_id, R, t in instances:
        alone = renderer.render_depth(obj_id, R, t, K, W, H)
        visible = visibility_mask(scene.depth, alone, K, VISIB_DELTA[split])
        truncated = (alone > 0).any() and (
            (alone[0] > 0).any() or (alone[-1] > 0).any() or (alone[:, 0] > 0).any() or (alone[:, -1] > 0).any()
        )
        silhouette = _whole_silhouette(renderer, obj_id, R, t, K, W, H) if truncated or not (alone > 0).any() else None
        info = gt_info_for_object(
            alone, scene.depth, visible, K, VISIB_DELTA[split],
            silhouette=silhouette, silhouette_offset=(W, H) if silhouette is not None else (0, 0),
        )
        amodal_masks.append(alone > 0)
        visible_masks.append(visible)
        infos.append(info)
    return bgr, scene.depth, instances, amodal_masks, visible_masks, infos


def _small_tilt(rng: np.random.Generator) -> np.ndarray:
    """A rotation of up to 25° about a random axis in the image plane."""
    axis = np.array([rng.normal(), rng.normal(), 0.0])
    axis /= np.linalg.norm(axis)
    return rotation_about_axis(axis, rng.uniform(0.0, math.radians(25)))


def _detections_for_image(
    scene_id: int, im_id: int, instances: list, infos: list[GTInfo], spec: SyntheticSpec, obj_ids: list[int]
) -> list[dict]:
    """Detector-like boxes: jittered amodal boxes, misses, and low-score false positives."""
    rng = np.random.default_rng([spec.seed, 2, scene_id, im_id])
    W, H = spec.width, spec.height
    dets = []
    for (obj_id, _, _), info in zip(instances, infos):
        if info.px_count_visib == 0:
            continue
        if rng.random() < 0.03 + 0.5 * (1.0 - info.visib_fract) ** 3:
            continue  # missed
        x, y, w, h = info.bbox_obj
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + w, W - 1), min(y + h, H - 1)
        bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
        jitter = rng.normal(0.0, 0.04, size=4) * np.array([bw, bh, bw, bh])
        nx1, ny1 = x1 + jitter[0], y1 + jitter[1]
        nx2, ny2 = x2 + jitter[2], y2 + jitter[3]
        score = float(rng.uniform(0.7, 1.0) * (0.6 + 0.4 * info.visib_fract))
        dets.append(_det(scene_id, im_id, obj_id, score, (nx1, ny1, max(nx2 - nx1, 2.0), max(ny2 - ny1, 2.0))))
    for _ in range(int(rng.poisson(0.3))):
        w, h = rng.uniform(30, 160, size=2)
        x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
        dets.append(_det(scene_id, im_id, int(rng.choice(obj_ids)), float(rng.uniform(0.05, 0.45)), (x, y, w, h)))
    return dets


def _det(scene_id: int, im_id: int, obj_id: int, score: float, bbox) -> dict:
    return {
        "scene_id": scene_id, "image_id": im_id, "category_id": obj_id, "score": round(score, 4),
        "bbox": [round(float(v), 2) for v in bbox], "time": DETECTOR_TIME_S,
    }


def generate_dataset(
    out_dir: str | Path, spec: SyntheticSpec, progress: Callable[[int, int], None] | None = None
) -> GenerationReport:
    """Write the synthetic dataset ``spec`` describes into ``out_dir``.

    Args:
        progress: called as ``progress(done, total)`` after every image.
    """
    from fastgdr.render import Renderer

    out_dir = Path(out_dir)
    start = time.perf_counter()
    objects = make_objects(spec.num_objects, spec.seed)
    info = write_models(out_dir, objects)
    obj_ids = sorted(info)
    diameters = {k: v["diameter"] for k, v in info.items()}
    K = spec.camera_matrix()
    _write_json(out_dir / "camera.json", {
        "fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
        "width": spec.width, "height": spec.height, "depth_scale": DEPTH_SCALE,
    })
    renderer = Renderer({obj_id: obj.mesh for obj_id, obj in zip(obj_ids, objects)}, near=10.0, far=5000.0)
    bg_rng = np.random.default_rng([spec.seed, 5])
    plane_size = 4.0 * spec.depth_range[1] * max(spec.width, spec.height) / K[0, 0]
    for i in range(NUM_BACKGROUNDS):
        renderer.add_mesh(BACKGROUND_ID_BASE + i, background_plane(plane_size, bg_rng))

    total = spec.train_images + spec.test_images
    done = instances_written = 0
    targets, detections = [], []
    per_split = {}
    for split, count, chunk in ((TRAIN_SPLIT, spec.train_images, TRAIN_CHUNK), (TEST_SPLIT, spec.test_images, TEST_SCENE_SIZE)):
        per_split[split] = count
        scenes: dict[int, _Scene] = {}
        for index in range(count):
            scene_id = index // chunk + (0 if split == TRAIN_SPLIT else 1)
            im_id = index % chunk
            bgr, depth, instances, amodal, visible, infos = render_image(renderer, spec, split, index, diameters, obj_ids)
            folder = out_dir / split / f"{scene_id:06d}"
            _write_image_files(folder, split, im_id, bgr, depth, amodal, visible)
            scene = scenes.setdefault(scene_id, _Scene())
            camera = {"cam_K": K.ravel().tolist(), "depth_scale": DEPTH_SCALE}
            if split == TRAIN_SPLIT:
                camera.update(cam_R_w2c=np.eye(3).ravel().tolist(), cam_t_w2c=[0.0, 0.0, 0.0])
            scene.camera[str(im_id)] = camera
            scene.gt[str(im_id)] = [
                {"cam_R_m2c": R.ravel().tolist(), "cam_t_m2c": t.tolist(), "obj_id": obj_id}
                for obj_id, R, t in instances
            ]
            scene.gt_info[str(im_id)] = [_gt_info_json(i) for i in infos]
            instances_written += len(instances)
            if split == TEST_SPLIT:
                for obj_id in sorted({o for o, _, _ in instances}):
                    n = sum(1 for (o, _, _), inf in zip(instances, infos) if o == obj_id and inf.visib_fract >= 0.1)
                    if n:
                        targets.append({"scene_id": scene_id, "im_id": im_id, "obj_id": obj_id, "inst_count": n})
                detections += _detections_for_image(scene_id, im_id, instances, infos, spec, obj_ids)
            done += 1
            if progress is not None:
                progress(done, total)
        for scene_id, scene in scenes.items():
            folder = out_dir / split / f"{scene_id:06d}"
            _write_json(folder / "scene_camera.json", scene.camera)
            _write_json(folder / "scene_gt.json", scene.gt)
            _write_json(folder / "scene_gt_info.json", scene.gt_info)
    _write_json(out_dir / "test_targets_bop19.json", targets)
    _write_json(out_dir / "detections" / "synth_default_detections_test.json", detections)
    renderer.close()
    return GenerationReport(out_dir, total, time.perf_counter() - start, instances_written, per_split)


def _gt_info_json(info: GTInfo) -> dict:
    return {
        "bbox_obj": [int(v) for v in info.bbox_obj],
        "bbox_visib": [int(v) for v in info.bbox_visib],
        "px_count_all": info.px_count_all,
        "px_count_valid": info.px_count_valid,
        "px_count_visib": info.px_count_visib,
        "visib_fract": round(float(info.visib_fract), 6),
    }


def _write_image_files(folder: Path, split: str, im_id: int, bgr, depth, amodal, visible) -> None:
    for sub in ("rgb", "depth", "mask", "mask_visib"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if split == TRAIN_SPLIT:
        cv2.imwrite(str(folder / "rgb" / f"{im_id:06d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        cv2.imwrite(str(folder / "rgb" / f"{im_id:06d}.png"), bgr)
    stored = np.clip(np.round(depth / DEPTH_SCALE), 0, 65535).astype(np.uint16)
    cv2.imwrite(str(folder / "depth" / f"{im_id:06d}.png"), stored)
    for gt_index, (full, vis) in enumerate(zip(amodal, visible)):
        cv2.imwrite(str(folder / "mask" / f"{im_id:06d}_{gt_index:06d}.png"), full.astype(np.uint8) * 255)
        cv2.imwrite(str(folder / "mask_visib" / f"{im_id:06d}_{gt_index:06d}.png"), vis.astype(np.uint8) * 255)
