"""Inference: from 2D detections to scored 6D poses, apart from training (:mod:`fastgdr.engine`).

The path of a test run (``tools/test.py``), one module per step, in order:

1. detections: :mod:`fastgdr.data.detections` reads them and
   :func:`~fastgdr.inference.dataset.usable_detections` keeps those of the images to process;
2. crop → network: :mod:`fastgdr.inference.predictor` (:class:`PosePredictor`: test-time
   crops of an image's detections, one network batch; :func:`load_model` and
   :func:`build_predictor` make it from a checkpoint);
3. decode: :mod:`fastgdr.inference.decoding` (network outputs → R, t by one of
   :data:`DECODERS`: Patch-PnP, EPnP-RANSAC, EPnP rotation + SITE translation);
4. refine (optional, with sensor depth): :mod:`fastgdr.inference.refine` (the refiners
   :data:`REFINERS`, GDRNPP's "fast" update and :func:`refine_poses`, the per-image driver),
   with :mod:`fastgdr.inference.icp` (point-to-plane ICP) and :mod:`fastgdr.inference.depth`
   (depth checks and the plausibility limits);
5. the whole dataset: :mod:`fastgdr.inference.dataset` (:func:`infer_dataset`: every image
   through steps 2–4, timed, as BOP pose estimates);
6. results CSV: :mod:`fastgdr.eval.results` (:class:`~fastgdr.eval.results.ResultsWriter`);
7. scores: :mod:`fastgdr.eval.bop19` (:func:`~fastgdr.eval.bop19.evaluate`).

The names below are re-exported from those modules.
"""

from fastgdr.inference.dataset import InferenceStats, images_to_process, infer_dataset, usable_detections
from fastgdr.inference.decoding import DECODERS, decode_rois, mask_probability, pnp_ransac_pose
from fastgdr.inference.depth import RefineLimits, check_depth, check_depth_scale, sanitize_depth
from fastgdr.inference.icp import (
    IcpResult,
    depth_points_and_normals,
    icp_refine,
    icp_refine_many,
    point_to_plane_icp,
)
from fastgdr.inference.predictor import (
    PAD_SCALE,
    PosePrediction,
    PosePredictor,
    RoiBatch,
    build_predictor,
    load_model,
)
from fastgdr.inference.refine import (
    REFINERS,
    RefineOutcome,
    RefineStats,
    RefineTarget,
    fast_refine,
    paste_mask,
    refine_poses,
)

__all__ = [
    "DECODERS",
    "PAD_SCALE",
    "REFINERS",
    "IcpResult",
    "InferenceStats",
    "PosePrediction",
    "PosePredictor",
    "RefineLimits",
    "RefineOutcome",
    "RefineStats",
    "RefineTarget",
    "RoiBatch",
    "build_predictor",
    "check_depth",
    "check_depth_scale",
    "decode_rois",
    "depth_points_and_normals",
    "fast_refine",
    "icp_refine",
    "icp_refine_many",
    "images_to_process",
    "infer_dataset",
    "load_model",
    "mask_probability",
    "paste_mask",
    "pnp_ransac_pose",
    "point_to_plane_icp",
    "refine_poses",
    "sanitize_depth",
    "usable_detections",
]
