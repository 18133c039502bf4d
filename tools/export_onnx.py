"""Export a pose network (pruned or not) to ONNX, from ROI crops to poses, and check it.

Examples:
  python tools/export_onnx.py --ckpt runs/p28/model_final.pth --out runs/p28/model.onnx
  python tools/export_onnx.py --ckpt runs/p28/pruned.pth --out p28_pruned.onnx --check-batches 1 4 16
  python tools/export_onnx.py --ckpt gdrnpp_lmo.pth --config configs/bm.yaml --out bm_lmo.onnx \\
      model.num_classes=8

The graph takes the eight inputs images [B,3,S,S] (crops in [0,1], BGR for GDRNPP
checkpoints), roi_classes [B] int64, roi_coord_2d [B,2,s,s], roi_extents [B,3] (m),
roi_centers [B,2] (px), roi_whs [B,2] (px), resize_ratios [B] (s / crop size) and K [B,3,3],
and returns R [B,3,3], t [B,3] (m), visible_mask [B,1,s,s], xyz [B,3,s,s] and
region [B,R+1,s,s] of each ROI's class. B (the ROI count) is dynamic; S is the config's
model.input_res. See fastgdr/export.py for the details.

After export the file is run with ONNX Runtime (CPU) and compared with eager PyTorch on
random, realistic ROIs for every --check-batches size; the max |difference| of every
output and the file size are printed. The exit status is 2 if R or t differ by more than
--atol (default 1e-3: R is dimensionless, t in m, so 1 mm) or a dense output by more than
--dense-atol (default 1e-2, raw mask values, normalized coordinates and region logits).
fastgdr checkpoints carry their config; checkpoints without one (official GDRNPP) need
--config, and dotted overrides apply to that config only. An existing OUT is replaced only
with --overwrite, and never when it is the --ckpt read; the file is written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.export import POSE_OUTPUTS, assert_onnx_close, export_onnx, onnx_differences
from fastgdr.inference import load_model
from fastgdr.outputs import check_out_file, claim_outputs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="fastgdr or GDRNPP checkpoint (pruned ones too)")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write (e.g. model.onnx)")
    parser.add_argument("--config", type=Path, help="YAML config, for checkpoints without an embedded config")
    parser.add_argument("--batch", type=int, default=2, help="ROIs in the tracing example (default 2)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    parser.add_argument(
        "--check-batches", type=int, nargs="+", default=[1, 3], help="ROI counts to compare with eager (default 1 3)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check ROIs")
    parser.add_argument("--atol", type=float, default=1e-3, help="max |difference| of R and t (m) (default 1e-3)")
    parser.add_argument("--dense-atol", type=float, default=1e-2, help="max |difference| of the dense outputs (default 1e-2)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (with --config), e.g. model.num_classes=8")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    claim_outputs([check_out_file(args.out)], inputs={"--ckpt": args.ckpt, "--config": args.config},
                  overwrite=args.overwrite)
    model, cfg = load_model(args.ckpt, args.config, args.overrides)
    path = export_onnx(model, args.out, cfg.model.input_res, batch=args.batch, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB, opset {args.opset}, {cfg.model.input_res} px crops)")
    diffs = onnx_differences(model, path, args.check_batches, args.seed)
    batches = ", ".join(map(str, args.check_batches))
    print(f"ONNX Runtime (CPU) vs eager PyTorch, max |difference| over batches {batches}:")
    for name, diff in diffs.items():
        limit = args.atol if name in POSE_OUTPUTS else args.dense_atol
        print(f"  {name:<13}{diff:>11.3g}  (tolerance {limit:g})")
    assert_onnx_close(diffs, args.atol, args.dense_atol)
    print("OK")
    return 0


if __name__ == "__main__":
    run_tool(main)
