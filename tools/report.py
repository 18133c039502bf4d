"""Join evaluated runs into one accuracy/speed table (markdown).

Examples:
  python tools/report.py runs/p/eval runs/n/eval --out report/
  python tools/report.py runs/*/eval --out runs/demo/report

Each argument is an output folder of tools/test.py (scores_bop19.json, inference.json,
config.yaml). Writes OUT/README.md with the table and prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastgdr.cli import run_tool
from fastgdr.report import markdown_table, read_eval_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evals", nargs="+", type=Path, help="output folders of tools/test.py")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    args = parser.parse_args()
    runs = [read_eval_dir(path) for path in args.evals]
    table = markdown_table(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    text = (
        "# fastgdr report\n\nBOP 2019 average recalls (VSD, MSSD, MSPD) and ADD(-S) on the evaluated split; "
        "rotation/translation errors are means over the estimates matched at 0.1·d; network time per image "
        "is measured by tools/test.py on the machine that ran it (crops, forward, decoding).\n\n" + table + "\n"
    )
    (args.out / "README.md").write_text(text)
    print(table)
    return 0


if __name__ == "__main__":
    run_tool(main)
