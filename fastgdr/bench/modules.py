"""The timed modules: what each module name calls, on which inputs, per configuration
and ROI count, including the per-image pipeline and the rendered refinement scene.

**What is timed** per configuration and ROI count B (random but realistic inputs from
:func:`~fastgdr.export.random_roi_batch`, crops of ``input_res`` px):

============  =====================================================================
module        the timed call
============  =====================================================================
``network``   crop batch in → poses out: ``model.forward`` and :func:`decode_pose`
``backbone``  ``model.extract_features`` (input normalization included)
``geo_head``  the geometric head on the backbone features
``pnp``       Patch-PnP on the head's class-selected outputs
``decode``    :func:`~fastgdr.models.decode_pose` alone (always fp32)
``pipeline``  what ``tools/test.py`` does per image around the network: test-time crops
              of B boxes from a 640 × 480 image, the network, decoding, copying the
              poses to the host and writing them as a BOP results CSV
``refine_*``  depth refinement of the B poses of one image by
              :func:`fastgdr.inference.refine.refine_poses` (``refine_fast``: GDRNPP's "fast"
              translation update, FAST GDRNPP's "-R"; ``refine_icp``: point-to-plane ICP)
============  =====================================================================

The refinement scene (:func:`refinement_scene`) is independent of the network: B
synthetic objects 700 mm away on a grid of a 640 × 480 view, rendered as the sensor depth;
each ROI gets its visible box's test-time crop, ideal network outputs there (rendered
coordinates and mask at the output resolution) and a start pose 3° and 20 mm off, so that
the refiner does the work it does on real data. Rendering needs moderngl over EGL.

Precision: ``dtype`` casts the weights and the float network inputs (fp32, fp16, bf16);
pose decoding always runs in fp32 on the network's outputs. ``channels_last`` converts
the model and the 4-D inputs. ``fuse`` (the default without ``compile``) replaces the
ConvNeXt blocks by their inference fusion (:mod:`fastgdr.models.fusion`, what
``tools/test.py`` runs); without it timm's reference blocks are timed. ``compile`` wraps
every timed callable in ``torch.compile`` and compiles it before the warm-up with
Inductor's weight freezing (:func:`compile_frozen`); Inductor fuses timm's blocks better than it
compiles the hand-fused ones, so compiled runs leave them unfused unless asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fastgdr.bench.errors import BenchmarkError
from fastgdr.bench.machine import DTYPES
from fastgdr.data.detections import Detection
from fastgdr.data.mesh import Mesh
from fastgdr.data.shapes import OBJECT_KINDS, make_objects
from fastgdr.errors import MissingDependencyError
from fastgdr.eval.results import PoseEstimate, save_results
from fastgdr.geometry import axis_angle_to_matrix, test_time_crop, zoom_camera_matrix
from fastgdr.inference import PosePredictor, RefineStats, RefineTarget, refine_poses
from fastgdr.models import GDRNPoseNet, decode_pose
from fastgdr.render import Renderer

if TYPE_CHECKING:
    from fastgdr.bench.settings import BenchSettings

PIPELINE_IMAGE_SIZE = (640, 480)  # (W, H) px of the synthetic image the pipeline crops from
# LINEMOD-like intrinsics (px) and object distance (mm) of the refinement scene
SCENE_K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
SCENE_DEPTH_MM = 700.0


@dataclass
class _Timed:
    """The callables the modules time (compiled or not) and their prepared inputs."""

    net: Callable[..., Any]
    backbone: Callable[..., Any]
    geo_head: Callable[..., Any]
    pnp: Callable[..., Any]
    decode: Callable[..., Any]
    inputs: dict[str, torch.Tensor]  # network inputs in the timed dtype / memory format
    poses: dict[str, torch.Tensor]  # fp32 decoding inputs: centers, whs, ratios, K
    features: torch.Tensor
    xyz: torch.Tensor
    region_prob: torch.Tensor
    rot6d: torch.Tensor
    site: torch.Tensor
    pipeline: Callable[[], Any] | None = None
    refine: dict[str, Callable[[], Any]] = field(default_factory=dict)  # method → call


def _network(t: _Timed) -> Any:
    i, p = t.inputs, t.poses
    out = t.net(i["images"], i["roi_classes"], i["roi_coord_2d"], i["roi_extents"])
    return t.decode(out.rot6d.float(), out.site.float(), p["roi_centers"], p["roi_whs"], p["resize_ratios"], p["K"])


MODULE_CALLS: dict[str, Callable[[_Timed], Callable[[], Any]]] = {
    "network": lambda t: partial(_network, t),
    "backbone": lambda t: partial(t.backbone, t.inputs["images"]),
    "geo_head": lambda t: partial(t.geo_head, t.features),
    "pnp": lambda t: partial(t.pnp, t.xyz, t.inputs["roi_coord_2d"], t.region_prob, t.inputs["roi_extents"]),
    "decode": lambda t: partial(
        t.decode, t.rot6d, t.site, t.poses["roi_centers"], t.poses["roi_whs"], t.poses["resize_ratios"], t.poses["K"]
    ),
    "pipeline": lambda t: t.pipeline,
    "refine_fast": lambda t: t.refine["fast"],
    "refine_icp": lambda t: t.refine["icp"],
}
# module → entry of profiling.model_costs whose parameters and GFLOPs it runs (None: none)
MODULE_COSTS: dict[str, str | None] = {
    "network": "total", "backbone": "backbone", "geo_head": "geo_head_net", "pnp": "pnp_net",
    "decode": None, "pipeline": "total", "refine_fast": None, "refine_icp": None,
}
MODULES = tuple(MODULE_CALLS)
DEFAULT_MODULES = tuple(m for m in MODULES if m != "refine_icp")
REFINE_PREFIX = "refine_"
NETWORK_INPUTS = ("images", "roi_classes", "roi_coord_2d", "roi_extents")


def _cast(tensor: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)
    if channels_last and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _pipeline_call(
    model: GDRNPoseNet, net: Callable[..., Any], inputs: Mapping[str, torch.Tensor], input_res: int,
    dtype: torch.dtype, channels_last: bool, csv_path: Path,
) -> Callable[[], Any]:
    """Crops → network → decoding → host → CSV for the boxes of ``inputs`` in one image."""
    width, height = PIPELINE_IMAGE_SIZE
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    centers, whs = inputs["roi_centers"].cpu().numpy(), inputs["roi_whs"].cpu().numpy()
    classes = inputs["roi_classes"].cpu().numpy()
    detections = [
        Detection(1, 1, int(c) + 1, 1.0, (float(x - w / 2), float(y - h / 2), float(w), float(h)))
        for c, (x, y), (w, h) in zip(classes, centers, whs)
    ]
    labels = {obj_id: obj_id - 1 for obj_id in range(1, model.num_classes + 1)}
    extents = {obj_id: np.full(3, 100.0) for obj_id in labels}
    device = next(model.parameters()).device
    predictor = PosePredictor(model, labels, extents, input_res, "BGR", device)
    K = inputs["K"][0].cpu().numpy()

    def call() -> None:
        batch = predictor.prepare(image, detections)
        cast = partial(_cast, dtype=dtype, channels_last=channels_last)
        out = net(cast(batch.images), batch.classes, cast(batch.coord_2d), cast(batch.extents))
        K_t = torch.as_tensor(K, dtype=torch.float32, device=device)
        R, t = decode_pose(out.rot6d.float(), out.site.float(), batch.centers, batch.whs, batch.resize_ratios, K_t)
        R_np, t_np = R.double().cpu().numpy(), t.double().cpu().numpy() * 1000.0
        save_results(csv_path, [PoseEstimate(1, 1, d.obj_id, d.score, R_np[i], t_np[i], 0.0) for i, d in enumerate(detections)])

    return call


def scene_meshes() -> dict[int, Mesh]:
    """One synthetic mesh (mm) of every kind, object ids 1, 2, …: the refinement scene's objects."""
    return {i + 1: obj.mesh for i, obj in enumerate(make_objects(len(OBJECT_KINDS), 0))}


