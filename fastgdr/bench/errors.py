"""The benchmark's error: a request that cannot be run."""

from __future__ import annotations

from fastgdr.errors import FastGDRError


class BenchmarkError(FastGDRError):
    """A benchmark request that cannot be run (unknown config or dtype, no CUDA, bad file)."""
