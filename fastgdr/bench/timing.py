"""The timing protocol every latency in fastgdr is taken with, and the matmul reference.

**The protocol** (:func:`time_round_robin`, :func:`measure_latency`; every latency in fastgdr
is taken with it, the pruning report's included): the caller puts its models in eval mode;
the calls then run under ``torch.inference_mode``, first ``warmup`` untimed rounds, then
``repeats`` timed rounds in which all calls run round-robin, so that each of them sees the
same machine load and their ratios stay meaningful on a busy machine
(:func:`~fastgdr.bench.runner.run_benchmark` times all modules of all configurations, and the
matmul reference, in one such measurement per ROI count; the per-round ratios give each
target's spread). On the CPU every call is framed by two ``time.perf_counter`` stamps; on
CUDA by two CUDA events, with the device synchronized before the start and after the end.
:class:`LatencyStats` keeps the median, the 90th percentile, the interquartile range and
the standard deviation (ms).

The achieved GFLOP/s of a benchmark row is compared with that of a 2048² fp32 matrix
product on the same device (:func:`matmul_call`, :func:`matmul_flops`), timed as the last
call of every round of the same round-robin measurement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastgdr.bench.errors import BenchmarkError

MATMUL_SIZE = 2048


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
    every row's GFLOP/s is compared with; :func:`~fastgdr.bench.runner.run_benchmark` times
    it in each round-robin)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device) for _ in range(2))
    return partial(torch.mm, a, b)
