"""The acceleration study: P, P28, P28 with Patch-PnP pruned, N, N28 and P distilled with each
kind, trained alike from several seeds, evaluated, tabulated against the seed spread.

Examples:
  python benchmarks/acceleration_study.py --data datasets/synth --out runs/study
  python benchmarks/acceleration_study.py --data datasets/synth --out runs/study --dry-run
  python benchmarks/acceleration_study.py --data datasets/synth --out runs/study --seeds 0,1,2,3 --minutes 30
  python benchmarks/acceleration_study.py --data datasets/synth --out runs/study --variants p,p28,p28_pnp16
  python benchmarks/acceleration_study.py --data datasets/synth --out runs/study --summary-only
  python benchmarks/acceleration_study.py --data /data/bop/lmo --out runs/lmo_study --input-res 256 \\
      --iterations 20000 --batch 48 --teacher runs/lmo_bm/model_final.pth --teacher runs/lmo_bm2/model_final.pth

Variants (fastgdr/study/plan.py): p (reference), p28 (FAST GDRNPP's: head D=28, fine-tuned from p
for 3/8 of the budget), p28_pnp16 (Patch-PnP D=16 too), n, n28, kd_feature (FAST GDRNPP's
feature MSE), kd_ot (ADLP's OT, weight tuned on a seed of its own), kd_naive, kd_ua (UA-KD
with an ensemble of teachers), kd_feature_ot (feature + OT), p28_kd (FAST GDRNPP's P28-D).
Every run has the same recipe (--recipe, default short), crop size, batch and seeds. Budget:
--minutes M of wall clock for P; with --equalize iterations (default) every other
from-scratch run of a seed trains as many iterations as that seed's P reached, with
--equalize time the same M minutes; --iterations N fixes every from-scratch run at N
iterations instead. Teachers (--teacher-count of them, N preset, twice P's budget, seeds
100, 101, ...) are trained unless --teacher gives them.

Stages are real tool runs (tools/train.py, distill.py, prune.py, test.py); a re-run skips
finished ones and resumes an interrupted training. Writes OUT/acceleration_study.md (the
table: mean and min-max over seeds, decoder, iterations and minutes trained, the difference
to each row's reference with a computed sentence about the seed spread, the accuracy
targets), OUT/acceleration_study.json and OUT/bop_results/ (every run's BOP CSV under its
run's name). --dry-run prints the stages and a rough duration estimate.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.errors import FastGDRError
from fastgdr.pipeline import CONFIGS
from fastgdr.study import TUNE_SEED, VARIANTS, StudySettings, plan_text, run_study, run_summary_only


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BOP dataset with test detections")
    parser.add_argument("--detections", type=Path, help="detections file (default: the only DATA/detections/*_test.json)")
    parser.add_argument("--out", type=Path, required=True, help="study folder")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {', '.join(VARIANTS)}")
    parser.add_argument("--minutes", type=float, default=20.0, help="P's training budget in minutes (default 20)")
    parser.add_argument("--iterations", type=int, help="a fixed iteration budget for every from-scratch run instead")
    parser.add_argument("--equalize", choices=["iterations", "time"], default="iterations",
                        help="other from-scratch runs get P's iterations (default) or its minutes")
    parser.add_argument("--recipe", default="short", help="train.recipe of every run (default short)")
    parser.add_argument("--input-res", type=int, default=128, help="crop size of every run (GDRNPP: 256; default 128)")
    parser.add_argument("--batch", type=int, help="train.batch_size of every run (default: the recipe's)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading workers (default 1)")
    parser.add_argument("--decoder", default="patchpnp", choices=["patchpnp", "epnp", "epnp-rot"],
                        help="tools/test.py --decoder of every evaluation (default patchpnp)")
    parser.add_argument("--teacher", type=Path, action="append", default=[],
                        help="an existing teacher checkpoint (repeat for an ensemble); default: train them")
    parser.add_argument("--teacher-count", type=int, default=3, help="teachers to train, an ensemble (default 3)")
    parser.add_argument("--teacher-config", type=Path, default=CONFIGS / "n.yaml", help="teacher config (default N)")
    parser.add_argument("--teacher-minutes", type=float, help="teacher budget (default: twice --minutes)")
    parser.add_argument("--teacher-iterations", type=int, help="teacher budget in iterations instead")
    parser.add_argument("--ot-weight", type=float, help="the OT weight (default: tuned over --ot-weights)")
    parser.add_argument("--ot-weights", default="0.1,1,10,100",
                        help="candidate OT weights (default 0.1,1,10,100: ADLP tuned 0.1 to 100)")
    parser.add_argument("--tune-seed", type=int, default=TUNE_SEED, help=f"seed of the tuning runs (default {TUNE_SEED})")
    parser.add_argument("--geo-d", type=int, default=28, help="head pruning D of the 28 variants (default 28)")
    parser.add_argument("--pnp-d", type=int, default=16, help="Patch-PnP pruning D of p28_pnp16 (default 16)")
    parser.add_argument("--dry-run", action="store_true", help="print the stages and a duration estimate, run nothing")
    parser.add_argument("--summary-only", action="store_true", help="tabulate what exists, train nothing")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every from-scratch run")
    return parser.parse_args()


def comma_list(text: str, kind: type, option: str) -> tuple:
    try:
        return tuple(kind(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise FastGDRError(f"{option} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None


def main() -> int:
    args = parse_args()
    detections = args.detections
    if detections is None:
        found = sorted((args.data / "detections").glob("*_test.json")) if (args.data / "detections").is_dir() else []
        if len(found) != 1:
            raise FastGDRError(f"pass --detections: found {len(found)} candidate files in {args.data / 'detections'}")
        detections = found[0]
    settings = StudySettings(
        data=args.data, detections=detections, out=args.out, seeds=comma_list(args.seeds, int, "--seeds"),
        variants=comma_list(args.variants, str, "--variants"), minutes=args.minutes, iterations=args.iterations,
        equalize=args.equalize, recipe=args.recipe, input_res=args.input_res, batch=args.batch, workers=args.workers,
        decoder=args.decoder, teachers=tuple(args.teacher), teacher_count=args.teacher_count,
        teacher_config=args.teacher_config, teacher_minutes=args.teacher_minutes,
        teacher_iterations=args.teacher_iterations, ot_weight=args.ot_weight,
        ot_weights=comma_list(args.ot_weights, float, "--ot-weights"), tune_seed=args.tune_seed, geo_d=args.geo_d,
        pnp_d=args.pnp_d, overrides=tuple(args.overrides),
    )
    if args.dry_run:
        print(plan_text(settings))
        return 0
    command = shlex.join(["python", "benchmarks/acceleration_study.py", *sys.argv[1:]])
    text = run_summary_only(settings, command) if args.summary_only else run_study(settings, command=command)
    print(text)
    return 0


if __name__ == "__main__":
    run_tool(main)
