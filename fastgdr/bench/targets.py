"""The speed targets: what each compares, evaluated from the rows and their per-round
samples, and their text table.

**The targets** (:data:`TARGETS`) are fastgdr's own, stated as ratios; FAST GDRNPP's
published values are given beside them where the paper reports the same ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fastgdr.bench.rows import BenchRow, matmul_key, row_key
from fastgdr.bench.timing import matmul_flops, round_ratios


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
    interquartile range of the ``rounds`` per-round ratios
    (:func:`~fastgdr.bench.timing.round_ratios`): how far the ratio moves from one round to
    the next on this machine.
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
    own measurement (``matmul_gflop_per_s``); ``samples``
    (:attr:`~fastgdr.bench.results.BenchResult.samples`) add the per-round spread."""
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
