"""Pose inference from 2D detections, as GDRNPP does it at test time.

Every detection is cropped around its box centre with side 1.5 × the longer box side
(clipped to the image size), all ROIs of an image go through the network in one batch,
and the pose is decoded by one of :data:`DECODERS`: from Patch-PnP's allocentric rot6d
and SITE translation (GDRNPP's), by EPnP-RANSAC from the predicted 2D–3D correspondences,
or with EPnP-RANSAC's rotation and Patch-PnP's translation. With a depth refiner (``refine="fast"`` or ``"icp"``, see :mod:`fastgdr.refine`) the poses are
then refined with the image's sensor depth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch

from fastgdr.checkpoint import load_weights, read_checkpoint
from fastgdr.config import Config, from_dict, load_config
from fastgdr.data.detections import Detection, DetectionReport, match_detections
from fastgdr.errors import CheckpointError, DatasetError, FastGDRError
from fastgdr.geometry import coord_2d_map, crop_resize, test_time_crop
from fastgdr.models import GDRNPoseNet, PoseNetOutput, decode_pose
from fastgdr.refine import REFINERS, RefineStats, RefineTarget, refine_poses

if TYPE_CHECKING:
    from fastgdr.render import Renderer

PAD_SCALE = 1.5

# Pose decoders: name → (rotation from EPnP-RANSAC, translation from EPnP-RANSAC).
DECODERS: dict[str, tuple[bool, bool]] = {
    "patchpnp": (False, False),  # GDRNPP: Patch-PnP's rot6d and SITE
    "epnp": (True, True),  # EPnP-RANSAC on the predicted correspondences
    "epnp-rot": (True, False),  # EPnP-RANSAC's rotation, Patch-PnP's SITE translation
}


def load_model(
    checkpoint: str | Path, config: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[GDRNPoseNet, Config]:
    """The network of a checkpoint, in eval mode, loaded strictly.

    fastgdr checkpoints carry their config (pruned widths included). An official GDRNPP
    checkpoint has none: pass ``config`` (e.g. configs/bm.yaml with model.num_classes).
    """
    state = read_checkpoint(checkpoint)
    if config is not None:
        cfg = load_config(config, overrides)
    elif isinstance(state.get("config"), dict):
        cfg = from_dict(Config, state["config"], source=f"{checkpoint} (embedded config)")
        if overrides:
            raise CheckpointError("overrides need --config (the embedded config is used as saved)")
    else:
        raise CheckpointError(
            f"{checkpoint} carries no config (an official GDRNPP checkpoint?): pass --config, "
            "e.g. configs/bm.yaml with model.num_classes=<objects>"
        )
    model = GDRNPoseNet.from_config(cfg.model, init_heads=False, read_pretrained=False)
    load_weights(model, state, strict=True, source=str(checkpoint))
    return model.eval(), cfg


@dataclass
class RoiBatch:
    """Network inputs for the detections of one image, plus what decoding needs."""

    images: torch.Tensor  # [B, 3, S, S] in [0, 1]
    classes: torch.Tensor  # [B]
    coord_2d: torch.Tensor  # [B, 2, s, s]
    extents: torch.Tensor  # [B, 3] m
    centers: torch.Tensor  # [B, 2] px
    whs: torch.Tensor  # [B, 2] px
    resize_ratios: torch.Tensor  # [B]


@dataclass
class PosePrediction:
    """The pose of one detection: R (3, 3) model→camera, t (3,) in mm."""

    detection: Detection
    R: np.ndarray
    t: np.ndarray


class PosePredictor:
    """Crops detections, runs the network on all ROIs of an image at once, decodes poses.

    Args:
        model: the pose network (eval mode).
        labels: obj_id → 0-based class index of the head.
        extents_mm: obj_id → bounding-box size (3,) in mm.
        input_res: crop side in px (256).
        channel_order: the model's input channel order (images are read BGR).
        device: where the network runs.
        decoder: how poses are read from the outputs, one of :data:`DECODERS`; where
            EPnP-RANSAC finds no solution, Patch-PnP's pose is kept.
        refine: depth refiner applied by :meth:`refine` ("none", "fast", "icp").
        renderer: renderer with the object meshes (mm); required unless refine is "none".
    """

    def __init__(
        self,
        model: GDRNPoseNet,
        labels: Mapping[int, int],
        extents_mm: Mapping[int, np.ndarray],
        input_res: int = 256,
        channel_order: str = "BGR",
        device: torch.device | str = "cpu",
        decoder: str = "patchpnp",
        refine: str = "none",
        renderer: Renderer | None = None,
    ) -> None:
        REFINERS.get(refine)  # an unknown name raises, listing the valid ones
        if decoder not in DECODERS:
            raise ValueError(f"unknown pose decoder {decoder!r}; valid: {', '.join(DECODERS)}")
        if refine != "none" and renderer is None:
            raise ValueError(f"depth refinement {refine!r} needs a renderer with the object meshes")
        self.model = model.to(device).eval()
        self.labels = dict(labels)
        self.extents_m = {k: np.asarray(v, dtype=np.float64) / 1000.0 for k, v in extents_mm.items()}
        self.input_res = input_res
        self.output_res = input_res // model.backbone_info.stride * 8
        self.channel_order = channel_order
        self.device = torch.device(device)
        self.decoder = decoder
        self.refine_method = refine
        self.renderer = renderer
        self._coord_maps: dict[tuple[int, int], np.ndarray] = {}

    def _coord_map(self, width: int, height: int) -> np.ndarray:
        if (width, height) not in self._coord_maps:
            self._coord_maps[(width, height)] = np.ascontiguousarray(coord_2d_map(width, height).transpose(1, 2, 0))
        return self._coord_maps[(width, height)]

    def prepare(self, image_bgr: np.ndarray, detections: Sequence[Detection]) -> RoiBatch:
        """Test-time crops (box centre, 1.5 × max side) of every detection."""
        height, width = image_bgr.shape[:2]
        image = image_bgr[..., ::-1] if self.channel_order == "RGB" else image_bgr
        crops, coords, centers, whs, ratios = [], [], [], [], []
        for det in detections:
            center, crop_size = test_time_crop(det.bbox, (width, height), PAD_SCALE)
            crops.append(crop_resize(image, center, crop_size, self.input_res))
            coords.append(crop_resize(self._coord_map(width, height), center, crop_size, self.output_res))
            centers.append(center)
            whs.append((max(det.bbox[2], 1.0), max(det.bbox[3], 1.0)))
            ratios.append(self.output_res / crop_size)
        to = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)
        return RoiBatch(
            images=to(np.stack(crops).transpose(0, 3, 1, 2)) / 255.0,
            classes=to([self.labels[d.obj_id] for d in detections], torch.long),
            coord_2d=to(np.stack(coords).transpose(0, 3, 1, 2)),
            extents=to([self.extents_m[d.obj_id] for d in detections]),
            centers=to(centers),
            whs=to(whs),
            resize_ratios=to(ratios),
        )

    @torch.inference_mode()
    def predict(
        self, image_bgr: np.ndarray, K: np.ndarray, detections: Sequence[Detection]
    ) -> tuple[list[PosePrediction], PoseNetOutput | None, RoiBatch | None]:
        """Poses of ``detections`` in one image (empty list when there are none)."""
        if not detections:
            return [], None, None
        batch = self.prepare(image_bgr, detections)
        out = self.model(batch.images, batch.classes, batch.coord_2d, batch.extents)
        extents = [self.extents_m[det.obj_id] for det in detections]
        R_np, t_np = decode_rois(out, batch, K, self.decoder, extents, image_bgr.shape[1], image_bgr.shape[0])
        return [PosePrediction(d, R_np[i], t_np[i]) for i, d in enumerate(detections)], out, batch

    @torch.inference_mode()
    def refine(
        self,
        poses: Sequence[PosePrediction],
        out: PoseNetOutput | None,
        batch: RoiBatch | None,
        K: np.ndarray,
        image_hw: tuple[int, int],
        depth_mm: np.ndarray | None,
        depth_scale: float | None,
        stats: RefineStats,
    ) -> list[PosePrediction]:
        """``poses`` (from :meth:`predict`) refined with the depth image by ``self.refine_method``.

        Unusable depth, missing support or a non-finite result keep the network pose and
        are counted in ``stats`` (see :func:`fastgdr.refine.refine_poses`).

        Args:
            poses, out, batch: what :meth:`predict` returned for the image.
            K: (3, 3) intrinsics in px.
            image_hw: (H, W) of the colour image.
            depth_mm: (H, W) sensor depth in mm (0 = missing), or None when there is none.
            depth_scale: the image's depth scale (mm per stored unit), checked only.
            stats: refinement counters and per-object times to update.
        """
        if self.refine_method == "none" or not poses:
            return list(poses)
        probabilities = mask_probability(out.visible_mask)[:, 0].float().cpu().numpy()
        xyz = out.xyz.float().cpu().numpy()
        centers = batch.centers.double().cpu().numpy()
        crop_sizes = (self.output_res / batch.resize_ratios.double()).cpu().numpy()
        targets = [
            RefineTarget(p.detection.obj_id, p.R, p.t, centers[i], float(crop_sizes[i]), xyz[i], probabilities[i],
                         box_size=max(p.detection.bbox[2], p.detection.bbox[3]))
            for i, p in enumerate(poses)
        ]
        refined = refine_poses(
            self.refine_method, targets, depth_mm, depth_scale, K, image_hw, self.renderer, stats, self.device
        )
        return [PosePrediction(p.detection, R, t) for p, (R, t) in zip(poses, refined)]


def decode_rois(
    out: PoseNetOutput, batch: RoiBatch, K: np.ndarray, decoder: str, extents_m: Sequence[np.ndarray], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Poses of a batch of ROIs by one of :data:`DECODERS`: R (B, 3, 3) and t (B, 3) in mm.

    Patch-PnP's rot6d and SITE are decoded first; the EPnP decoders then replace the
    rotation (``epnp-rot``) or the whole pose (``epnp``) of every ROI where EPnP-RANSAC
    finds a solution (:func:`pnp_ransac_pose`).

    Args:
        out, batch: the network outputs and inputs of the ROIs.
        K: (3, 3) intrinsics in px.
        extents_m: per ROI, the object's bounding-box size (3,) in m.
        width, height: image size in px.
    """
    K_t = torch.as_tensor(K, dtype=torch.float32, device=out.rot6d.device)
    R, t = decode_pose(out.rot6d, out.site, batch.centers, batch.whs, batch.resize_ratios, K_t)
    R_np = R.double().cpu().numpy()
    t_np = t.double().cpu().numpy() * 1000.0
    epnp_rotation, epnp_translation = DECODERS[decoder]
    if epnp_rotation or epnp_translation:
        for i, extent in enumerate(extents_m):
            solved = pnp_ransac_pose(out, batch, i, extent, K, width, height)
            if solved is not None:
                R_np[i] = solved[0]
                if epnp_translation:
                    t_np[i] = solved[1]
    return R_np, t_np


