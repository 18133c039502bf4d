"""Train a student pose network with knowledge distillation from frozen teachers.

Examples:
  # FAST GDRNPP's feature distillation and ADLP's optimal transport, from a BM teacher
  python tools/distill.py --teacher runs/bm/model_final.pth --config configs/p.yaml \\
      --data datasets/synth --out runs/p_kd kd.feature.weight=1 kd.ot.weight=1
  # an official GDRNPP checkpoint as the teacher (it carries no config)
  python tools/distill.py --teacher gdrnpp_lmo.pth --teacher-config configs/bm.yaml \\
      --config configs/p.yaml --data /data/bop/lmo --out runs/lmo_p_kd kd.feature.weight=1
  # uncertainty-aware (UA-KD): a deep ensemble of teachers down-weights what they disagree on
  python tools/distill.py --teacher runs/t1/model_final.pth --teacher runs/t2/model_final.pth \\
      --config configs/p.yaml --data datasets/synth --out runs/p_uakd \\
      kd.ot.weight=1 kd.uncertainty.enabled=true kd.uncertainty.feature_weight=1
  # ... with a single teacher: perturbed crops instead of an ensemble (the labelled fallback)
  python tools/distill.py --teacher runs/t1/model_final.pth ... kd.ot.weight=1 kd.uncertainty.enabled=true \\
      kd.uncertainty.source=tta
  # the naive per-cell baseline; the joint 5-D OT variant on pooled cells instead of ADLP's
  python tools/distill.py ... kd.naive.weight=1
  python tools/distill.py ... kd.ot.weight=5 kd.ot.sampling=pool kd.ot.blur=0.05 kd.ot.reach=null

Terms (weights in the config's kd section, all 0 by default): kd.feature (1x1 adapter +
standardised-feature MSE), kd.ot (ADLP's setting: one unbalanced Sinkhorn divergence per
surface region between the image positions of the cells that see it, weighted by visible
mask x region probability), kd.naive (per-cell L1/L2), kd.uncertainty (a teacher ensemble's
confidence in the OT masses, and features distilled at the cells the OT plan pairs).
The OT weight has its own scale (ADLP's 5 was for its keypoint loss): tune it
(benchmarks/acceleration_study.py does).
The teachers run frozen, without gradients, on the student's crops; kd.teacher_precision=
bfloat16 makes them cheaper. Everything else is tools/train.py: the same run folder, logs
(each kd term separately), --resume, --overwrite, torchrun; a teacher or --init is never
overwritten (an OUT that holds it is refused).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.config import load_config
from fastgdr.engine.trainer import train
from fastgdr.errors import ConfigError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", type=Path, action="append", required=True,
                        help="teacher checkpoint; repeat for an ensemble")
    parser.add_argument("--teacher-config", type=Path,
                        help="config of teachers without an embedded one (official GDRNPP checkpoints)")
    parser.add_argument("--config", type=Path, required=True, help="the student's YAML config")
    parser.add_argument("--data", type=Path, required=True, help="BOP dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last_checkpoint.pth")
    parser.add_argument("--overwrite", action="store_true",
                        help="start again in an OUT that holds an earlier run (its run outputs are removed)")
    parser.add_argument("--init", type=Path, help="initialise the student from this checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. kd.ot.weight=5")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    cfg = load_config(args.config, args.overrides)
    kd = replace(
        cfg.kd,
        teachers=tuple(str(path) for path in args.teacher),
        teacher_config=str(args.teacher_config) if args.teacher_config else cfg.kd.teacher_config,
    )
    if not kd.active:
        raise ConfigError(
            "no distillation term is on: set at least one of kd.feature.weight, kd.ot.weight, "
            "kd.naive.weight, kd.uncertainty.feature_weight (e.g. kd.ot.weight=5)"
        )
    result = train(replace(cfg, kd=kd), args.data, args.out, resume=args.resume, init=args.init,
                   progress=not args.no_progress, overwrite=args.overwrite)
    print(f"distilled {result.iterations} iterations; student weights: {result.final_checkpoint}")
    return 0


if __name__ == "__main__":
    run_tool(main)
