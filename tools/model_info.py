"""Parameters and GFLOPs per module of a pose network; strict checkpoint checks.

Examples:
  python tools/model_info.py --config configs/p.yaml
  python tools/model_info.py --config configs/bm.yaml --num-classes 21
  python tools/model_info.py --config configs/bm.yaml --num-classes 21 --ckpt model_final_wo_optim.pth
  python tools/model_info.py --presets all --out runs/model_info
  python tools/model_info.py --config configs/n.yaml model.geo_head.widths=[32,32,32,32,32,32,32] \\
      model.geo_head.gn_groups=[4,4,4,4,4,4,4]

With --ckpt the checkpoint is loaded strictly: missing, unexpected and mis-shaped keys are
listed and the exit status is 2. GFLOPs count convolutions and matrix products (2 per
multiply-accumulate) for one crop of the config's model.input_res px (--input-res N is
model.input_res=N). --out files of an earlier run are replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastgdr.checkpoint import load_weights
from fastgdr.cli import run_tool
from fastgdr.config import Config, load_config, save_config
from fastgdr.errors import MissingDependencyError
from fastgdr.models import BACKBONE_PRESETS, GDRNPoseNet
from fastgdr.outputs import check_out_dir, claim_outputs
from fastgdr.profiling import format_costs, model_costs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="YAML config (configs/*.yaml)")
    source.add_argument(
        "--presets",
        help="comma-separated backbone presets, or 'all' (FasterViT needs the fastervit package)",
    )
    parser.add_argument("--num-classes", type=int, help="override model.num_classes")
    parser.add_argument("--ckpt", type=Path, help="checkpoint to load strictly into the model")
    parser.add_argument(
        "--allow-partial", action="store_true", help="with --ckpt: load what matches, report the rest"
    )
    parser.add_argument("--input-res", type=int,
                        help="crop size in px, i.e. model.input_res (default: the config's; 256 for presets)")
    parser.add_argument("--out", type=Path, help="folder for model_info.json and the resolved config")
    parser.add_argument("--overwrite", action="store_true", help="replace files of an earlier run in --out")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.num_regions=32")
    return parser.parse_args()


def describe(cfg: Config, args: argparse.Namespace) -> dict:
    model = GDRNPoseNet.from_config(cfg.model, init_heads=False)
    if args.ckpt is not None:
        report = load_weights(model, args.ckpt, strict=not args.allow_partial)
        print(f"checkpoint {args.ckpt}: {report.format()}")
    res = cfg.model.input_res
    costs = model_costs(model, input_res=res)
    print(
        f"{cfg.model.backbone.name} ({model.backbone_info.model_name}, "
        f"{model.backbone_info.channels} ch, stride {model.backbone_info.stride}), "
        f"C={model.num_classes}, {res}x{res} crop"
    )
    print(format_costs(costs))
    return {
        "backbone": cfg.model.backbone.name,
        "timm_model": model.backbone_info.model_name,
        "backbone_channels": model.backbone_info.channels,
        "num_classes": model.num_classes,
        "input_res": res,
        "modules": {c.name: {"params": c.params, "gflops": c.gflops} for c in costs},
    }


def main() -> int:
    args = parse_args()
    overrides = list(args.overrides)
    if args.num_classes is not None:
        overrides.append(f"model.num_classes={args.num_classes}")
    if args.input_res is not None:
        overrides.append(f"model.input_res={args.input_res}")
    if args.config is not None:
        configs = {args.config.stem: load_config(args.config, overrides)}
    else:
        names = BACKBONE_PRESETS.names() if args.presets == "all" else args.presets.split(",")
        configs = {
            name: load_config(None, [f"model.backbone.name={name}", *overrides]) for name in names
        }
    if args.out is not None:
        written = ["model_info.json", *(f"config_{name}.yaml" for name in configs)]
        claim_outputs([check_out_dir(args.out) / name for name in written],
                      inputs={"--config": args.config, "--ckpt": args.ckpt}, overwrite=args.overwrite)
    results, skipped = [], []
    for name, cfg in configs.items():
        try:
            results.append(describe(cfg, args))
        except MissingDependencyError as exc:
            if args.presets is None:
                raise
            skipped.append(name)
            print(f"{name}: skipped ({exc})")
        print()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "model_info.json").write_text(json.dumps(results, indent=2))
        for name, cfg in configs.items():
            if name not in skipped:
                save_config(cfg, args.out / f"config_{name}.yaml")
        print(f"wrote {args.out / 'model_info.json'}")
    return 0


if __name__ == "__main__":
    run_tool(main)
