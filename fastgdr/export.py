"""ONNX export of the whole pose network: a batch of ROI crops in, egocentric poses out.

:class:`ExportablePoseNet` puts the backbone, the geometric head, the class-aware channel
selection, Patch-PnP and the pose decoding (SITE → translation, allocentric →
egocentric) into one graph, so a deployment needs nothing but ONNX Runtime and the crop
preprocessing. Every input and output has a dynamic ROI batch axis (``"rois"``); the
crop size is fixed at export time. Pruned networks export like any other: their widths
live in the module itself.

The legacy TorchScript exporter is used (``dynamo=False``): it writes a clean opset-17
file and accepts a single example batch for the dynamic axis. Class-aware channels are
selected with ``gather``, never advanced indexing, so the selection stays one ONNX
``GatherElements`` per output.

Inputs (float32 unless stated; B ROIs, S crop side, s = S / stride · 8 output side):

====================  ============  ===============================================
name                  shape         meaning
====================  ============  ===============================================
``images``            [B, 3, S, S]  crops in [0, 1], the model's channel order (BGR)
``roi_classes``       [B] int64     0-based class of each ROI (any value if agnostic)
``roi_coord_2d``      [B, 2, s, s]  image coordinates u/W, v/H of the output pixels
``roi_extents``       [B, 3]        object bounding-box sizes in m
``roi_centers``       [B, 2]        detected box centres in px (original image)
``roi_whs``           [B, 2]        detected box widths and heights in px
``resize_ratios``     [B]           s / crop size in px (crop size = 1.5 · max(w, h))
``K``                 [B, 3, 3]     camera intrinsics in px of each ROI's image
====================  ============  ===============================================

Outputs: ``R`` [B, 3, 3] (model → camera, acts on column vectors), ``t`` [B, 3] in m,
``visible_mask`` [B, 1, s, s] raw mask values, ``xyz`` [B, 3, s, s] normalized object
coordinates and ``region`` [B, R + 1, s, s] region logits (channel 0 = background), the
dense outputs of each ROI's own class.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fastgdr._compat import import_optional
from fastgdr.errors import FastGDRError
from fastgdr.models import GDRNPoseNet, decode_pose, split_head_channels
from fastgdr.models.fusion import FusedConvNeXtBlock
from fastgdr.outputs import atomic_write

INPUT_NAMES = (
    "images",
    "roi_classes",
    "roi_coord_2d",
    "roi_extents",
    "roi_centers",
    "roi_whs",
    "resize_ratios",
    "K",
)
OUTPUT_NAMES = ("R", "t", "visible_mask", "xyz", "region")
POSE_OUTPUTS = ("R", "t")
BATCH_AXIS = "rois"


class ExportError(FastGDRError):
    """An export that cannot be done, or an exported graph that disagrees with eager PyTorch."""


def _gather_channel(values: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``values`` [B, …] at per-ROI position ``index`` [B] along ``dim``; ``dim`` becomes 1 wide."""
    shape = [1] * values.dim()
    shape[0] = -1
    expanded = list(values.shape)
    expanded[0] = -1
    expanded[dim] = 1
    return values.gather(dim, index.view(shape).expand(expanded))


def _channel_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(logits, dim=1)`` spelled out (max, exp, sum, divide).

    ONNX Runtime's Softmax over a non-last axis of a [B, R, s, s] map transposes around a
    last-axis kernel; the explicit form is four elementwise/reduce nodes it runs several
    times faster (2.3 of 33 ms of the P28 graph on a 2-core CPU).
    """
    exp = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return exp / exp.sum(dim=1, keepdim=True)


class ExportablePoseNet(nn.Module):
    """A :class:`~fastgdr.models.GDRNPoseNet` as one graph from ROI crops to poses.

    Computes exactly what ``model.forward`` followed by
    :func:`~fastgdr.models.decode_pose` computes, with the class-aware selection done by
    ``gather``. A class-agnostic head keeps the ``roi_classes`` input (it selects
    channel 0 for every ROI), so every exported file has the same eight inputs.

    Args:
        model: the pose network (shared, not copied).
    """

    def __init__(self, model: GDRNPoseNet) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        images: torch.Tensor,
        roi_classes: torch.Tensor,
        roi_coord_2d: torch.Tensor,
        roi_extents: torch.Tensor,
        roi_centers: torch.Tensor,
        roi_whs: torch.Tensor,
        resize_ratios: torch.Tensor,
        K: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs and outputs as in the module docstring, in :data:`INPUT_NAMES` /
        :data:`OUTPUT_NAMES` order: (R, t, visible_mask, xyz, region)."""
        net = self.model
        head = net.geo_head_net
        dense = split_head_channels(
            head.forward_raw(net.extract_features(images)), head.num_classes, head.num_regions
        )
        classes = roi_classes.long() if head.num_classes > 1 else torch.zeros_like(roi_classes).long()
        visible = _gather_channel(dense.visible_mask, classes, 1)
        xyz = _gather_channel(dense.xyz, classes, 2).squeeze(2)
        region = _gather_channel(dense.region, classes, 1).squeeze(1)
        rot6d, site = net.pnp_net(xyz, roi_coord_2d, _channel_softmax(region[:, 1:]), roi_extents)
        R, t = decode_pose(rot6d, site, roi_centers, roi_whs, resize_ratios, K)
        return R, t, visible, xyz, region


