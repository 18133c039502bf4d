"""Join evaluated runs and latency benchmarks into one accuracy/speed report (markdown + plot).

Examples:
  python tools/report.py runs/*/eval bench/ --out report/
  python tools/report.py runs/p/eval runs/p28/eval bench/cpu bench/cuda --rois 8 --out report/
  python tools/report.py runs/*/eval --out runs/demo/report

Each argument is an output folder of tools/test.py (scores_bop19.json, inference.json,
config.yaml) or of tools/bench_latency.py (a folder with latency.json, that file, or
latency.csv: rows only, so runs are joined by name). Scores that name another results file
than the run's CSV, or a CSV changed since it was scored (scores_bop19.json records its name
and SHA-256), are stale and refused with the command that rescores them.
Writes OUT/README.md (the table, the plot, the benchmark's speed targets),
OUT/speed_accuracy.png (AR over latency, one labelled point per run, the Pareto front drawn)
and OUT/bop_results/ (a copy of every run's BOP results CSV, named after the run:
RUN_DATASET-SPLIT.csv, '_' in RUN written '-'); two runs that would get one file name (the
same run name, up to '_'/'-' and letter case) are refused before anything is written. An
earlier report in OUT is replaced only with --overwrite.
Runs named NAME_seedK (e.g. runs/p_seed0, runs/p_seed1) are also summarized per NAME:
mean and min-max over the seeds.

A run is joined to the benchmark's whole-network row (at --rois ROIs, --runtime) of the
config with the same architecture as its config.yaml (backbone, crop size, head and
Patch-PnP widths, regions), else of the config named like the run (runs/p28/eval -> p28);
runs without a row keep "-" for latency and are not plotted. --latency eval plots each
run's own network time per image (tools/test.py) instead; auto (default) uses the
benchmark when one is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastgdr.bench import RESULTS_JSON, read_results
from fastgdr.cli import run_tool
from fastgdr.errors import FastGDRError
from fastgdr.outputs import check_out_dir, claim_outputs, remove_outputs
from fastgdr.report import REPORT_FILES, build_report, check_results_csv_names, read_eval_dir


def is_benchmark(path: Path) -> bool:
    """A folder holding latency.json, or a .json or .csv file: output of tools/bench_latency.py."""
    return (path / RESULTS_JSON).is_file() if path.is_dir() else path.suffix in (".json", ".csv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="eval folders of tools/test.py and benchmark folders")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--rois", type=int, default=1, help="ROI count of the joined latency rows (default 1)")
    parser.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch", help="latency rows to join")
    parser.add_argument("--latency", choices=["auto", "bench", "eval"], default="auto", help="x axis of the plot")
    parser.add_argument("--notes", type=Path, help="markdown file shown under the title (budgets, seeds, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in OUT")
    args = parser.parse_args()
    existing = claim_outputs([check_out_dir(args.out) / name for name in REPORT_FILES],
                             inputs={"--notes": args.notes}, overwrite=args.overwrite)
    notes = None
    if args.notes is not None:
        if not args.notes.is_file():
            raise FastGDRError(f"notes file not found: {args.notes}")
        notes = args.notes.read_text().strip()
    benches = [(str(path), read_results(path)) for path in args.inputs if is_benchmark(path)]
    runs = [read_eval_dir(path) for path in args.inputs if not is_benchmark(path)]
    check_results_csv_names(runs)  # refused before the earlier report is removed
    remove_outputs(existing)  # --overwrite: no copies of earlier runs' CSVs stay behind
    report = build_report(runs, benches, args.out, args.rois, args.runtime, args.latency, notes)
    print(report.table)
    print(f"wrote {report.readme}" + (f" and {report.plot}" if report.plot else ""))
    return 0


if __name__ == "__main__":
    run_tool(main)
