"""How a benchmark times: :class:`BenchSettings` (device, precision, memory format,
compilation, ROI counts, repeats, the modules to time)."""

from __future__ import annotations

from dataclasses import dataclass

from fastgdr.bench.errors import BenchmarkError
from fastgdr.bench.machine import resolve_dtype
from fastgdr.bench.modules import DEFAULT_MODULES, MODULE_CALLS, MODULES, REFINE_PREFIX


@dataclass(frozen=True)
class BenchSettings:
    """How to time: device, precision, memory format, compilation, ROI counts, repeats.

    Attributes:
        fuse: fuse ConvNeXt blocks for inference; None: fuse unless ``compile``.
        modules: which entries of :data:`~fastgdr.bench.modules.MODULE_CALLS` to time
            (``network`` always); by default all but ``refine_icp``.
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
