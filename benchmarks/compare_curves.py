"""Draw the learning curves of several bench_learning.py runs in one figure (AR against minutes).

Examples:
  python benchmarks/compare_curves.py "random weights=runs/learn_p_s0" "random weights=runs/learn_p_s1" \\
      "pretrained backbone=runs/learn_p_pre_s0" --out runs/curves.png
  python benchmarks/compare_curves.py "P=docs/learning/pdzi_s0" "P, 24 min=docs/learning/p24dzi_s0" --decoder epnp-rot --out /tmp/c.png

Each run is LABEL=FOLDER, the folder holding the run's curve.csv. Runs with the same label (the
seeds of one setting) share a colour, so the seed spread shows as a band of lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.learning_curve import plot_curve_comparison, read_curve_csv
from fastgdr.outputs import check_out_file, claim_outputs


def parse_run(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"expected LABEL=FOLDER, got '{text}'")
    path = Path(folder)
    if not (path / "curve.csv").is_file():
        raise argparse.ArgumentTypeError(f"{path / 'curve.csv'} does not exist (a bench_learning.py --out folder holds it)")
    return label, path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=parse_run, help="LABEL=FOLDER, FOLDER holding a curve.csv")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--decoder", default="patchpnp", help="pose decoder whose AR is drawn (default patchpnp)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args()
    claim_outputs([check_out_file(args.out)], overwrite=args.overwrite)
    runs = [(label, read_curve_csv(folder / "curve.csv")) for label, folder in args.runs]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {plot_curve_comparison(runs, args.out, args.decoder, args.title)}")
    return 0


if __name__ == "__main__":
    run_tool(main)