def build_predictor(
    model: GDRNPoseNet,
    cfg: Config,
    dataset,
    decoder: str = "patchpnp",
    refine: str = "none",
    device: torch.device | str = "cpu",
) -> PosePredictor:
    """The predictor of ``model`` (built from ``cfg``) for the objects of a BOP ``dataset``.

    Class labels follow the dataset's object order (all 0 for a class-agnostic head);
    extents come from models_info.json; refinement renders the meshes of ``models/``.

    Raises:
        FastGDRError: if a class-aware model predicts another number of classes than the
            dataset has objects.
    """
    if cfg.model.class_aware and model.num_classes != len(dataset.obj_ids):
        raise FastGDRError(
            f"the model predicts {model.num_classes} classes but {dataset.root} has {len(dataset.obj_ids)} objects"
        )
    labels = {obj_id: (dataset.label_of(obj_id) if cfg.model.class_aware else 0) for obj_id in dataset.obj_ids}
    extents = {obj_id: dataset.models_info[obj_id].extents for obj_id in dataset.obj_ids}
    renderer = None
    if refine != "none":
        from fastgdr.data.mesh import load_ply
        from fastgdr.render import Renderer

        renderer = Renderer({obj_id: load_ply(dataset.model_path(obj_id)) for obj_id in dataset.obj_ids})
    return PosePredictor(
        model, labels, extents, cfg.model.input_res, cfg.model.input.channel_order, device, decoder,
        refine=refine, renderer=renderer,
    )


