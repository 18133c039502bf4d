"""Latency benchmark of pose networks: one timing protocol, one CSV schema, the speed targets.

**The protocol** (:func:`time_round_robin`, :func:`measure_latency`; every latency in fastgdr
is taken with it, the pruning report's included): the caller puts its models in eval mode;
the calls then run under ``torch.inference_mode``, first ``warmup`` untimed rounds, then
``repeats`` timed rounds in which all calls run round-robin, so that each of them sees the
same machine load and their ratios stay meaningful on a busy machine (:func:`run_benchmark`
times all modules of all configurations, and the matmul reference, in one such measurement
per ROI count; the per-round ratios give each target's spread). On the CPU every call is framed
by two ``time.perf_counter`` stamps; on CUDA by two CUDA events, with the device
synchronized before the start and after the end. :class:`LatencyStats` keeps the median,
the 90th percentile, the interquartile range and the standard deviation (ms).

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
              :func:`fastgdr.refine.refine_poses` (``refine_fast``: GDRNPP's "fast"
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
compiles the hand-fused ones, so compiled runs leave them unfused unless asked. With
``onnx`` the exported
network (:func:`~fastgdr.export.export_onnx`, fp32) is also timed under ONNX Runtime on
the CPU, with the same inputs and protocol, as module ``network`` with runtime
``onnxruntime``.

glibc's default allocator slows batched PyTorch CPU timings 1.3–1.7× and makes them
noisy; benchmark processes should run with :data:`MALLOC_ENV` (``tools/bench_latency.py``
restarts itself with it). The same setting slows ONNX Runtime at batch 1, so where it is
set ONNX Runtime is timed in a fresh process without it.

GFLOPs count convolutions and matrix products (:func:`~fastgdr.profiling.model_costs`,
2 per multiply-accumulate) of the whole batch; the achieved GFLOP/s of a row is compared
with that of a 2048² fp32 matrix product on the same device (:func:`matmul_call`), timed as
the last call of every round of the same round-robin measurement.

**The targets** (:data:`TARGETS`) are fastgdr's own, stated as ratios; FAST GDRNPP's
published values are given beside them where the paper reports the same ratio.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fastgdr.config import ModelConfig, load_config, to_dict
from fastgdr.data.detections import Detection
from fastgdr.data.mesh import Mesh
from fastgdr.data.shapes import OBJECT_KINDS, make_objects
from fastgdr.errors import FastGDRError, MissingDependencyError
from fastgdr.eval.results import PoseEstimate, save_results
from fastgdr.export import OUTPUT_NAMES, export_onnx, onnx_session, random_roi_batch
from fastgdr.geometry import axis_angle_to_matrix, test_time_crop, zoom_camera_matrix
from fastgdr.inference import PosePredictor, RefineStats, RefineTarget, refine_poses
from fastgdr.models import GDRNPoseNet, decode_pose
from fastgdr.models.fusion import fuse_for_inference
from fastgdr.profiling import model_costs
from fastgdr.render import Renderer

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}
MATMUL_SIZE = 2048
PIPELINE_IMAGE_SIZE = (640, 480)  # (W, H) px of the synthetic image the pipeline crops from
# LINEMOD-like intrinsics (px) and object distance (mm) of the refinement scene
SCENE_K = np.array([[572.4, 0.0, 325.3], [0.0, 573.6, 242.0], [0.0, 0.0, 1.0]])
SCENE_DEPTH_MM = 700.0
RESULTS_CSV = "latency.csv"
RESULTS_JSON = "latency.json"
SCHEMA_VERSION = 3  # 2: the "fused" column; 3: per-round samples, the matmul timed in each round-robin


class BenchmarkError(FastGDRError):
    """A benchmark request that cannot be run (unknown config or dtype, no CUDA, bad file)."""


# --------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock time of one call over the timed repeats, in ms.

    Percentiles interpolate linearly between samples (numpy's default); ``iqr_ms`` is
    the 75th minus the 25th percentile, ``std_ms`` the population standard deviation.
    """

    median_ms: float
    p90_ms: float
    iqr_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    repeats: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        """Statistics of ``samples_ms`` (at least one sample, in ms)."""
        if len(samples_ms) == 0:
            raise ValueError("no timing samples")
        x = np.asarray(samples_ms, dtype=np.float64)
        q25, median, q75, p90 = np.percentile(x, [25, 50, 75, 90])
        return cls(float(median), float(p90), float(q75 - q25), float(x.std()), float(x.min()), float(x.max()), len(x))


def _time_call_cpu(call: Callable[[], Any], clock: Callable[[], float]) -> float:
    start = clock()
    call()
    return (clock() - start) * 1e3


def _time_call_cuda(call: Callable[[], Any], device: torch.device) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    call()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end)


