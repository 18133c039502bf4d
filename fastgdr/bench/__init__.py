"""Latency benchmark of pose networks: one timing protocol, one CSV schema, the speed targets.

Every latency in fastgdr is taken with this package's protocol (:func:`measure_latency`,
the pruning report's included). Its modules, one job each:

===============  ====================================================================
module           its job
===============  ====================================================================
``timing``       the protocol: :func:`time_round_robin`, :func:`measure_latency`,
                 :class:`LatencyStats`, :func:`round_ratios`, the matmul reference
``machine``      device and dtype names resolved, the allocator setting
                 (:data:`MALLOC_ENV`), the environment a run records
``configs``      ``--configs`` entries → model configs, :func:`architecture_key`
``modules``      the timed modules (network, its parts, the per-image pipeline, depth
                 refinement on a rendered scene) and how they are built and compiled
``settings``     :class:`BenchSettings`: how a run times
``onnx_timing``  the exported network under ONNX Runtime, in a fresh process if needed
``rows``         :class:`BenchRow` (the CSV schema), the samples' keys, the rows as text
``targets``      the speed targets (:data:`TARGETS`), evaluated and as text
``results``      :class:`BenchResult` and its files ``latency.csv`` / ``latency.json``
``runner``       :func:`run_benchmark`: one run, from configurations to a result
``errors``       :class:`BenchmarkError`
===============  ====================================================================

Code outside the package imports the names below from ``fastgdr.bench``, not from its
modules.
"""

from fastgdr.bench.configs import architecture_key, config_label, load_bench_configs, resolve_config
from fastgdr.bench.errors import BenchmarkError
from fastgdr.bench.machine import (
    DTYPES,
    MALLOC_ENV,
    device_name,
    environment,
    malloc_tuned,
    resolve_device,
    resolve_dtype,
)
from fastgdr.bench.modules import (
    DEFAULT_MODULES,
    MODULE_CALLS,
    MODULE_COSTS,
    MODULES,
    NETWORK_INPUTS,
    PIPELINE_IMAGE_SIZE,
    REFINE_PREFIX,
    SCENE_DEPTH_MM,
    SCENE_K,
    compile_frozen,
    refinement_scene,
    scene_meshes,
)
from fastgdr.bench.onnx_timing import call_without_env, time_onnx
from fastgdr.bench.results import RESULTS_CSV, RESULTS_JSON, SCHEMA_VERSION, BenchResult, read_results, write_results
from fastgdr.bench.rows import CSV_FIELDS, BenchRow, format_rows, matmul_key, progress_line, row_key
from fastgdr.bench.runner import Measurement, run_benchmark
from fastgdr.bench.settings import BenchSettings
from fastgdr.bench.targets import (
    TARGETS,
    TARGETS_TITLE,
    RowRef,
    Target,
    TargetResult,
    evaluate_target,
    evaluate_targets,
    format_spread,
    format_targets,
)
from fastgdr.bench.timing import (
    MATMUL_SIZE,
    LatencyStats,
    matmul_call,
    matmul_flops,
    measure_latency,
    round_ratios,
    time_round_robin,
)

__all__ = [
    "CSV_FIELDS", "DEFAULT_MODULES", "DTYPES", "MALLOC_ENV", "MATMUL_SIZE", "MODULE_CALLS", "MODULE_COSTS",
    "MODULES", "NETWORK_INPUTS", "PIPELINE_IMAGE_SIZE", "REFINE_PREFIX", "RESULTS_CSV", "RESULTS_JSON",
    "SCENE_DEPTH_MM", "SCENE_K", "SCHEMA_VERSION", "TARGETS", "TARGETS_TITLE",
    "BenchResult", "BenchRow", "BenchSettings", "BenchmarkError", "LatencyStats", "Measurement", "RowRef",
    "Target", "TargetResult",
    "architecture_key", "call_without_env", "compile_frozen", "config_label", "device_name", "environment",
    "evaluate_target", "evaluate_targets", "format_rows", "format_spread", "format_targets", "load_bench_configs",
    "malloc_tuned", "matmul_call", "matmul_flops", "matmul_key", "measure_latency", "progress_line",
    "read_results", "refinement_scene", "resolve_config", "resolve_device", "resolve_dtype", "round_ratios",
    "row_key", "run_benchmark", "scene_meshes", "time_onnx", "time_round_robin", "write_results",
]