def refinement_scene(
    renderer: Renderer, meshes: Mapping[int, Mesh], rois: int, out_res: int, seed: int = 0
) -> tuple[list[RefineTarget], np.ndarray]:
    """Refinement targets of ``rois`` objects in one 640 × 480 view and its depth image.

    Objects (cycling over ``meshes``, which ``renderer`` holds) sit on a grid, ``SCENE_DEPTH_MM`` away,
    randomly rotated; their joint rendering is the sensor depth (mm). Each target holds
    the test-time crop of the object's visible box, the rendered (ideal) normalized
    coordinates and mask at ``out_res`` px, and a start pose rotated by 3° and moved
    20 mm along the viewing ray.

    Returns:
        (targets, depth (H, W) float32 mm).
    """
    width, height = PIPELINE_IMAGE_SIZE
    rng = np.random.default_rng(seed)
    cols = math.ceil(math.sqrt(rois * width / height))
    rows = math.ceil(rois / cols)
    ids = sorted(meshes)
    objects = []
    for i in range(rois):
        u, v = (i % cols + 0.5) * width / cols, (i // cols + 0.5) * height / rows
        t = SCENE_DEPTH_MM * np.linalg.solve(SCENE_K, np.array([u, v, 1.0]))
        R = axis_angle_to_matrix(torch.as_tensor(rng.normal(size=3), dtype=torch.float64)).numpy()
        objects.append((ids[i % len(ids)], R, t))
    scene = renderer.render(objects, SCENE_K, width, height, with_xyz=False)
    tilt = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(3.0)], dtype=torch.float64)).numpy()
    targets = []
    for i, (obj_id, R, t) in enumerate(objects):
        ys, xs = np.nonzero(scene.instance == i)
        if len(xs) == 0:  # hidden behind others: the box of its projected centre
            u, v = (SCENE_K @ t)[:2] / t[2]
            xs, ys = np.array([u - 20.0, u + 20.0]), np.array([v - 20.0, v + 20.0])
        bbox = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        center, crop_size = test_time_crop(bbox, (width, height))
        crop = renderer.render([(obj_id, R, t)], zoom_camera_matrix(SCENE_K, center, crop_size, out_res), out_res, out_res)
        inside = crop.depth > 0
        xyz_norm = crop.xyz.transpose(2, 0, 1) / meshes[obj_id].extents[:, None, None] + 0.5
        targets.append(RefineTarget(obj_id, tilt @ R, t * (1.0 + 20.0 / np.linalg.norm(t)), center, crop_size,
                                    np.where(inside[None], xyz_norm, 0.0), inside.astype(np.float64)))
    return targets, scene.depth