def time_round_robin(
    calls: Sequence[Callable[[], Any]],
    device: torch.device | str,
    warmup: int = 3,
    repeats: int = 10,
    clock: Callable[[], float] = time.perf_counter,
    on_round: Callable[[], None] | None = None,
) -> list[list[float]]:
    """The protocol itself: each call's time (ms) in each of ``repeats`` timed rounds, after
    ``warmup`` untimed rounds; in every round the calls run one after the other, in order.

    Sample ``k`` of every call comes from the same round, so ``a[k] / b[k]`` is a ratio
    of two calls that ran back to back (:func:`round_ratios`). Runs under
    ``torch.inference_mode``; the models behind the calls must already be in eval mode.
    On CUDA each call is framed by CUDA events with the device synchronized before the
    start and after the end (``clock`` is then unused).

    Args:
        calls: zero-argument callables.
        device: where the calls run (``"cpu"`` or a CUDA device).
        warmup: untimed rounds over all calls first.
        repeats: timed rounds (≥ 1).
        clock: seconds counter for CPU timing (tests pass a fake one).
        on_round: called after every round, warm-up included (progress display).

    Returns:
        one list of ``repeats`` times (ms) per call, in order.
    """
    device = torch.device(device)
    if repeats < 1 or warmup < 0:
        raise BenchmarkError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    timer = partial(_time_call_cuda, device=device) if device.type == "cuda" else partial(_time_call_cpu, clock=clock)
    samples: list[list[float]] = [[] for _ in calls]
    with torch.inference_mode():
        for _ in range(warmup):
            for call in calls:
                call()
            if on_round is not None:
                on_round()
        for _ in range(repeats):
            for call, spent in zip(calls, samples):
                spent.append(timer(call))
            if on_round is not None:
                on_round()
    return samples


def measure_latency(
    calls: Sequence[Callable[[], Any]],
    device: torch.device | str,
    warmup: int = 3,
    repeats: int = 10,
    clock: Callable[[], float] = time.perf_counter,
    on_round: Callable[[], None] | None = None,
) -> list[LatencyStats]:
    """Time each call ``repeats`` times, round-robin, after ``warmup`` untimed rounds
    (:func:`time_round_robin`); one :class:`LatencyStats` per call, in order."""
    return [LatencyStats.from_samples(s) for s in time_round_robin(calls, device, warmup, repeats, clock, on_round)]


def round_ratios(numerator_ms: Sequence[float], denominator_ms: Sequence[float]) -> np.ndarray:
    """Per-round ratios ``numerator[k] / denominator[k]`` of two calls timed in the same
    rounds of :func:`time_round_robin` (a latency ratio; invert it for a speed ratio)."""
    if len(numerator_ms) != len(denominator_ms) or not len(numerator_ms):
        raise ValueError(f"paired samples needed, got {len(numerator_ms)} and {len(denominator_ms)}")
    return np.asarray(numerator_ms, dtype=np.float64) / np.asarray(denominator_ms, dtype=np.float64)


def matmul_flops(size: int = MATMUL_SIZE) -> float:
    """FLOPs of one ``size`` × ``size`` matrix product (2·n³)."""
    return 2.0 * size**3


