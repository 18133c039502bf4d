"""The pose predictor: the detections of one image → crops → network → decoded poses → refined poses.

Every detection is cropped around its box centre with side 1.5 × the longer box side
(clipped to the image size), all ROIs of an image go through the network in one batch
(:meth:`PosePredictor.predict`), and the pose is decoded by one of
:data:`~fastgdr.inference.decoding.DECODERS` (:mod:`fastgdr.inference.decoding`). With a
depth refiner (``refine="fast"`` or ``"icp"``, see :mod:`fastgdr.inference.refine`)
:meth:`PosePredictor.refine` then refines the poses with the image's sensor depth.
:func:`load_model` reads the network of a checkpoint; :func:`build_predictor` makes the
predictor for the objects of a BOP dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from fastgdr.checkpoint import load_weights, read_checkpoint
from fastgdr.config import Config, from_dict, load_config
from fastgdr.data.detections import Detection
from fastgdr.errors import CheckpointError, FastGDRError
from fastgdr.geometry import coord_2d_map, crop_resize, test_time_crop
from fastgdr.inference.decoding import DECODERS, decode_rois, mask_probability
from fastgdr.inference.refine import REFINERS, RefineStats, RefineTarget, refine_poses
from fastgdr.models import GDRNPoseNet, PoseNetOutput

if TYPE_CHECKING:
    from fastgdr.render import Renderer

PAD_SCALE = 1.5


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
        are counted in ``stats`` (see :func:`fastgdr.inference.refine.refine_poses`).

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
