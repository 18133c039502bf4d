"""The machine a benchmark runs on: device and dtype names resolved, the allocator
setting, and the environment a run records.

glibc's default allocator slows batched PyTorch CPU timings 1.3–1.7× and makes them
noisy; benchmark processes should run with :data:`MALLOC_ENV` (``tools/bench_latency.py``
restarts itself with it). The same setting slows ONNX Runtime at batch 1, so where it is
set ONNX Runtime is timed in a fresh process without it (:mod:`fastgdr.bench.onnx_timing`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from fastgdr.bench.errors import BenchmarkError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}


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