def matmul_call(device: torch.device | str, size: int = MATMUL_SIZE) -> Callable[[], Any]:
    """A zero-argument ``size`` × ``size`` fp32 matrix product on ``device`` (the reference
    every row's GFLOP/s is compared with; :func:`run_benchmark` times it in each round-robin)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device) for _ in range(2))
    return partial(torch.mm, a, b)


# --------------------------------------------------------------------------- inputs


def resolve_dtype(name: str) -> torch.dtype:
    """``"fp32"``, ``"fp16"`` or ``"bf16"`` → the torch dtype."""
    if name not in DTYPES:
        raise BenchmarkError(f"unknown dtype {name!r}. Valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """A torch device that exists here (``cpu``, ``cuda``, ``cuda:1``)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchmarkError(f"unknown device {name!r}. Valid: cpu, cuda, cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(f"device {name!r} requested but this torch ({torch.__version__}) sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise BenchmarkError(f"device {name!r} is not supported. Valid: cpu, cuda, cuda:<index>")
    return device


def config_label(name: str) -> str:
    """The name rows carry for a ``--configs`` entry: the name itself or a file's stem."""
    return Path(name).stem if name.endswith((".yaml", ".yml")) or "/" in name else name


def resolve_config(name: str, config_dir: str | Path) -> Path:
    """``name`` → ``config_dir/<name>.yaml``; a path to an existing file is taken as is.

    Raises:
        BenchmarkError: naming the valid config names when neither exists.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or "/" in name:
        if not path.is_file():
            raise BenchmarkError(f"config file not found: {path}")
        return path
    candidate = Path(config_dir) / f"{name}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in Path(config_dir).glob("*.yaml"))
        raise BenchmarkError(
            f"unknown config {name!r}: there is no {candidate}. Valid names: {', '.join(names) or '(none)'}"
            " (or pass a path to a YAML file)"
        )
    return candidate


def load_bench_configs(
    names: Sequence[str], config_dir: str | Path, num_classes: int = 1, overrides: Sequence[str] = ()
) -> dict[str, tuple[Path, ModelConfig]]:
    """{label: (file, model config)} for ``--configs`` entries, in order.

    ``model.num_classes`` is set to ``num_classes``, then ``overrides`` (dotted, e.g.
    ``model.input_res=128``) apply to every config.
    """
    if not names:
        raise BenchmarkError("no configs to benchmark")
    configs: dict[str, tuple[Path, ModelConfig]] = {}
    for name in names:
        label = config_label(name)
        if label in configs:
            raise BenchmarkError(f"config {label!r} is listed twice")
        path = resolve_config(name, config_dir)
        configs[label] = (path, load_config(path, [f"model.num_classes={num_classes}", *overrides]).model)
    return configs


def architecture_key(cfg: ModelConfig) -> str:
    """What decides a network's cost, as a canonical JSON string.

    Backbone name and feature level, crop size, head and Patch-PnP widths, region count;
    not the class count, the weights or the input normalization. Two configs with the
    same key time the same (up to the out layer's class channels).
    """
    data = to_dict(cfg)
    key = {
        "backbone": [data["backbone"]["name"], data["backbone"]["out_index"]],
        "input_res": data["input_res"],
        "geo_head": data["geo_head"],
        "pnp": data["pnp"],
        "num_regions": data["num_regions"],
    }
    return json.dumps(key, sort_keys=True)


# --------------------------------------------------------------------------- timed modules


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


def _prepare_timed(
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


# --------------------------------------------------------------------------- ONNX Runtime


def time_onnx(
    path: str | Path, feeds: Mapping[int, Mapping[str, np.ndarray]], threads: int, warmup: int, repeats: int
) -> dict[int, LatencyStats]:
    """Latency of an exported network under ONNX Runtime (CPU), per ROI count.

    Args:
        path: the ``.onnx`` file of :func:`~fastgdr.export.export_onnx`.
        feeds: {ROI count: {input name: array}}.
        threads: ONNX Runtime intra-op threads.
    """
    session = onnx_session(path, threads)
    calls = [partial(session.run, list(OUTPUT_NAMES), dict(feed)) for feed in feeds.values()]
    return dict(zip(feeds, measure_latency(calls, "cpu", warmup, repeats)))


@contextmanager
def _environ_without(names: Sequence[str]) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def call_without_env(fn: Callable[..., Any], args: tuple, names: Sequence[str]) -> tuple[Any, bool]:
    """``fn(*args)``, in a fresh process without the environment variables ``names``
    when any of them is set here (``fn`` and ``args`` must pickle), else in this one.

    Returns:
        (result, ran_in_fresh_process).
    """
    if not any(n in os.environ for n in names):
        return fn(*args), False
    with _environ_without(names):
        pool = multiprocessing.get_context("spawn").Pool(1)  # the child copies the environment now
    with pool:
        return pool.apply(fn, args), True


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class BenchRow:
    """One timed (configuration, module, runtime, ROI count); the CSV schema, in order.

    Times in ms over ``repeats`` timed calls of ``rois`` crops of ``input_res`` px;
    ``params`` the module's parameter count; ``gflops`` its GFLOPs for the whole batch;
    ``gflop_per_s`` = gflops / median; ``matmul_ratio`` = gflop_per_s / the GFLOP/s of a
    2048² fp32 matrix product on the same device. ``malloc_tuned``: the process ran with
    :data:`MALLOC_ENV`.
    """

    config: str
    module: str
    runtime: str  # "torch" or "onnxruntime"
    device: str
    device_name: str
    dtype: str
    channels_last: bool
    compile: bool
    fused: bool  # ConvNeXt blocks fused for inference (fastgdr.models.fusion)
    rois: int
    input_res: int
    num_classes: int
    threads: int
    torch_version: str
    malloc_tuned: bool
    warmup: int
    repeats: int
    median_ms: float
    p90_ms: float
    iqr_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    params: int
    gflops: float
    gflop_per_s: float
    matmul_gflop_per_s: float
    matmul_ratio: float


CSV_FIELDS = tuple(f.name for f in dataclasses.fields(BenchRow))  # the CSV columns, in order


@dataclass(frozen=True)
class BenchSettings:
    """How to time: device, precision, memory format, compilation, ROI counts, repeats.

    Attributes:
        fuse: fuse ConvNeXt blocks for inference; None: fuse unless ``compile``.
        modules: which entries of :data:`MODULE_CALLS` to time (``network`` always);
            by default all but ``refine_icp``.
        onnx: also time the exported network under ONNX Runtime (CPU, fp32).
    """

    device: str = "cpu"
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    fuse: bool | None = None
    rois: tuple[int, ...] = (1, 8)
    warmup: int = 5
    repeats: int = 30
    onnx: bool = False
    modules: tuple[str, ...] = DEFAULT_MODULES

    def __post_init__(self) -> None:
        resolve_dtype(self.dtype)
        if not self.rois or any(r < 1 for r in self.rois):
            raise BenchmarkError(f"ROI counts must be >= 1, got {list(self.rois)}")
        if self.repeats < 1 or self.warmup < 0:
            raise BenchmarkError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        unknown = [m for m in self.modules if m not in MODULE_CALLS]
        if unknown:
            raise BenchmarkError(f"unknown module(s) {', '.join(unknown)}. Valid: {', '.join(MODULES)}")
        if "network" not in self.modules:
            raise BenchmarkError("the module list must contain 'network'")

    @property
    def fused(self) -> bool:
        """Whether the timed PyTorch networks have their ConvNeXt blocks fused."""
        return not self.compile if self.fuse is None else self.fuse

    @property
    def refine_methods(self) -> tuple[str, ...]:
        """The depth refiners to time (``refine_fast`` → ``"fast"``)."""
        return tuple(m[len(REFINE_PREFIX):] for m in self.modules if m.startswith(REFINE_PREFIX))


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (else the platform's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def malloc_tuned() -> bool:
    """Whether this process runs with :data:`MALLOC_ENV`."""
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())


def environment(device: torch.device) -> dict[str, Any]:
    """Device, thread count, versions and the machine's load when the benchmark started
    (1-minute load average; above about half the core count other work competes for the
    cores and multi-threaded timings stall)."""
    return {
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_name": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "malloc_tuned": malloc_tuned(),
    }


def _make_row(
    config: str, cfg: ModelConfig, module: str, runtime: str, fused: bool, device: torch.device,
    env: Mapping[str, Any], settings: BenchSettings, rois: int, stats: LatencyStats, params: int, gflops: float,
    malloc: bool, matmul_gflop_per_s: float,
) -> BenchRow:
    onnx = runtime == "onnxruntime"
    achieved = gflops / (stats.median_ms / 1e3) if stats.median_ms > 0 else 0.0
    return BenchRow(
        config=config, module=module, runtime=runtime, device="cpu" if onnx else str(device),
        device_name=env["cpu_name"] if onnx else env["device_name"], dtype="fp32" if onnx else settings.dtype,
        channels_last=False if onnx else settings.channels_last, compile=False if onnx else settings.compile,
        fused=fused, rois=rois, input_res=cfg.input_res, num_classes=cfg.num_classes, threads=env["threads"],
        torch_version=env["torch_version"], malloc_tuned=malloc, warmup=settings.warmup, repeats=stats.repeats,
        median_ms=stats.median_ms, p90_ms=stats.p90_ms, iqr_ms=stats.iqr_ms, std_ms=stats.std_ms,
        min_ms=stats.min_ms, max_ms=stats.max_ms, params=params, gflops=gflops, gflop_per_s=achieved,
        matmul_gflop_per_s=matmul_gflop_per_s,
        matmul_ratio=achieved / matmul_gflop_per_s if matmul_gflop_per_s > 0 else float("nan"),
    )


@contextmanager
def _closing(renderer: Renderer | None) -> Iterator[None]:
    try:
        yield
    finally:
        if renderer is not None:
            renderer.close()


@dataclass
class _PreparedConfig:
    """A configuration's network (random weights; fused and cast as the settings ask), its
    costs and inputs per ROI count, and its ONNX file."""

    label: str
    cfg: ModelConfig
    model: GDRNPoseNet
    costs: dict[int, dict[str, Any]]  # ROI count → profiling.model_costs entry name → cost
    inputs: dict[int, dict[str, torch.Tensor]]
    onnx_path: Path | None
    fused: bool  # ConvNeXt blocks were fused (False when asked but the backbone has none)

    def cost(self, module: str, rois: int) -> tuple[int, float]:
        """(parameters, GFLOPs of the batch) of a timed module."""
        name = MODULE_COSTS[module]
        return (self.costs[rois][name].params, self.costs[rois][name].gflops) if name else (0, 0.0)


def _prepare_config(label: str, cfg: ModelConfig, settings: BenchSettings, tmp: Path) -> _PreparedConfig:
    device = resolve_device(settings.device)
    model = GDRNPoseNet.from_config(cfg).to(device).eval()
    costs = {rois: {c.name: c for c in model_costs(model, rois, cfg.input_res)} for rois in settings.rois}
    inputs = {rois: random_roi_batch(model, rois, cfg.input_res, seed=rois) for rois in settings.rois}
    onnx_path = export_onnx(model, tmp / f"{label}.onnx", cfg.input_res) if settings.onnx else None
    # in fp32, before any cast; the ONNX graph keeps timm's blocks (ORT runs them faster)
    fused = settings.fused and fuse_for_inference(model) > 0
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(dtype=DTYPES[settings.dtype], memory_format=memory_format)
    return _PreparedConfig(label, cfg, model, costs, inputs, onnx_path, fused)


@dataclass
class Measurement:
    """What one round-robin measurement (all modules of all configurations at one ROI
    count, plus the 2048² matmul) gave: the rows, every call's per-round samples (ms,
    keyed by :func:`row_key`) and the matmul's statistics and GFLOP/s in those rounds."""

    rows: list[BenchRow]
    samples: dict[str, list[float]]
    matmul: LatencyStats
    matmul_gflop_per_s: float
    matmul_samples: list[float]


def row_key(row: BenchRow) -> str:
    """``config/module/runtime/rois``: the key of a row's samples."""
    return f"{row.config}/{row.module}/{row.runtime}/{row.rois}"


def _time_configs(
    prepared: Sequence[_PreparedConfig], rois: int, settings: BenchSettings, row: Callable[..., BenchRow], tmp: Path,
    scene: tuple[Renderer, Mapping[int, Mesh]] | None, on_round: Callable[[], None] | None,
) -> Measurement:
    """Every module of every configuration at ``rois`` ROIs and the 2048² fp32 matmul
    (last in each round) in one round-robin measurement."""
    device = resolve_device(settings.device)
    calls, names = [], []
    for p in prepared:
        folder = tmp / p.label
        folder.mkdir(exist_ok=True)
        timed = _prepare_timed(p.model, p.inputs[rois], p.cfg.input_res, settings, folder, scene)
        calls += [MODULE_CALLS[m](timed) for m in settings.modules]
        names += [(p, m) for m in settings.modules]
    if settings.compile:
        compile_frozen(calls)
    samples = time_round_robin([*calls, matmul_call(device)], device, settings.warmup, settings.repeats,
                               on_round=on_round)
    matmul_samples = samples.pop()
    matmul = LatencyStats.from_samples(matmul_samples)
    matmul_gflop_per_s = matmul_flops() / 1e9 / (matmul.median_ms / 1e3)
    rows = [
        row(p.label, p.cfg, module=m, runtime="torch", fused=p.fused, rois=rois, stats=LatencyStats.from_samples(st),
            params=p.cost(m, rois)[0], gflops=p.cost(m, rois)[1], malloc=malloc_tuned(),
            matmul_gflop_per_s=matmul_gflop_per_s)
        for (p, m), st in zip(names, samples)
    ]
    return Measurement(rows, {row_key(r): st for r, st in zip(rows, samples)}, matmul, matmul_gflop_per_s,
                       matmul_samples)


def _time_onnx_rows(
    p: _PreparedConfig, settings: BenchSettings, threads: int, row: Callable[..., BenchRow],
    matmul_gflop_per_s: Mapping[int, float],
) -> list[BenchRow]:
    """The exported network of ``p`` under ONNX Runtime at every ROI count (a fresh process
    without :data:`MALLOC_ENV` when that is set here). Timed apart from the round-robin:
    their matmul ratio is against the matmul of the PyTorch measurement at the same ROI
    count, and they have no per-round pairing with other rows."""
    feeds = {r: {k: v.detach().cpu().numpy() for k, v in p.inputs[r].items()} for r in settings.rois}
    stats, fresh = call_without_env(
        time_onnx, (p.onnx_path, feeds, threads, settings.warmup, settings.repeats), tuple(MALLOC_ENV)
    )
    return [
        row(p.label, p.cfg, module="network", runtime="onnxruntime", fused=False, rois=r, stats=stats[r],
            params=p.cost("network", r)[0], gflops=p.cost("network", r)[1], malloc=malloc_tuned() and not fresh,
            matmul_gflop_per_s=matmul_gflop_per_s[r])
        for r in settings.rois
    ]


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class RowRef:
    """Which row (and which value of it) a target reads; ``config`` is a row label."""

    config: str
    module: str = "network"
    runtime: str = "torch"
    value: str = "median_ms"


@dataclass(frozen=True)
class Target:
    """``numerator / denominator`` (denominator None: the matmul GFLOP/s) against ``limit``.

    Numerator and denominator rows must share ROI count, device and dtype. ``rois``
    None evaluates the target at every measured ROI count. ``reference`` is what FAST
    GDRNPP itself reports for the same ratio, where it does (the limits are fastgdr's).
    """

    key: str
    description: str
    numerator: RowRef
    denominator: RowRef | None
    limit: float
    at_least: bool = False
    rois: int | None = None
    reference: str = ""


# fastgdr's own speed targets (the project's, not FAST GDRNPP's), stated as ratios so that
# they hold on any machine. FAST GDRNPP's published values, where it gives the same ratio,
# are in ``reference``: its P28 runs at 0.175 × BM on an A100 (Figure 1, 7-dataset mean)
# and its geometric head at D=28 at 1.89 / 3.8 ms ≈ 0.50 of the unpruned head (§4.5).
TARGETS = (
    Target("p28_vs_bm", "P28 network / BM network latency", RowRef("p28"), RowRef("bm"), 0.10, rois=1,
           reference="0.175 (A100, 7-dataset mean)"),
    Target("geo_head_p28_vs_p", "geometric head D=28 / unpruned (P28 vs P)", RowRef("p28", "geo_head"),
           RowRef("p", "geo_head"), 0.08, reference="1.89 / 3.8 ms ≈ 0.50 (A100, LM-O)"),
    Target("geo_head_n28_vs_n", "geometric head D=28 / unpruned (N28 vs N)", RowRef("n28", "geo_head"),
           RowRef("n", "geo_head"), 0.08, reference="1.89 / 3.8 ms ≈ 0.50 (A100, LM-O)"),
    Target("p28_matmul", "P28 network GFLOP/s / 2048² fp32 matmul GFLOP/s", RowRef("p28", value="gflop_per_s"),
           None, 0.6, at_least=True),
    Target("p28_onnx", "P28 ONNX Runtime / eager latency", RowRef("p28", runtime="onnxruntime"), RowRef("p28"), 0.65),
    Target("p28_pipeline", "P28 per-image pipeline / network (≤ 1.10: adds ≤ 10 %)", RowRef("p28", "pipeline"),
           RowRef("p28"), 1.10),
)


@dataclass(frozen=True)
class TargetResult:
    """A target at one ROI count; ``measured``/``met`` are None when rows are missing.

    ``measured`` is the ratio of the two rows' values (medians over the rounds). Where
    both rows were timed in the same round-robin rounds, ``round_q25``–``round_q75`` is the
    interquartile range of the ``rounds`` per-round ratios (:func:`round_ratios`): how far
    the ratio moves from one round to the next on this machine.
    """

    key: str
    description: str
    rois: int | None
    measured: float | None
    limit: float
    at_least: bool
    met: bool | None
    note: str = ""
    round_q25: float | None = None
    round_q75: float | None = None
    rounds: int = 0
    reference: str = ""


def _select(rows: Sequence[BenchRow], ref: RowRef) -> list[BenchRow]:
    return [r for r in rows if r.config.lower() == ref.config and r.module == ref.module and r.runtime == ref.runtime]


def matmul_key(rois: int) -> str:
    """The samples key of the matmul timed in the round-robin at ``rois`` ROIs."""
    return f"matmul/{rois}"


def _round_values(row: BenchRow, value: str, samples: Mapping[str, Sequence[float]]) -> np.ndarray | None:
    """The row's ``value`` (``median_ms`` → times, ``gflop_per_s`` → GFLOP/s) in each round."""
    times = samples.get(row_key(row))
    if times is None or value not in ("median_ms", "gflop_per_s"):
        return None
    times = np.asarray(times, dtype=np.float64)
    return times if value == "median_ms" else row.gflops / (times / 1e3)


def _round_spread(
    target: Target, num: BenchRow, den: BenchRow | None, samples: Mapping[str, Sequence[float]]
) -> tuple[float | None, float | None, int]:
    """IQR of the per-round ratios, when numerator and denominator ran in the same rounds."""
    if num.runtime != "torch" or (den is not None and den.runtime != "torch"):
        return None, None, 0  # ONNX Runtime is timed in its own process, not round-robin
    top = _round_values(num, target.numerator.value, samples)
    if den is None:
        matmul_ms = samples.get(matmul_key(num.rois))
        bottom = None if matmul_ms is None else matmul_flops() / 1e9 / (np.asarray(matmul_ms, dtype=np.float64) / 1e3)
    else:
        bottom = _round_values(den, target.denominator.value, samples)
    if top is None or bottom is None or len(top) != len(bottom) or not len(top):
        return None, None, 0
    q25, q75 = np.percentile(round_ratios(top, bottom), [25, 75])
    return float(q25), float(q75), len(top)


def evaluate_target(
    target: Target, rows: Sequence[BenchRow], samples: Mapping[str, Sequence[float]] | None = None
) -> list[TargetResult]:
    """The target at each ROI count where its rows were measured (one "not measured"
    result otherwise). A matmul ratio divides by the matmul GFLOP/s of the numerator row's
    own measurement (``matmul_gflop_per_s``); ``samples`` (:attr:`BenchResult.samples`)
    add the per-round spread."""
    samples = samples or {}
    results = []
    for num in _select(rows, target.numerator):
        if target.rois is not None and num.rois != target.rois:
            continue
        den_row = None
        if target.denominator is None:
            denominator = num.matmul_gflop_per_s if math.isfinite(num.matmul_gflop_per_s) else None
        else:
            same = [r for r in _select(rows, target.denominator)
                    if (r.rois, r.device, r.dtype) == (num.rois, num.device, num.dtype)]
            den_row = same[0] if same else None
            denominator = getattr(den_row, target.denominator.value) if den_row else None
        if not denominator:
            continue
        ratio = getattr(num, target.numerator.value) / denominator
        met = ratio >= target.limit if target.at_least else ratio <= target.limit
        note = f"{num.device} {num.dtype}" + (" fused" if num.fused else "") + (" compiled" if num.compile else "")
        q25, q75, rounds = _round_spread(target, num, den_row, samples)
        results.append(TargetResult(target.key, target.description, num.rois, ratio, target.limit, target.at_least,
                                    met, note, q25, q75, rounds, target.reference))
    if not results:
        refs = [target.numerator] + ([target.denominator] if target.denominator else [])
        needs = " and ".join(f"{r.config}/{r.module}/{r.runtime}" for r in refs)
        where = f" at {target.rois} ROI" if target.rois else ""
        results.append(TargetResult(target.key, target.description, target.rois, None, target.limit, target.at_least,
                                    None, f"not measured (needs rows {needs}{where} on one device and dtype)",
                                    reference=target.reference))
    return results


def evaluate_targets(rows: Sequence[BenchRow], samples: Mapping[str, Sequence[float]] | None = None) -> list[TargetResult]:
    """Every entry of :data:`TARGETS`, measured from ``rows`` (and their per-round ``samples``)."""
    return [result for target in TARGETS for result in evaluate_target(target, rows, samples)]


TARGETS_TITLE = ("fastgdr's speed targets (the project's own limits, as ratios measured on this machine; "
                 "FAST GDRNPP's published value beside them where it reports one)")


def format_spread(result: TargetResult) -> str:
    """``0.093–0.101 (IQR of 30 rounds)`` or ``–`` without per-round samples."""
    if result.round_q25 is None or result.round_q75 is None:
        return "–"
    return f"{result.round_q25:.3f}–{result.round_q75:.3f} (IQR of {result.rounds} rounds)"


def format_targets(results: Sequence[TargetResult]) -> str:
    """A text table: target, ROIs, measured ratio, its per-round spread, target ratio, met
    yes/no, FAST GDRNPP's value."""
    lines = [f"{'target':<58}{'ROIs':>5}{'measured':>10}  {'per-round spread':<30}{'target':>8}  met  FAST GDRNPP"]
    for r in results:
        limit = f"{'≥' if r.at_least else '≤'} {r.limit:.2f}"
        measured = "–" if r.measured is None else f"{r.measured:.3f}"
        met = "–" if r.met is None else ("yes" if r.met else "no")
        rois = "–" if r.rois is None else str(r.rois)
        extra = f"  {r.note}" if r.note else ""
        lines.append(f"{r.description:<58}{rois:>5}{measured:>10}  {format_spread(r):<30}{limit:>8}  {met:<4} "
                     f"{r.reference or '–'}{extra}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- results


@dataclass
class BenchResult:
    """Everything one benchmark run measured (what ``latency.json`` holds).

    ``matmul`` holds the 2048² fp32 matmul's size, dtype and device, ``by_rois`` (its
    statistics and GFLOP/s in the round-robin of each ROI count) and ``gflop_per_s`` (the
    median over those). ``samples`` are the per-round times (ms) of every PyTorch row
    (:func:`row_key`) and of the matmul (:func:`matmul_key`).
    """

    environment: dict[str, Any]
    settings: dict[str, Any]
    matmul: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    rows: list[BenchRow] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def matmul_gflop_per_s(self) -> float | None:
        return self.matmul.get("gflop_per_s")

    def targets(self) -> list[TargetResult]:
        return evaluate_targets(self.rows, self.samples)


def run_benchmark(
    configs: Mapping[str, tuple[Path, ModelConfig]],
    settings: BenchSettings,
    announce: Callable[[str], None] = lambda _: None,
    progress: bool = False,
) -> BenchResult:
    """Measure all configurations, and the 2048² fp32 matmul they are compared with,
    together at each ROI count.

    Every module of every configuration and the matmul are timed in one round-robin
    measurement per ROI count, so that the ratios between configurations (the speed
    targets) and against the matmul see the same machine state: on shared or
    frequency-boosting CPUs a network timed alone drifts by 20 % and more within a minute.
    ONNX Runtime follows per configuration.

    Args:
        configs: {label: (source file, model config)}, e.g. from :func:`load_bench_configs`.
        announce: receives a line per built configuration, per ROI count timed and, at the
            end, per configuration (its network latencies).
        progress: show a progress bar over the rounds of each measurement (stderr).
    """
    device = resolve_device(settings.device)
    env = environment(device)
    load, cores = env["load_average_1min"], env["cpu_count"]
    if load is not None and cores and load > 0.5 * cores:
        announce(f"warning: load average {load:.1f} on {cores} cores before starting: other work competes for the "
                 "cores, timings will be slow and noisy (fewer --threads are steadier)")
    result = BenchResult(
        environment=env,
        settings={**dataclasses.asdict(settings), "fused": settings.fused, "rois": list(settings.rois),
                  "modules": list(settings.modules)},
        matmul={"size": MATMUL_SIZE, "dtype": "fp32", "device": str(device), "by_rois": {}},
        configs={},
    )
    row = partial(_make_row, env=env, settings=settings, device=device)
    meshes = scene_meshes() if settings.refine_methods else {}
    renderer = Renderer(meshes) if meshes else None
    rows: list[BenchRow] = []
    matmul_by_rois: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="fastgdr_bench_") as tmp_dir, _closing(renderer):
        tmp = Path(tmp_dir)
        prepared = []
        for i, (label, (source, cfg)) in enumerate(configs.items(), start=1):
            prepared.append(_prepare_config(label, cfg, settings, tmp))
            result.configs[label] = {"source": str(source), "architecture": architecture_key(cfg),
                                     "model": to_dict(cfg)}
            params, gflops = prepared[-1].cost("network", settings.rois[0])
            announce(f"built [{i}/{len(configs)}] {label}: {params / 1e6:.1f} M params, "
                     f"{gflops / settings.rois[0]:.2f} GFLOPs per ROI" + (", exported to ONNX" if settings.onnx else ""))
        scene = (renderer, meshes) if renderer is not None else None
        for rois in settings.rois:
            start = time.perf_counter()
            calls = len(prepared) * len(settings.modules)
            with tqdm(total=settings.warmup + settings.repeats, desc=f"{rois} ROI{'s' if rois > 1 else ''}",
                      unit="round", leave=False, disable=not progress) as bar:
                measured = _time_configs(prepared, rois, settings, row, tmp, scene, on_round=bar.update)
            rows += measured.rows
            result.samples.update(measured.samples)
            result.samples[matmul_key(rois)] = measured.matmul_samples
            result.matmul["by_rois"][str(rois)] = {**dataclasses.asdict(measured.matmul),
                                                   "gflop_per_s": measured.matmul_gflop_per_s}
            matmul_by_rois[rois] = measured.matmul_gflop_per_s
            announce(f"timed {calls} modules and the {MATMUL_SIZE}² fp32 matmul at {rois} ROI{'s' if rois > 1 else ''} "
                     f"round-robin ({settings.warmup} + {settings.repeats} rounds) [{time.perf_counter() - start:.0f} s]; "
                     f"matmul {measured.matmul.median_ms:.2f} ms, {measured.matmul_gflop_per_s:.1f} GFLOP/s")
        for p in prepared:
            if p.onnx_path is not None:
                rows += _time_onnx_rows(p, settings, env["threads"], row, matmul_by_rois)
    result.matmul["gflop_per_s"] = float(np.median(list(matmul_by_rois.values())))
    order = {label: i for i, label in enumerate(configs)}
    result.rows = sorted(rows, key=lambda r: (order[r.config], r.runtime != "torch"))  # stable: ROIs, modules kept
    for i, label in enumerate(configs, start=1):
        announce(f"[{i}/{len(configs)}] {progress_line(label, [r for r in result.rows if r.config == label])}")
    return result


def progress_line(label: str, rows: Sequence[BenchRow]) -> str:
    """``p28 (17.8 M params): 1 ROI 25.1 ms (p90 26.0, ORT 17.2), 8 ROIs …`` from a config's rows."""
    network = [r for r in rows if r.module == "network" and r.runtime == "torch"]
    parts = []
    for r in network:
        ort = [o for o in rows if o.module == "network" and o.runtime == "onnxruntime" and o.rois == r.rois]
        extra = f", ORT {ort[0].median_ms:.1f}" if ort else ""
        parts.append(f"{r.rois} ROI{'s' if r.rois > 1 else ''} {r.median_ms:.1f} ms (p90 {r.p90_ms:.1f}{extra})")
    params = network[0].params / 1e6 if network else 0.0
    return f"{label} ({params:.1f} M params): network " + ", ".join(parts)


def format_rows(rows: Sequence[BenchRow]) -> str:
    """A text table of the rows: latency, spread, parameters, GFLOPs and GFLOP/s."""
    lines = [f"{'config':<10}{'module':<13}{'runtime':<12}{'ROIs':>5}{'median ms':>11}{'p90 ms':>9}{'IQR ms':>9}"
             f"{'params M':>10}{'GFLOPs':>9}{'GFLOP/s':>9}{'×matmul':>9}"]
    for r in rows:
        lines.append(
            f"{r.config:<10}{r.module:<13}{r.runtime:<12}{r.rois:>5}{r.median_ms:>11.2f}{r.p90_ms:>9.2f}"
            f"{r.iqr_ms:>9.2f}{r.params / 1e6:>10.3f}{r.gflops:>9.3f}{r.gflop_per_s:>9.1f}{r.matmul_ratio:>9.3f}"
        )
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(result: BenchResult, out: str | Path) -> tuple[Path, Path]:
    """Write ``OUT/latency.csv`` (the rows, :data:`CSV_FIELDS`) and ``OUT/latency.json``
    (environment, settings, matmul, configs, rows, per-round samples and the evaluated targets)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / RESULTS_CSV, out / RESULTS_JSON
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in result.rows)
    data = {
        "schema_version": SCHEMA_VERSION,
        "environment": result.environment,
        "settings": result.settings,
        "matmul": result.matmul,
        "configs": result.configs,
        "rows": [{k: _finite(v) for k, v in dataclasses.asdict(r).items()} for r in result.rows],
        "samples_ms": result.samples,
        "targets": [dataclasses.asdict(t) for t in result.targets()],
    }
    json_path.write_text(json.dumps(data, indent=2))
    return csv_path, json_path


# Columns newer than schema 1, with the value that files written before them imply.
_ADDED_COLUMNS = {"fused": "False"}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(BenchRow)}  # "str", "int", "float", "bool"


def _row_from_csv(path: Path, line: int, values: Mapping[str, str]) -> BenchRow:
    """A row of ``latency.csv`` (all strings) back as a typed :class:`BenchRow`."""
    parse: dict[str, Callable[[str], Any]] = {
        "str": str, "int": int, "float": float, "bool": lambda v: {"True": True, "False": False}[v],
    }
    typed = {}
    for name in CSV_FIELDS:
        value = values.get(name, _ADDED_COLUMNS.get(name))
        if value is None:
            raise BenchmarkError(f"{path}: line {line} lacks column {name!r}")
        try:
            typed[name] = parse[_FIELD_TYPES[name]](value)
        except (KeyError, ValueError):
            raise BenchmarkError(f"{path}: line {line}, column {name!r}: bad value {value!r}") from None
    return BenchRow(**typed)


def _read_csv(path: Path) -> BenchResult:
    with path.open(newline="") as f:
        rows = [_row_from_csv(path, i, values) for i, values in enumerate(csv.DictReader(f), start=2)]
    matmul = {"gflop_per_s": rows[0].matmul_gflop_per_s} if rows else {}
    return BenchResult({}, {}, matmul, {}, rows)


def read_results(path: str | Path) -> BenchResult:
    """Read a benchmark's ``latency.json``, the folder that holds it, or its ``latency.csv``.

    A CSV gives the rows only: no environment, settings or config architectures (the
    report then joins runs by name); the matmul GFLOP/s is taken from its rows.

    Raises:
        BenchmarkError: naming the file and what is missing or malformed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise BenchmarkError(f"benchmark results not found: {path} (written by tools/bench_latency.py)")
    if path.suffix == ".csv":
        return _read_csv(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    missing = [k for k in ("environment", "settings", "matmul", "configs", "rows") if k not in data]
    if missing:
        raise BenchmarkError(f"{path}: missing key(s) {', '.join(missing)}; is this a latency.json of tools/bench_latency.py?")
    rows = []
    for i, row in enumerate(data["rows"]):
        row = {**{k: _ADDED_COLUMNS[k] == "True" for k in _ADDED_COLUMNS}, **row}
        absent = [k for k in CSV_FIELDS if k not in row]
        if absent:
            raise BenchmarkError(f"{path}: rows[{i}] lacks {', '.join(absent)}")
        values = {k: (float("nan") if row[k] is None else row[k]) for k in CSV_FIELDS}
        rows.append(BenchRow(**values))
    samples = {k: [float(v) for v in values] for k, values in data.get("samples_ms", {}).items()}
    return BenchResult(data["environment"], data["settings"], data["matmul"], data["configs"], rows, samples)
