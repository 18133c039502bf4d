"""Prune a pose network's geometric head and Patch-PnP (L1 norm, whole GroupNorm groups).

Examples:
  python tools/prune.py --ckpt runs/p/model_final.pth --geo-d 28 --out runs/p28/pruned.pth
  python tools/train.py --config runs/p28/pruned.yaml --init runs/p28/pruned.pth --out runs/p28 --data datasets/synth
  python tools/prune.py --ckpt runs/p/model_final.pth --geo-d 28 --pnp-d 16 --out runs/p28_pnp16/pruned.pth
  python tools/prune.py --ckpt runs/n/model_final.pth --geo-d 28 --pnp-d 16 --prune-fc --out runs/n28_fc/pruned.pth
  python tools/prune.py --ckpt runs/p/model_final.pth --geo-d 16 --granularity filter --out runs/p16f/pruned.pth
  python tools/prune.py --ckpt gdrnpp_lmo.pth --config configs/bm.yaml --geo-d 28 --out runs/bm28/pruned.pth \\
      model.num_classes=8

--geo-d D removes D GroupNorm groups from every layer of the geometric head (GDRNPP's
256 channels in 32 groups of 8 become 256 - 8D in 32 - D groups), --pnp-d D from each
Patch-PnP conv (128 in 32 groups of 4 become 128 - 4D); D counts from the unpruned
network, so a pruned checkpoint can only be pruned further. The largest-L1 groups (or,
with --granularity filter, filters) are kept in their original order. FAST GDRNPP's P28 and
N28 (configs/p28.yaml, n28.yaml) are --geo-d 28 alone; configs/p28_pnp16.yaml and
n28_pnp16.yaml add --pnp-d 16.

OUT receives the state dict, the full config with the pruned widths and a "pruning"
record; the resolved config is written beside it (OUT with the suffix .yaml). Existing
files are replaced only with --overwrite, and never the --ckpt or --config read. Parameters,
GFLOPs and CPU latency (batch 1, median of --repeats runs after warm-up, inference mode,
before and after timed interleaved) of the head, Patch-PnP and the whole network are
printed before and after.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from fastgdr.checkpoint import read_checkpoint
from fastgdr.cli import run_tool
from fastgdr.config import save_config
from fastgdr.inference import load_model
from fastgdr.outputs import check_out_file, claim_outputs
from fastgdr.pruning import (
    GRANULARITY,
    PRUNING_IMPORTANCE,
    apply_pruning,
    format_comparison,
    plan_pruning,
    pruning_base,
    save_pruned,
    summarize,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint to prune (model_final.pth)")
    parser.add_argument("--geo-d", type=int, default=0, help="GroupNorm groups to remove per head layer")
    parser.add_argument("--pnp-d", type=int, default=0, help="GroupNorm groups to remove per Patch-PnP conv")
    parser.add_argument("--out", type=Path, required=True, help="pruned checkpoint to write (e.g. runs/p28/pruned.pth)")
    parser.add_argument("--granularity", choices=list(GRANULARITY), default="group", help="rank whole groups or single filters")
    parser.add_argument("--prune-fc", action="store_true", help="also shrink fc1 and fc2 by D x (PnP group size) rows")
    parser.add_argument("--importance", choices=PRUNING_IMPORTANCE.names(), default="l1", help="filter importance")
    parser.add_argument("--config", type=Path, help="config for a checkpoint without an embedded one (GDRNPP's)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency (default 10)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT and its .yaml")
    parser.add_argument("--threads", type=int, help="CPU threads for the timing (default: torch's; 1 is steadiest on a busy machine)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of --config, e.g. model.num_classes=21")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    config_out = check_out_file(args.out).with_suffix(".yaml")
    claim_outputs([args.out, config_out], inputs={"--ckpt": args.ckpt, "--config": args.config},
                  overwrite=args.overwrite)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, cfg = load_model(args.ckpt, args.config, args.overrides)
    base = pruning_base(read_checkpoint(args.ckpt), cfg.model, source=str(args.ckpt))
    plan = plan_pruning(model, cfg.model, args.geo_d, args.pnp_d, args.granularity, args.prune_fc, args.importance, base)
    pruned, pruned_model_cfg = apply_pruning(model, cfg.model, plan)
    pruned_cfg = replace(cfg, model=pruned_model_cfg)
    save_pruned(args.out, pruned, pruned_cfg, args.ckpt, plan)
    config_path = save_config(pruned_cfg, config_out)

    print(f"{args.ckpt}: geo_d={args.geo_d} pnp_d={args.pnp_d} granularity={args.granularity} "
          f"prune_fc={args.prune_fc} importance={args.importance}")
    for name, old, new in (("geo_head", cfg.model.geo_head, pruned_model_cfg.geo_head), ("pnp", cfg.model.pnp, pruned_model_cfg.pnp)):
        print(f"  {name}: widths {list(old.widths)} -> {list(new.widths)}, gn_groups {list(old.gn_groups)} -> {list(new.gn_groups)}")
    print(f"  pnp fc_widths: {list(cfg.model.pnp.fc_widths)} -> {list(pruned_model_cfg.pnp.fc_widths)}")
    res = cfg.model.input_res
    print(f"CPU, batch 1, {res}x{res} crop, torch threads {torch.get_num_threads()}: median of {args.repeats} runs "
          "after 3 warm-up runs, before and after timed interleaved")
    before, after = summarize([model, pruned], res, repeats=args.repeats)
    print(format_comparison(before, after))
    print(f"wrote {args.out} and {config_path}")
    print(f"fine-tune: python tools/train.py --config {config_path} --init {args.out} --out {args.out.parent} "
          "--data <BOP dataset> train.epochs=15")
    return 0


if __name__ == "__main__":
    run_tool(main)
