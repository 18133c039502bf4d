"""Train a GDRNPP pose network on a BOP dataset (one process, or many with torchrun).

Examples:
  python tools/train.py --config configs/p.yaml --data datasets/synth --out runs/p
  python tools/train.py --config configs/p.yaml --data datasets/synth --out runs/p \\
      train.iterations=2000 train.batch_size=16 data.num_workers=2
  python tools/train.py --config configs/p.yaml --data datasets/synth --out runs/p --resume
  python tools/train.py --config configs/p28.yaml --init runs/p28/pruned.pth --out runs/p28 --data datasets/synth
  torchrun --nproc_per_node 4 tools/train.py --config configs/bm.yaml --data /data/bop/lmo --out runs/lmo_bm

The run folder receives config.yaml (resolved), metrics.csv, tensorboard/, a resumable
last_checkpoint.pth every train.checkpoint_period iterations, and model_final.pth.
A killed run continues with --resume from its last checkpoint, with the same schedule.
An OUT that already holds a run (finished or not) is refused unless --resume continues it
or --overwrite starts again (removing that run's outputs); --init is never overwritten.
A loss, gradient or weight that turns NaN or infinite stops the run (exit status 2) with
the iteration and the terms; the last checkpoint written before it is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.config import load_config
from fastgdr.engine.trainer import train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--data", type=Path, required=True, help="BOP dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last_checkpoint.pth")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an OUT that holds an earlier run (its run outputs are removed)")
    parser.add_argument("--init", type=Path, help="initialise the model from this checkpoint (fine-tuning)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.iterations=500")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config, args.overrides)
    result = train(cfg, args.data, args.out, resume=args.resume, init=args.init, progress=not args.no_progress,
                   overwrite=args.overwrite)
    print(f"trained {result.iterations} iterations; weights: {result.final_checkpoint}")
    return 0


if __name__ == "__main__":
    run_tool(main)