def mask_probability(mask: torch.Tensor) -> torch.Tensor:
    """GDRNPP's mask probability for L1-regressed masks: per-ROI min-max normalization."""
    flat = mask.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-6)).view_as(mask)


def pnp_ransac_pose(
    out: PoseNetOutput, batch: RoiBatch, index: int, extent_m: np.ndarray, K: np.ndarray, width: int, height: int,
    mask_threshold: float = 0.5, reprojection_px: float = 3.0, iterations: int = 100,
) -> tuple[np.ndarray, np.ndarray] | None:
    """EPnP-RANSAC on predicted correspondences of ROI ``index`` (R, t in mm), or None.

    2D points are the image coordinates of the output pixels' centres: the crop of
    ``coord_2d`` holds pixel indices / (W, H), so c · (W, H) + 0.5 (the pixel convention of
    :mod:`fastgdr.render.renderer`, which the coordinate targets are rendered in); 3D points the
    de-normalized predicted coordinates; pixels with mask probability > 0.5 and a
    non-degenerate coordinate are used. None when fewer than 4 points or no solution.
    """
    prob = mask_probability(out.visible_mask[index : index + 1])[0, 0].cpu().numpy()
    xyz = ((out.xyz[index].cpu().numpy().transpose(1, 2, 0) - 0.5) * extent_m).reshape(-1, 3)
    uv = batch.coord_2d[index].cpu().numpy().transpose(1, 2, 0).reshape(-1, 2) * (width, height) + 0.5
    keep = (prob.reshape(-1) > mask_threshold) & np.all(np.abs(xyz) > 1e-4 * extent_m, axis=1)
    if keep.sum() < 4:
        return None
    ok, rvec, tvec, _ = cv2.solvePnPRansac(
        xyz[keep].astype(np.float64), uv[keep].astype(np.float64), np.asarray(K, np.float64), None,
        flags=cv2.SOLVEPNP_EPNP, reprojectionError=reprojection_px, iterationsCount=iterations,
    )
    if not ok:
        return None
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3) * 1000.0


