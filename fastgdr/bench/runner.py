"""The benchmark run (:func:`run_benchmark`): every configuration built, all their
modules and the matmul reference timed round-robin at each ROI count, then ONNX Runtime,
and the rows gathered into a :class:`~fastgdr.bench.results.BenchResult`."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fastgdr.bench.configs import architecture_key
from fastgdr.bench.machine import DTYPES, MALLOC_ENV, environment, malloc_tuned, resolve_device
from fastgdr.bench.modules import MODULE_CALLS, MODULE_COSTS, compile_frozen, prepare_timed, scene_meshes
from fastgdr.bench.onnx_timing import call_without_env, time_onnx
from fastgdr.bench.results import BenchResult
from fastgdr.bench.rows import BenchRow, matmul_key, progress_line, row_key
from fastgdr.bench.settings import BenchSettings
from fastgdr.bench.timing import MATMUL_SIZE, LatencyStats, matmul_call, matmul_flops, time_round_robin
from fastgdr.config import ModelConfig, to_dict
from fastgdr.data.mesh import Mesh
from fastgdr.export import export_onnx, random_roi_batch
from fastgdr.models import GDRNPoseNet
from fastgdr.models.fusion import fuse_for_inference
from fastgdr.profiling import model_costs
from fastgdr.render import Renderer


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


def prepare_config(label: str, cfg: ModelConfig, settings: BenchSettings, tmp: Path) -> _PreparedConfig:
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
    keyed by :func:`~fastgdr.bench.rows.row_key`) and the matmul's statistics and GFLOP/s
    in those rounds."""

    rows: list[BenchRow]
    samples: dict[str, list[float]]
    matmul: LatencyStats
    matmul_gflop_per_s: float
    matmul_samples: list[float]


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
        timed = prepare_timed(p.model, p.inputs[rois], p.cfg.input_res, settings, folder, scene)
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
    without :data:`~fastgdr.bench.machine.MALLOC_ENV` when that is set here). Timed apart
    from the round-robin: their matmul ratio is against the matmul of the PyTorch
    measurement at the same ROI count, and they have no per-round pairing with other rows."""
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
        configs: {label: (source file, model config)}, e.g. from
            :func:`~fastgdr.bench.configs.load_bench_configs`.
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
            prepared.append(prepare_config(label, cfg, settings, tmp))
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
