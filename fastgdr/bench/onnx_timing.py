"""ONNX Runtime timing of exported networks, in a fresh process where the allocator
setting would slow it.

With ``onnx`` the exported network (:func:`~fastgdr.export.export_onnx`, fp32) is also
timed under ONNX Runtime on the CPU, with the same inputs and protocol, as module
``network`` with runtime ``onnxruntime``. :data:`~fastgdr.bench.machine.MALLOC_ENV`
slows ONNX Runtime at batch 1, so where it is set ONNX Runtime is timed in a fresh process
without it (:func:`call_without_env`).
"""

from __future__ import annotations

import multiprocessing
import os
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from fastgdr.bench.timing import LatencyStats, measure_latency
from fastgdr.export import OUTPUT_NAMES, onnx_session


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
