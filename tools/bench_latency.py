"""Time pose networks end to end and per module; print the speed targets as measured.

Examples:
  python tools/bench_latency.py --configs bm,n,n28,n28_pnp16,p,p28,p28_pnp16 --rois 1,8 --device cpu --out bench/
  python tools/bench_latency.py --configs p,p28 --rois 1 --repeats 5 --onnx --out bench/smoke
  python tools/bench_latency.py --configs bm,p28 --rois 1 --no-fuse --out bench/reference
  python tools/bench_latency.py --configs bm,p28 --rois 1 --compile --out bench/compiled
  python tools/bench_latency.py --configs p28,configs/my_model.yaml --device cuda --dtype fp16 \\
      --channels-last --compile --out bench/cuda_fp16
  python tools/bench_latency.py --configs p --num-classes 21 --out bench/ycbv model.input_res=256

Each --configs entry is a name (configs/<name>.yaml) or a path to a YAML config; rows are
labelled with the name (a path's file stem). Networks get random weights: latency does not
depend on them. ConvNeXt blocks run fused for inference (fastgdr.models.fusion), as
tools/test.py runs them; --no-fuse times timm's reference blocks. Per configuration and ROI count (a batch of crops of model.input_res px)
it times the whole network (crop batch in -> poses out: forward and pose decoding), the
backbone, the geometric head, Patch-PnP, the pose decoding, the per-image pipeline around
the network (test-time crops from a 640x480 image, network, decoding, results CSV) and
depth refinement of the image's poses (refine_fast: GDRNPP's "fast" update, FAST GDRNPP's
"-R"; refine_icp on request) on a rendered synthetic scene (needs moderngl over EGL).

Protocol (fastgdr.bench.measure_latency): eval and inference mode, --warmup untimed
rounds, then --repeats rounds with all modules of all configurations timed round-robin
(one measurement per ROI count, so that ratios between configurations see the same machine
state: a network timed alone on a shared CPU drifts by 20 % within a minute);
perf_counter stamps on the CPU, CUDA events with the device synchronized around each call
on a GPU; median, p90, IQR and standard deviation. A 2048^2 fp32 matrix product is timed
as the last call of every round of the same measurement: every row's achieved GFLOP/s
(GFLOPs / median) is reported as a fraction of it. --onnx also times the exported network
(fp32) under ONNX Runtime on the CPU (in its own process, after the round-robin).
P28 and N28 are FAST GDRNPP's (geometric head D=28); p28_pnp16 and n28_pnp16 also prune
Patch-PnP (D=16).

The process restarts itself once with MALLOC_MMAP_THRESHOLD_=1000000000 and
MALLOC_TRIM_THRESHOLD_=1000000000 (glibc's default allocator makes batched CPU timings
slower and noisy; --malloc default keeps it); ONNX Runtime is then timed in a fresh process
without them (they slow it at batch 1).

Writes OUT/latency.csv (one row per configuration, module, runtime and ROI count) and
OUT/latency.json (the rows, device, threads, versions, settings, configs, targets), prints a
line per configuration built, a progress bar and a line per ROI count timed, a line per
configuration with its network latencies, the rows, and fastgdr's speed targets (measured
ratio, the interquartile range of the per-round ratios, the target, met, and FAST GDRNPP's
own value where the paper gives one). The load average at the start is recorded in
latency.json (and a warning printed when it is above half the cores).
Bad input (unknown config, dtype or device) exits with status 2, and so does an OUT that
holds the results of an earlier run (replace them with --overwrite).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from fastgdr.bench import (
    DEFAULT_MODULES,
    MALLOC_ENV,
    MODULES,
    RESULTS_CSV,
    RESULTS_JSON,
    TARGETS_TITLE,
    BenchmarkError,
    BenchSettings,
    format_rows,
    format_targets,
    load_bench_configs,
    malloc_tuned,
    resolve_device,
    run_benchmark,
    write_results,
)
from fastgdr.cli import run_tool
from fastgdr.outputs import check_out_dir, claim_outputs

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", default="bm,n,n28,n28_pnp16,p,p28,p28_pnp16",
                        help="comma-separated config names or YAML paths")
    parser.add_argument("--rois", default="1,8", help="comma-separated ROI counts per forward (default 1,8)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (default cpu)")
    parser.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16 (weights and network inputs)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every timed module (Inductor, weights frozen)")
    parser.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                        help="fuse ConvNeXt blocks for inference as tools/test.py does (default: on, off with "
                             "--compile); --no-fuse times timm's reference blocks")
    parser.add_argument("--onnx", action="store_true", help="also time the exported network under ONNX Runtime (CPU)")
    parser.add_argument("--num-classes", type=int, default=1, help="model.num_classes of every config (default 1)")
    parser.add_argument("--threads", type=int, help="torch (and ONNX Runtime) CPU threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds (default 5)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--modules", default=",".join(DEFAULT_MODULES),
                        help=f"modules to time, of {','.join(MODULES)} (default: all but refine_icp)")
    parser.add_argument("--malloc", choices=["tuned", "default"], default="tuned", help="glibc allocator setting")
    parser.add_argument("--out", type=Path, required=True, help="output folder (latency.csv, latency.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in OUT")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every config, e.g. model.input_res=128")
    return parser.parse_args()


def split_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise BenchmarkError(f"{what} must be a non-empty comma-separated list, got {text!r}")
    return items


def parse_rois(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in split_list(text, "--rois"))
    except ValueError:
        raise BenchmarkError(f"--rois must be comma-separated integers, got {text!r}") from None


def main() -> int:
    args = parse_args()
    settings = BenchSettings(
        device=args.device, dtype=args.dtype, channels_last=args.channels_last, compile=args.compile, fuse=args.fuse,
        rois=parse_rois(args.rois), warmup=args.warmup, repeats=args.repeats, onnx=args.onnx,
        modules=tuple(split_list(args.modules, "--modules")),
    )
    configs = load_bench_configs(split_list(args.configs, "--configs"), CONFIG_DIR, args.num_classes, args.overrides)
    resolve_device(settings.device)
    claim_outputs([check_out_dir(args.out) / name for name in (RESULTS_CSV, RESULTS_JSON)], overwrite=args.overwrite)
    if args.malloc == "tuned" and not malloc_tuned():  # glibc reads these only at process start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if settings.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # as FAST GDRNPP timed (CUDNN_BENCHMARK=True)
    print(f"timing {len(configs)} config(s) at {', '.join(map(str, settings.rois))} ROI(s) on {settings.device} "
          f"{settings.dtype}, channels_last={settings.channels_last}, compile={settings.compile}, fused={settings.fused}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, malloc {'tuned' if malloc_tuned() else 'default'}; "
          f"median of {settings.repeats} after {settings.warmup} warm-up rounds", flush=True)
    result = run_benchmark(configs, settings, announce=lambda line: print(line, flush=True), progress=True)
    csv_path, json_path = write_results(result, args.out)
    print()
    print(format_rows(result.rows))
    print()
    print(TARGETS_TITLE)
    print(format_targets(result.targets()))
    print(f"\nwrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    run_tool(main)
