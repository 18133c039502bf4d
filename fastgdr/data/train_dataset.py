"""GDRNPP training samples from a BOP dataset: one ROI per sample, targets made online.

For each ground-truth instance with enough visibility, a sample is the 256×256 crop around
its amodal box (clipped to the image) with dynamic zoom-in (DZI), and 64×64 targets:
normalized object coordinates rendered from the model at the ground-truth pose with the
zoomed camera, visible and amodal masks, surface-region labels from 64 farthest-point
samples, and the SITE translation target. Colour augmentation, truncation and
background replacement follow GDRNPP.

Sampling is driven by a global sample counter ``k`` (see :class:`TrainSampler`): the
instance and every random choice of sample ``k`` depend only on (seed, k), so a resumed
run sees exactly the samples an uninterrupted run would, whatever the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fastgdr.config import AugmentConfig
from fastgdr.data.augment import BackgroundSource, color_augment, replace_background, truncate_mask
from fastgdr.data.bop import BopDataset
from fastgdr.data.mesh import Mesh
from fastgdr.data.symmetry import (
    canonical_symmetry_index,
    farthest_point_sampling,
    region_labels,
    symmetry_transformations,
)
from fastgdr.errors import DatasetError
from fastgdr.geometry import coord_2d_map, crop_resize, egocentric_to_allocentric, zoom_camera_matrix
from fastgdr.losses.gdrn import GDRNTargets


# Decoded images kept per data-loading process (640×480: 0.9 MB each, so 0.5 GB): the whole
# embedded synthetic dataset; on a large dataset, the images of the most recent samples.
IMAGE_CACHE_SIZE = 600


@dataclass(frozen=True)
class TrainInstance:
    """One ground-truth object instance usable for training."""

    split: str
    scene_id: int
    im_id: int
    gt_index: int
    obj_id: int
    bbox_obj: tuple[float, float, float, float]  # amodal box x, y, w, h in px (may exceed the image)
    visib_fract: float


@dataclass
class ObjectAssets:
    """Per-object geometry the targets and losses need (metres)."""

    extents: np.ndarray  # (3,) bounding-box size
    fps_points: np.ndarray  # (R, 3) region centres
    model_points: np.ndarray  # (N, 3) points for the point-matching loss
    sym_rots: np.ndarray  # (S, 3, 3) symmetry rotations, identity first
    sym_trans: np.ndarray  # (S, 3) symmetry translations (m), matching ``sym_rots``


def index_train_instances(
    dataset: BopDataset, splits: Sequence[str], visib_threshold: float
) -> list[TrainInstance]:
    """All instances of ``splits`` with visib_fract > ``visib_threshold`` (needs scene_gt_info)."""
    instances = []
    for split in splits:
        for scene_id in dataset.scene_ids(split):
            scene = dataset.load_scene(split, scene_id)
            if scene.gt_info is None:
                raise DatasetError(
                    f"{dataset.split_dir(split) / f'{scene_id:06d}'}: scene_gt_info.json is needed "
                    "for training (amodal boxes and visible fractions)"
                )
            for im_id, gts in scene.gt.items():
                for gt_index, (gt, info) in enumerate(zip(gts, scene.gt_info[im_id])):
                    if info.visib_fract > visib_threshold and gt.obj_id in dataset.obj_ids:
                        instances.append(
                            TrainInstance(
                                split, scene_id, im_id, gt_index, gt.obj_id,
                                tuple(float(v) for v in info.bbox_obj), float(info.visib_fract),
                            )
                        )
    if not instances:
        raise DatasetError(
            f"{dataset.root}: no training instances with visib_fract > {visib_threshold} in "
            f"splits {', '.join(splits)}"
        )
    return instances


def build_object_assets(
    meshes: Mapping[int, Mesh], dataset: BopDataset, num_regions: int, num_points: int, seed: int = 0
) -> dict[int, ObjectAssets]:
    """FPS region centres, loss points and symmetries for every object (in metres).

    The number of loss points is min(``num_points``, fewest vertices of any object), the
    same subset size for all objects as GDRNPP uses.
    """
    rng = np.random.default_rng(seed)
    count = min([num_points] + [len(m.vertices) for m in meshes.values()])
    assets = {}
    for obj_id, mesh in meshes.items():
        info = dataset.models_info[obj_id]
        vertices = mesh.vertices.astype(np.float64) / 1000.0
        sym_R, sym_t = symmetry_transformations(info.symmetries_discrete, info.symmetries_continuous)
        assets[obj_id] = ObjectAssets(
            extents=np.asarray(info.extents, dtype=np.float64) / 1000.0,
            fps_points=farthest_point_sampling(vertices, num_regions),
            model_points=vertices[rng.choice(len(vertices), count, replace=False)],
            sym_rots=sym_R,
            sym_trans=sym_t / 1000.0,
        )
    return assets


def canonical_pose_targets(
    R: np.ndarray, t: np.ndarray, xyz: np.ndarray, assets: ObjectAssets
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pose and coordinate targets of the symmetric equivalent the view selects.

    A symmetry (S, s) maps the object onto itself, so the pose (R S, R s + t) renders the
    same image as (R, t); a model point X of the annotated pose is the point
    S^T (X − s) of the equivalent one. Which equivalent is chosen depends only on the
    allocentric rotation (:func:`~fastgdr.data.symmetry.canonical_symmetry_index`), so
    that views that look the same get the same targets: without this, the L1-optimal
    coordinate map of a symmetric object is the blur of its equivalents.

    Args:
        R: (3, 3) annotated rotation (model → camera).
        t: (3,) annotated translation in m.
        xyz: (H, W, 3) model coordinates (m) rendered at the annotated pose.
        assets: the object's symmetries (``sym_rots``, ``sym_trans`` in m).

    Returns:
        (R', t', xyz') of the chosen equivalent (xyz' is meaningful where xyz is).
    """
    rot_allo = egocentric_to_allocentric(torch.from_numpy(R), torch.from_numpy(t)).numpy()
    k = canonical_symmetry_index(rot_allo, assets.sym_rots)
    S, s = assets.sym_rots[k], assets.sym_trans[k]
    return R @ S, R @ s + t, (xyz - s) @ S


