"""The benchmark's row schema (:class:`BenchRow`, the CSV columns), the keys of its
per-round samples, and the rows' text forms.

GFLOPs count convolutions and matrix products (:func:`~fastgdr.profiling.model_costs`,
2 per multiply-accumulate) of the whole batch; the achieved GFLOP/s of a row is compared
with that of a 2048² fp32 matrix product on the same device
(:func:`~fastgdr.bench.timing.matmul_call`), timed as the last call of every round of the
same round-robin measurement.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class BenchRow:
    """One timed (configuration, module, runtime, ROI count); the CSV schema, in order.

    Times in ms over ``repeats`` timed calls of ``rois`` crops of ``input_res`` px;
    ``params`` the module's parameter count; ``gflops`` its GFLOPs for the whole batch;
    ``gflop_per_s`` = gflops / median; ``matmul_ratio`` = gflop_per_s / the GFLOP/s of a
    2048² fp32 matrix product on the same device. ``malloc_tuned``: the process ran with
    :data:`~fastgdr.bench.machine.MALLOC_ENV`.
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


def row_key(row: BenchRow) -> str:
    """``config/module/runtime/rois``: the key of a row's samples."""
    return f"{row.config}/{row.module}/{row.runtime}/{row.rois}"


def matmul_key(rois: int) -> str:
    """The samples key of the matmul timed in the round-robin at ``rois`` ROIs."""
    return f"matmul/{rois}"


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
