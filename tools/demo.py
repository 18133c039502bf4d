"""The main job: synthetic data → P students → pruning → (distillation) → inference, refinement and BOP evaluation → latency → report.

Examples:
  python tools/demo.py                 # the full CPU demo into runs/demo (~28 min on 2 idle cores)
  python tools/demo.py --quick         # a small variant (a few minutes; the test suite runs it)
  python tools/demo.py --distill --out runs/demo_kd   # also a teacher (N) and distilled P students
  python tools/demo.py --out runs/demo2

Every stage runs one of the tools in tools/ and is skipped when its outputs exist, so
running the command again resumes where it stopped. Logs: OUT/logs/; summary table:
OUT/report/README.md.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.pipeline import FULL, QUICK, demo_stages, run_pipeline

TEACHER_ITERATIONS = 2 * FULL.student_iterations  # --distill in the full demo: twice P's budget


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (default runs/demo, or runs/demo_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes instead of tens of minutes)")
    parser.add_argument("--distill", action="store_true",
                        help=f"also train a teacher (N, {TEACHER_ITERATIONS} iterations in the full demo, twice P's) "
                             "and distil P from it with every seed (the quick variant always does)")
    args = parser.parse_args()
    out = args.out or Path("runs/demo_quick" if args.quick else "runs/demo")
    budget = QUICK if args.quick else FULL
    if args.distill and not budget.distill:
        budget = replace(budget, distill=True, teacher_iterations=TEACHER_ITERATIONS)
    print(f"fastgdr demo into {out} ({'quick' if args.quick else 'full'}: {budget})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.md").write_text(budget.describe() + "\n")  # the report states it
    result = run_pipeline(demo_stages(out, budget), out / "logs")
    print(f"finished in {result.seconds:.0f} s; report: {out / 'report' / 'README.md'}")
    print((out / "report" / "README.md").read_text())
    return 0


if __name__ == "__main__":
    run_tool(main)