def output_resolution(model: GDRNPoseNet, input_res: int) -> int:
    """Side in px of the dense outputs (and of ``roi_coord_2d``) for ``input_res`` crops.

    Raises:
        ExportError: if ``input_res`` is not a positive multiple of the backbone stride.
    """
    stride = model.backbone_info.stride
    if input_res <= 0 or input_res % stride:
        raise ExportError(f"input_res must be a positive multiple of the backbone stride {stride}, got {input_res}")
    return input_res // stride * 8


def random_roi_batch(model: GDRNPoseNet, batch: int, input_res: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but realistic inputs of :class:`ExportablePoseNet`, on the model's device.

    Crops and coordinate maps uniform in [0, 1]; classes ``(offset + i) mod C`` for a
    random offset, so up to C ROIs all have different classes; extents 0.05–0.15 m; box
    centres inside a 640 × 480 image, sides 50–150 px; ``resize_ratios = s / (1.5 ·
    max(w, h))``; K with focal lengths 550–600 px and the principal point near the
    image centre.

    Returns:
        {input name: tensor}, keys in :data:`INPUT_NAMES` order.
    """
    out_res = output_resolution(model, input_res)
    g = torch.Generator().manual_seed(seed)
    uniform = lambda low, high, *shape: low + (high - low) * torch.rand(*shape, generator=g)
    whs = uniform(50.0, 150.0, batch, 2)
    K = torch.zeros(batch, 3, 3)
    K[:, 0, 0], K[:, 1, 1] = uniform(550.0, 600.0, batch), uniform(550.0, 600.0, batch)
    K[:, 0, 2], K[:, 1, 2] = uniform(310.0, 330.0, batch), uniform(230.0, 250.0, batch)
    K[:, 2, 2] = 1.0
    offset = int(torch.randint(0, model.num_classes, (1,), generator=g))
    inputs = {
        "images": torch.rand(batch, 3, input_res, input_res, generator=g),
        "roi_classes": (offset + torch.arange(batch)) % model.num_classes,
        "roi_coord_2d": torch.rand(batch, 2, out_res, out_res, generator=g),
        "roi_extents": uniform(0.05, 0.15, batch, 3),
        "roi_centers": torch.stack([uniform(75.0, 565.0, batch), uniform(75.0, 405.0, batch)], dim=1),
        "roi_whs": whs,
        "resize_ratios": out_res / (1.5 * whs.max(dim=1).values),
        "K": K,
    }
    device = next(model.parameters()).device
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def export_onnx(model: GDRNPoseNet, path: str | Path, input_res: int, batch: int = 2, opset: int = 17) -> Path:
    """Write the network as an ONNX file with a dynamic ROI batch axis.

    The model is traced in eval mode on ``batch`` random ROIs (:func:`random_roi_batch`)
    and put back in its previous mode. The graph is checked with ``onnx.checker`` and
    then written atomically (a failed export leaves an existing file as it was).

    Args:
        model: the pose network (pruned or not), on any device.
        path: the ``.onnx`` file to write (parent folders are created).
        input_res: crop side S in px, fixed in the graph.
        batch: ROIs in the tracing example (any size works at run time).
        opset: ONNX opset version.

    Returns:
        ``path``.

    Raises:
        ExportError: a bad ``input_res`` or ``batch``, or a graph without the expected inputs.
        MissingDependencyError: without the ``onnx`` package.
    """
    onnx = import_optional("onnx", extra="onnx", purpose="checking the exported ONNX graph")
    if any(isinstance(m, FusedConvNeXtBlock) for m in model.modules()):
        raise ExportError("export the network before fuse_for_inference: fused ConvNeXt blocks choose their "
                          "GRN path by batch size in Python, which tracing would freeze (ONNX Runtime also "
                          "runs timm's blocks faster)")
    if batch < 1:
        raise ExportError(f"the tracing batch must be at least 1, got {batch}")
    path = Path(path)
    inputs = random_roi_batch(model, batch, input_res)
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (opset 17, any example batch); its
            # deprecation notice and the tracer's notes on the constant shape checks in
            # fastgdr.geometry (trailing dimensions only) are expected.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            torch.onnx.export(
                ExportablePoseNet(model),
                tuple(inputs.values()),
                buffer,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: BATCH_AXIS} for name in INPUT_NAMES + OUTPUT_NAMES},
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    names = tuple(i.name for i in graph.graph.input)
    if names != INPUT_NAMES:
        raise ExportError(f"{path}: the exported graph has inputs {list(names)}, expected {list(INPUT_NAMES)}")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()), what="ONNX file")


def eager_outputs(model: GDRNPoseNet, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference: ``model.forward`` (advanced-indexing class selection) + ``decode_pose``."""
    with torch.inference_mode():
        out = model(inputs["images"], inputs["roi_classes"], inputs["roi_coord_2d"], inputs["roi_extents"])
        R, t = decode_pose(
            out.rot6d, out.site, inputs["roi_centers"], inputs["roi_whs"], inputs["resize_ratios"], inputs["K"]
        )
    return {"R": R, "t": t, "visible_mask": out.visible_mask, "xyz": out.xyz, "region": out.region}


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``path`` (``threads`` intra-op threads, default ORT's)."""
    ort = import_optional("onnxruntime", extra="onnx", purpose="running the exported ONNX graph")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Run an ONNX Runtime session on torch inputs; {output name: array}."""
    feed = {name: tensor.detach().cpu().numpy() for name, tensor in inputs.items()}
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feed)))


def onnx_differences(
    model: GDRNPoseNet, path: str | Path, batches: Sequence[int] = (1, 3), seed: int = 0
) -> dict[str, float]:
    """Max absolute difference per output between ONNX Runtime and eager PyTorch.

    Both run on the same :func:`random_roi_batch` for every batch size in ``batches``
    (seed ``seed + i`` for the i-th); the crop size is read from the file.

    Returns:
        {output name: max |ONNX − eager| over all batches}, in :data:`OUTPUT_NAMES` order
        (R dimensionless, t in m, dense outputs in their raw units).
    """
    session = onnx_session(path)
    input_res = session.get_inputs()[0].shape[-1]
    if not isinstance(input_res, int):
        raise ExportError(f"{path}: the crop size of input 'images' is not fixed: {session.get_inputs()[0].shape}")
    was_training = model.training
    model.eval()
    diffs = dict.fromkeys(OUTPUT_NAMES, 0.0)
    try:
        for i, batch in enumerate(batches):
            inputs = random_roi_batch(model, batch, input_res, seed + i)
            expected = eager_outputs(model, inputs)
            got = run_onnx(session, inputs)
            for name in OUTPUT_NAMES:
                want = expected[name].cpu().numpy()
                if got[name].shape != want.shape:
                    raise ExportError(
                        f"{path}: output '{name}' has shape {got[name].shape} at batch {batch}, eager gives {want.shape}"
                    )
                diffs[name] = max(diffs[name], float(np.abs(got[name] - want).max()))
    finally:
        model.train(was_training)
    return diffs


def check_onnx(model: GDRNPoseNet, path: str | Path, batches: Sequence[int] = (1, 3), seed: int = 0) -> float:
    """Max absolute ONNX Runtime − eager difference over all outputs (R, t, dense); see
    :func:`onnx_differences`."""
    return max(onnx_differences(model, path, batches, seed).values())


def assert_onnx_close(diffs: dict[str, float], atol: float = 1e-3, dense_atol: float = 1e-2) -> None:
    """Raise unless R and t agree within ``atol`` and the dense outputs within ``dense_atol``.

    Raises:
        ExportError: naming every output over its tolerance.
    """
    over = [
        f"{name} {diff:.3g} > {atol if name in POSE_OUTPUTS else dense_atol:g}"
        for name, diff in diffs.items()
        if not diff <= (atol if name in POSE_OUTPUTS else dense_atol)
    ]
    if over:
        raise ExportError("ONNX Runtime and eager PyTorch disagree (max |Δ|): " + ", ".join(over))
