"""Time pose networks with timm's ConvNeXt blocks against their inference fusion, in one run.

Examples:
  python benchmarks/bench_fusion.py
  python benchmarks/bench_fusion.py --configs bm,n,p,p28 --rois 1,8 --repeats 30
  python benchmarks/bench_fusion.py --configs p28 --rois 1 model.input_res=128

For every configuration (configs/<name>.yaml, random weights) and ROI count, the whole
network (crops in -> poses out) is timed with the reference blocks and with
fastgdr.models.fusion's fused blocks, round-robin under one protocol
(fastgdr.bench.measure_latency), so that both see the same machine load; the fused
network's largest difference from the reference (rotation matrix, translation in m,
backbone features) is printed beside the speed-up. Run it with MALLOC_MMAP_THRESHOLD_=
1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 on an otherwise idle machine (as
tools/bench_latency.py does). Prints measured numbers only.
"""

from __future__ import annotations

import argparse
import copy
from functools import partial
from pathlib import Path

import torch

from fastgdr.bench import load_bench_configs, malloc_tuned, measure_latency
from fastgdr.export import random_roi_batch
from fastgdr.models import GDRNPoseNet, decode_pose
from fastgdr.models.fusion import fuse_for_inference

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", default="bm,n,p,p28", help="comma-separated config names or YAML paths")
    parser.add_argument("--rois", default="1,8", help="comma-separated ROI counts (default 1,8)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds (default 5)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every config, e.g. model.input_res=128")
    return parser.parse_args()


def poses(model: GDRNPoseNet, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(R, t, backbone features) of a crop batch."""
    out = model(inputs["images"], inputs["roi_classes"], inputs["roi_coord_2d"], inputs["roi_extents"])
    R, t = decode_pose(out.rot6d, out.site, inputs["roi_centers"], inputs["roi_whs"], inputs["resize_ratios"],
                       inputs["K"])
    return R, t, out.features


def main() -> None:
    args = parse_args()
    configs = load_bench_configs([c for c in args.configs.split(",") if c], CONFIG_DIR, 1, args.overrides)
    rois = [int(r) for r in args.rois.split(",")]
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, malloc "
          f"{'tuned' if malloc_tuned() else 'default (see --help)'}; median of {args.repeats} after {args.warmup} warm-up")
    print(f"{'config':<8}{'ROIs':>5}{'reference ms':>14}{'fused ms':>10}{'speed-up':>10}{'blocks':>8}"
          f"{'max |dR|':>10}{'max |dt| m':>12}{'max |dfeat|':>13}")
    torch.manual_seed(0)
    for label, (_, cfg) in configs.items():
        reference = GDRNPoseNet.from_config(cfg).eval()
        fused = copy.deepcopy(reference)
        blocks = fuse_for_inference(fused)
        for n in rois:
            inputs = random_roi_batch(reference, n, cfg.input_res, seed=n)
            with torch.inference_mode():
                R0, t0, f0 = poses(reference, inputs)
                R1, t1, f1 = poses(fused, inputs)
            ref_stats, fused_stats = measure_latency(
                [partial(poses, reference, inputs), partial(poses, fused, inputs)], "cpu", args.warmup, args.repeats
            )
            print(f"{label:<8}{n:>5}{ref_stats.median_ms:>14.1f}{fused_stats.median_ms:>10.1f}"
                  f"{ref_stats.median_ms / fused_stats.median_ms:>9.2f}×{blocks:>8}"
                  f"{(R1 - R0).abs().max().item():>10.1e}{(t1 - t0).abs().max().item():>12.1e}"
                  f"{(f1 - f0).abs().max().item():>13.1e}", flush=True)


if __name__ == "__main__":
    main()