def _refine_calls(
    methods: Sequence[str], renderer: Renderer, meshes: Mapping[int, Mesh], rois: int, out_res: int,
    device: torch.device,
) -> dict[str, Callable[[], Any]]:
    """{method: call of refine_poses on the :func:`refinement_scene` of ``rois`` objects}."""
    try:
        targets, depth = refinement_scene(renderer, meshes, rois, out_res)
    except MissingDependencyError as exc:
        raise BenchmarkError(f"{exc} Depth refinement is timed on rendered depth; leave the refine_* modules out "
                             "(--modules) to benchmark without it.") from None
    width, height = PIPELINE_IMAGE_SIZE
    return {
        method: partial(refine_poses, method, targets, depth, 1.0, SCENE_K, (height, width), renderer, RefineStats(),
                        device)
        for method in methods
    }


def prepare_timed(
    model: GDRNPoseNet, inputs: Mapping[str, torch.Tensor], input_res: int, settings: "BenchSettings", tmp: Path,
    scene: tuple[Renderer, Mapping[int, Mesh]] | None,
) -> _Timed:
    """Compile (if asked) and cast; run the network once for the module inputs; build
    the pipeline and refinement calls the settings ask for (``scene``: renderer, meshes)."""
    dtype = DTYPES[settings.dtype]
    wrap = torch.compile if settings.compile else (lambda fn: fn)
    net_inputs = {k: _cast(inputs[k], dtype, settings.channels_last) for k in NETWORK_INPUTS}
    poses = {k: v for k, v in inputs.items() if k not in NETWORK_INPUTS}
    with torch.inference_mode():
        out = model(*net_inputs.values())
    net = wrap(model)
    timed = _Timed(
        net=net,
        backbone=wrap(model.extract_features),
        geo_head=wrap(model.geo_head_net),
        pnp=wrap(model.pnp_net),
        decode=wrap(decode_pose),
        inputs=net_inputs,
        poses=poses,
        features=out.features,
        xyz=out.xyz,
        region_prob=torch.softmax(out.region[:, 1:], dim=1),
        rot6d=out.rot6d.float(),
        site=out.site.float(),
    )
    if "pipeline" in settings.modules:
        timed.pipeline = _pipeline_call(
            model, net, inputs, input_res, dtype, settings.channels_last, tmp / "pipeline_results.csv",
        )
    methods = settings.refine_methods
    if methods and scene is not None:
        rois, out_res = inputs["images"].shape[0], inputs["roi_coord_2d"].shape[-1]
        timed.refine = _refine_calls(methods, *scene, rois, out_res, inputs["images"].device)
    return timed


def compile_frozen(calls: Sequence[Callable[[], Any]]) -> None:
    """Run each call once under inference mode with Inductor's ``freezing`` on, so that
    the ``torch.compile``-d ones compile with the weights as constants (folded and
    pre-packed; the others just run once more). A recompilation later (a guard failing on
    new inputs) would compile without freezing: the benchmark's inputs never change.

    Passing ``options={"freezing": True}`` to ``torch.compile`` does not have this effect
    in torch 2.13: P28 at 1 ROI measured 36.8 ms that way, 26.6 ms this way, 45.8 ms
    eager, on the 2-core CPU."""
    from torch._inductor import config as inductor_config

    with inductor_config.patch(freezing=True), torch.inference_mode():
        for call in calls:
            call()