def clipped_box(bbox_xywh: Sequence[float], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre (2,) and size (w, h) (2,) in px of a box clipped to the image."""
    x, y, w, h = bbox_xywh
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(width)), min(y + h, float(height))
    size = np.array([max(x2 - x1, 1.0), max(y2 - y1, 1.0)])
    return np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0]), size


def dynamic_zoom_in(
    center: np.ndarray, size: np.ndarray, image_size: tuple[int, int], aug: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """GDRNPP's uniform DZI: jittered crop centre (px) and square crop side (px)."""
    scale = 1.0 + rng.uniform(-aug.dzi_scale_ratio, aug.dzi_scale_ratio)
    shift = rng.uniform(-aug.dzi_shift_ratio, aug.dzi_shift_ratio, size=2) * size
    crop_size = min(float(size.max()) * scale * aug.dzi_pad_scale, float(max(image_size)))
    return center + shift, crop_size


@lru_cache(maxsize=4)
def _coord_map_hw2(width: int, height: int) -> np.ndarray:
    return np.ascontiguousarray(coord_2d_map(width, height).transpose(1, 2, 0))


class GDRNTrainDataset(Dataset):
    """Training ROIs of a BOP dataset; ``dataset[k]`` is sample ``k`` of the global stream.

    Args:
        dataset: the BOP dataset.
        instances: from :func:`index_train_instances`.
        meshes: models (mm) by object id, for the online coordinate renders.
        assets: from :func:`build_object_assets`.
        augment: augmentation settings; None disables every augmentation (and DZI jitter).
        input_res: side of the image crop in px (GDRNPP: 256).
        output_res: side of the target maps in px (GDRNPP: 64, the head's output).
        channel_order: order of the returned crop (the model's input convention).
        min_mask_pixels: samples whose visible 64×64 mask is smaller are redrawn.
        seed: seeds the instance order and every augmentation.
        canonical_symmetry: give symmetric objects the pose targets (rotation, translation,
            coordinates, regions) of the symmetric equivalent chosen by the view (see
            :func:`canonical_pose_targets`) instead of the annotated one.
    """

    def __init__(
        self,
        dataset: BopDataset,
        instances: Sequence[TrainInstance],
        meshes: Mapping[int, Mesh],
        assets: Mapping[int, ObjectAssets],
        augment: AugmentConfig | None,
        input_res: int = 256,
        output_res: int = 64,
        channel_order: str = "BGR",
        min_mask_pixels: int = 32,
        seed: int = 0,
        canonical_symmetry: bool = False,
    ) -> None:
        self.dataset = dataset
        self.instances = list(instances)
        self.meshes = dict(meshes)
        self.assets = dict(assets)
        self.augment = augment
        self.input_res, self.output_res = input_res, output_res
        self.channel_order = channel_order
        self.min_mask_pixels = min_mask_pixels
        self.seed = seed
        self.canonical_symmetry = canonical_symmetry
        self.backgrounds = BackgroundSource(augment.background_dir if augment else None)
        self._renderer = None
        self._scenes: dict[tuple[str, int], object] = {}
        self._mask_cache: dict[tuple[TrainInstance, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._image_cache: dict[tuple[str, int, int], np.ndarray] = {}
        self._order_epoch = -1
        self._order = np.arange(len(self.instances))

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def renderer(self):
        """The process's own renderer, created on first use (once per worker)."""
        if self._renderer is None:
            from fastgdr.render import Renderer

            self._renderer = Renderer(self.meshes)
        return self._renderer

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_renderer"] = None  # GL contexts do not cross process boundaries
        state["_image_cache"], state["_mask_cache"] = {}, {}  # each process fills its own
        return state

    def instance_for(self, k: int) -> int:
        """Index of the instance that global sample ``k`` uses (a fresh shuffle per epoch)."""
        epoch, position = divmod(k, len(self.instances))
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.instances))
            self._order_epoch = epoch
        return int(self._order[position])

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1_000_003, k])
        index = self.instance_for(k)
        for _ in range(10):
            sample = self.make_sample(self.instances[index], rng)
            if sample["mask_visible"].sum() >= self.min_mask_pixels:
                return sample
            index = int(rng.integers(len(self.instances)))
        return sample

    def _scene(self, split: str, scene_id: int):
        key = (split, scene_id)
        if key not in self._scenes:
            self._scenes[key] = self.dataset.load_scene(split, scene_id)
        return self._scenes[key]

    def _image(self, inst: TrainInstance) -> np.ndarray:
        """The instance's image (BGR uint8), from a per-process cache of the last
        :data:`IMAGE_CACHE_SIZE` images read (decoding is a third of a sample's cost)."""
        key = (inst.split, inst.scene_id, inst.im_id)
        image = self._image_cache.pop(key, None)
        if image is None:
            image = self.dataset.read_image(*key)
            if len(self._image_cache) >= IMAGE_CACHE_SIZE:
                self._image_cache.pop(next(iter(self._image_cache)))
        self._image_cache[key] = image  # most recently used last
        return image

    def _mask(self, inst: TrainInstance, visible: bool) -> tuple[np.ndarray, np.ndarray]:
        """The instance's visible or amodal mask as its bounding rectangle (uint8, 0/1)
        and the rectangle's top-left corner (x, y) in the image.

        Masks are read once per process and kept as their bounding rectangles (a few kB
        each): decoding the full-size PNG files was half the cost of a sample."""
        key = (inst, visible)
        if key not in self._mask_cache:
            full = self.dataset.read_mask(inst.split, inst.scene_id, inst.im_id, inst.gt_index, visible=visible)
            x, y, w, h = cv2.boundingRect(full.view(np.uint8))
            rect = full[y : y + max(h, 1), x : x + max(w, 1)].astype(np.uint8)
            self._mask_cache[key] = (rect, np.array([x, y], dtype=np.float64))
        return self._mask_cache[key]

    def make_sample(self, inst: TrainInstance, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Crop, targets and augmentation for one instance."""
        ds, aug = self.dataset, self.augment
        scene = self._scene(inst.split, inst.scene_id)
        camera = scene.camera[inst.im_id]
        gt = scene.gt[inst.im_id][inst.gt_index]
        image = self._image(inst)
        height, width = image.shape[:2]
        visible_full, visible_origin = self._mask(inst, visible=True)
        amodal_full, amodal_origin = self._mask(inst, visible=False)

        box_center, box_size = clipped_box(inst.bbox_obj, width, height)
        if aug is None:
            center, crop_size = box_center, min(float(box_size.max()) * 1.5, float(max(width, height)))
        else:
            center, crop_size = dynamic_zoom_in(box_center, box_size, (width, height), aug, rng)
        resize_ratio = self.output_res / crop_size

        crop = crop_resize(image, center, crop_size, self.input_res)
        visible_in = crop_resize(visible_full, center - visible_origin, crop_size, self.input_res, cv2.INTER_NEAREST) > 0
        keep = visible_in
        if aug is not None and rng.random() < aug.background_prob:
            if aug.truncate_fg:
                keep = truncate_mask(visible_in, rng)
            crop = replace_background(crop, keep, self.backgrounds.sample(self.input_res, self.input_res, rng))
        if aug is not None and rng.random() < aug.color_prob:
            crop = color_augment(crop, rng)
        if self.channel_order == "RGB":
            crop = crop[..., ::-1]

        K_crop = zoom_camera_matrix(camera.K, center, crop_size, self.output_res)
        R_gt = np.asarray(gt.R, dtype=np.float64)
        t_mm = np.asarray(gt.t, dtype=np.float64)
        render = self.renderer.render([(inst.obj_id, R_gt, t_mm)], K_crop, self.output_res, self.output_res)
        on_object = render.instance >= 0
        keep_out = cv2.resize(keep.astype(np.uint8), (self.output_res, self.output_res), interpolation=cv2.INTER_NEAREST) > 0
        # GDRNPP: coordinates and regions are supervised on the visible mask before the
        # truncation cut, the visible-mask loss on the cut one.
        mask_xyz = crop_resize(visible_full, center - visible_origin, crop_size, self.output_res, cv2.INTER_NEAREST) > 0
        mask_xyz &= on_object
        visible = mask_xyz & keep_out
        amodal = crop_resize(amodal_full, center - amodal_origin, crop_size, self.output_res, cv2.INTER_NEAREST) > 0

        assets = self.assets[inst.obj_id]
        xyz_m = render.xyz.astype(np.float64) / 1000.0
        t_m = t_mm / 1000.0
        if self.canonical_symmetry and len(assets.sym_rots) > 1:
            R_gt, t_m, xyz_m = canonical_pose_targets(R_gt, t_m, xyz_m, assets)
        xyz_norm = np.where(on_object[..., None], xyz_m / assets.extents + 0.5, 0.0)
        regions = region_labels(xyz_m, on_object, assets.fps_points)

        origin_px = (camera.K @ t_m)[:2] / t_m[2]
        site = np.array([
            (origin_px[0] - center[0]) / box_size[0],
            (origin_px[1] - center[1]) / box_size[1],
            t_m[2] / resize_ratio,
        ])
        coord = crop_resize(_coord_map_hw2(width, height), center, crop_size, self.output_res)
        return {
            "image": np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / 255.0,
            "coord_2d": np.ascontiguousarray(coord.transpose(2, 0, 1), dtype=np.float32),
            "roi_class": np.int64(ds.label_of(inst.obj_id)),
            "obj_id": np.int64(inst.obj_id),
            "extent": assets.extents.astype(np.float32),
            "xyz": np.ascontiguousarray(xyz_norm.transpose(2, 0, 1), dtype=np.float32),
            "mask_visible": visible.astype(np.float32),
            "mask_xyz": mask_xyz.astype(np.float32),
            "mask_amodal": amodal.astype(np.float32),
            "region": regions,
            "rot": R_gt.astype(np.float32),
            "trans": t_m.astype(np.float32),
            "site": site.astype(np.float32),
            "roi_center": center.astype(np.float32),
            "roi_wh": box_size.astype(np.float32),
            "resize_ratio": np.float32(resize_ratio),
            "K": np.asarray(camera.K, dtype=np.float32),
        }


class TrainSampler(Sampler[int]):
    """Global sample counters for one process, from ``start_iter`` to ``total_iters``.

    Iteration ``i`` of the whole job uses samples ``i·B … i·B + B − 1`` (B = global batch);
    process ``rank`` of ``world_size`` takes its contiguous share of each batch.
    """

    def __init__(self, total_iters: int, global_batch: int, rank: int = 0, world_size: int = 1, start_iter: int = 0):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        self.total_iters, self.global_batch = total_iters, global_batch
        self.rank, self.world_size, self.start_iter = rank, world_size, start_iter
        self.local_batch = global_batch // world_size

    def __iter__(self) -> Iterator[int]:
        for iteration in range(self.start_iter, self.total_iters):
            first = iteration * self.global_batch + self.rank * self.local_batch
            yield from range(first, first + self.local_batch)

    def __len__(self) -> int:
        return (self.total_iters - self.start_iter) * self.local_batch


class CollateTargets:
    """Stacks samples into network inputs and :class:`GDRNTargets` (model points, symmetries)."""

    def __init__(self, assets: Mapping[int, ObjectAssets]) -> None:
        self.assets = dict(assets)

    def __call__(self, samples: Sequence[dict[str, np.ndarray]]) -> dict[str, object]:
        stack = lambda key: torch.from_numpy(np.stack([s[key] for s in samples]))
        obj_ids = [int(s["obj_id"]) for s in samples]
        max_sym = max(len(self.assets[o].sym_rots) for o in obj_ids)
        sym = np.tile(np.eye(3), (len(samples), max_sym, 1, 1))
        for i, o in enumerate(obj_ids):
            rots = self.assets[o].sym_rots
            sym[i, : len(rots)] = rots
        targets = GDRNTargets(
            xyz=stack("xyz"),
            mask_visible=stack("mask_visible"),
            mask_xyz=stack("mask_xyz"),
            mask_amodal=stack("mask_amodal"),
            region=stack("region"),
            rot=stack("rot"),
            site=stack("site"),
            roi_centers=stack("roi_center"),
            roi_whs=stack("roi_wh"),
            resize_ratios=stack("resize_ratio"),
            K=stack("K"),
            model_points=torch.from_numpy(np.stack([self.assets[o].model_points for o in obj_ids])).float(),
            sym_rots=torch.from_numpy(sym).float(),
        )
        return {
            "images": stack("image"),
            "roi_classes": stack("roi_class"),
            "roi_coord_2d": stack("coord_2d"),
            "roi_extents": stack("extent"),
            "obj_ids": torch.tensor(obj_ids),
            "trans": stack("trans"),
            "targets": targets,
        }
