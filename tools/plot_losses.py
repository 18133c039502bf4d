"""Plot the per-term loss curves of training runs and keep a copy of each run's metrics.

Examples:
  python tools/plot_losses.py runs/p runs/p28 --out runs/losses
  python tools/plot_losses.py runs/demo/teacher runs/demo/p_seed0 --out runs/demo/training --overwrite

Each argument is a run folder of tools/train.py or tools/distill.py (it holds metrics.csv).
Writes OUT/loss_curves.png (one panel per run, every loss term on a log scale; teacher-forced
and distillation terms dashed) and OUT/metrics/RUN.csv (a copy of each run's metrics.csv,
named after its folder). An earlier plot in OUT is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.errors import FastGDRError
from fastgdr.learning_curve import plot_loss_curves, read_loss_curves
from fastgdr.outputs import check_out_dir, claim_outputs, remove_outputs

PLOT_NAME = "loss_curves.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.csv")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier plot and metrics copies in OUT")
    args = parser.parse_args()
    names = [run.resolve().name for run in args.runs]
    if len(set(names)) != len(names):
        raise FastGDRError(f"two runs share a folder name ({', '.join(names)}); their metrics copies would collide")
    out = check_out_dir(args.out)
    existing = claim_outputs([out / PLOT_NAME, out / "metrics"], inputs={f"run {run}": run for run in args.runs},
                             overwrite=args.overwrite)
    runs = {name: run / "metrics.csv" for name, run in zip(names, args.runs)}
    for metrics in runs.values():
        read_loss_curves(metrics)  # every input is checked before anything is replaced
    remove_outputs(existing)
    (out / "metrics").mkdir(parents=True)
    for name, metrics in runs.items():
        shutil.copyfile(metrics, out / "metrics" / f"{name}.csv")
    print(f"wrote {plot_loss_curves(runs, out / PLOT_NAME)} and {len(runs)} metrics copies in {out / 'metrics'}")
    return 0


if __name__ == "__main__":
    run_tool(main)