def timed(fn, *args):
    """``(fn(*args), seconds)``, synchronizing CUDA before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


@dataclass
class InferenceStats:
    """Timing of an inference run (seconds, per image, detector time excluded).

    ``network_seconds`` covers crops, forward and decoding; ``refine_seconds`` the depth
    refinement of each image (empty when not refining); ``refine`` holds the refinement counters and
    per-object times (None when not refining); ``detections`` how the detections matched
    the images (what was dropped and why).
    """

    images: int
    estimates: int
    network_seconds: list[float]
    refine_seconds: list[float] = field(default_factory=list)
    refine: RefineStats | None = None
    detections: DetectionReport | None = None

    @property
    def mean_seconds(self) -> float:
        return float(np.mean(self.network_seconds)) if self.network_seconds else 0.0


def images_to_process(dataset, split: str) -> list[tuple[int, int]]:
    """(scene_id, im_id) of the test targets when the dataset has them, else every image."""
    if (dataset.root / "test_targets_bop19.json").exists() and split == getattr(dataset.card, "test_split", "test"):
        return sorted({(t.scene_id, t.im_id) for t in dataset.load_test_targets()})
    keys = []
    for scene_id in dataset.scene_ids(split):
        scene = dataset.load_scene(split, scene_id, require_gt=False)
        keys += [(scene_id, im_id) for im_id in sorted(scene.camera)]
    return keys


def usable_detections(
    detections: Mapping[tuple[int, int], Sequence[Detection]],
    dataset,
    split: str,
    obj_ids: Sequence[int],
    score_threshold: float = 0.0,
    source: str = "detections",
) -> tuple[dict[tuple[int, int], list[Detection]], DetectionReport]:
    """The detections of the images :func:`images_to_process` gives, of ``obj_ids``, with
    a finite score ≥ ``score_threshold`` (see :func:`~fastgdr.data.detections.match_detections`).

    Raises:
        DatasetError: when no detection is left (naming ``source`` and what was dropped):
            a run that would write no estimate is a mistake, e.g. the detections of another
            dataset or split.
    """
    keys = images_to_process(dataset, split)
    usable, report = match_detections(detections, keys, obj_ids, score_threshold)
    if report.matched == 0:
        raise DatasetError(
            f"{source}: no detection can be used for the {len(keys)} image(s) of split '{split}' "
            f"of {dataset.root} ({report.describe()}); detections of another dataset or split?"
        )
    return usable, report


def infer_dataset(
    predictor: PosePredictor,
    dataset,
    split: str,
    detections: Mapping[tuple[int, int], Sequence[Detection]],
    top_k_per_object: int | None,
    score_threshold: float = 0.0,
    progress=None,
    on_image: Callable[[list], None] | None = None,
) -> tuple[list, InferenceStats]:
    """Poses for every detection of every image to process, as BOP results.

    The per-image time written with each estimate is the network time of that image
    (crops, forward, decoding), plus the depth-refinement time of the image when the
    predictor refines, plus the detector's time from the detections file: the same value
    for all estimates of the image. When refining, each image's depth is read (reading
    is not timed, like the colour image); a missing or unreadable depth file leaves the
    image's poses unrefined and is counted in ``stats.refine``.

    Only usable detections are kept (:func:`usable_detections`: the dropped ones are
    counted in ``stats.detections``); none at all raises DatasetError before any image
    is processed.

    Args:
        progress: optional callable wrapping an iterable (e.g. tqdm).
        on_image: called with each image's estimates as soon as they exist (e.g.
            :meth:`fastgdr.eval.results.ResultsWriter.write`).
    """
    from fastgdr.data.detections import select_detections
    from fastgdr.eval.results import PoseEstimate

    keys = images_to_process(dataset, split)
    detections, detection_report = usable_detections(
        detections, dataset, split, list(predictor.labels), score_threshold
    )
    scenes: dict[int, object] = {}
    estimates, seconds, refine_seconds = [], [], []
    refining = predictor.refine_method != "none"
    refine_stats = RefineStats() if refining else None
    warmed_up = False
    for scene_id, im_id in progress(keys) if progress else keys:
        if scene_id not in scenes:
            scenes[scene_id] = dataset.load_scene(split, scene_id, require_gt=False)
        camera = scenes[scene_id].camera[im_id]
        dets = select_detections(detections.get((scene_id, im_id), []), top_k_per_object, score_threshold)
        image = dataset.read_image(split, scene_id, im_id)
        depth = _read_depth_or_none(dataset, split, scene_id, im_id, camera.depth_scale) if refining and dets else None
        refine_args = (camera.K, image.shape[:2], depth, camera.depth_scale)
        if dets and not warmed_up:  # first call pays one-off allocations; keep it out of the timings
            warm_up = predictor.predict(image, camera.K, dets)
            predictor.refine(*warm_up, *refine_args, RefineStats())  # GL context, framebuffers
            warmed_up = True
        (poses, out, batch), elapsed = timed(predictor.predict, image, camera.K, dets)
        seconds.append(elapsed)
        if refining:
            poses, refine_elapsed = timed(predictor.refine, poses, out, batch, *refine_args, refine_stats)
            refine_seconds.append(refine_elapsed)
            elapsed += refine_elapsed
        image_time = elapsed + max((d.time for d in dets), default=0.0)
        image_estimates = [
            PoseEstimate(scene_id, im_id, p.detection.obj_id, p.detection.score, p.R, p.t, image_time)
            for p in poses
        ]
        if on_image is not None:
            on_image(image_estimates)
        estimates += image_estimates
    return estimates, InferenceStats(
        len(keys), len(estimates), seconds, refine_seconds, refine_stats, detection_report
    )


def _read_depth_or_none(dataset, split: str, scene_id: int, im_id: int, depth_scale: float) -> np.ndarray | None:
    """The depth image in mm, or None when its file is missing or unreadable."""
    try:
        return dataset.read_depth(split, scene_id, im_id, depth_scale)
    except DatasetError:
        return None
