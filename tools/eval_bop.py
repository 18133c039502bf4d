"""Score a BOP 2019 pose-results file (AR = mean of AR_VSD, AR_MSSD, AR_MSPD; plus ADD(-S)).

Examples:
  python tools/eval_bop.py --results runs/p/eval/fastgdr_synth-test.csv --data datasets/synth --out runs/p/eval_bop
  python tools/eval_bop.py --results gdrnpp_lmo-test.csv --data /data/bop/lmo --out eval/lmo --device cuda
  python tools/eval_bop.py --results mine_tless-test-primesense.csv --data /data/bop/tless --out eval/tless
  python tools/eval_bop.py --results mine_ycbv-test.csv --data /data/bop/ycbv --out eval/ycbv --errors mssd,mspd,ad

The results file is validated first (BOP format: header scene_id,im_id,obj_id,score,R,t,time;
R row-major, t in mm, one time per image) and must be named
METHOD_DATASET-SPLIT[-SPLITTYPE][_ID].csv with no '_' in METHOD. Like the BOP toolkit it
scores any 3x3 R, but warns (count and line numbers) about matrices that are not rotations,
about a file without estimates and about a DATASET that is unknown or another dataset's (an
error when DATA is a known dataset of another name); --strict refuses such files.

The split folder is SPLIT[_SPLITTYPE] unless --split is given. Targets come from
DATA/test_targets_bop19.json, errors from DATA/models_eval. The dataset needs only what the
BOP toolkit reads: models_eval/, the targets file and, per target scene, scene_camera.json,
scene_gt.json, scene_gt_info.json and depth/ (for VSD); no rgb/, masks, models/ or
camera.json. Writes OUT/scores_bop19.json (the BOP keys bop19_average_recall[_vsd|_mssd|_mspd],
bop19_average_time_per_image, plus add_s_recall_0.02/0.05/0.10 and the mean rotation /
translation error of the estimates matched at 0.10·d; the name and SHA-256 of the results
file scored), OUT/per_object.csv and OUT/scores.md; scores already in OUT are replaced only
with --overwrite. --out, --device, the dataset and the depth images VSD reads (their size
included) are checked before the evaluation starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastgdr.cli import device_option, run_tool
from fastgdr.data.bop import BopDataset
from fastgdr.data.cards import detect_card
from fastgdr.errors import FastGDRError
from fastgdr.eval.results import SCORE_FILES, check_dataset_name, load_results, parse_result_filename
from fastgdr.outputs import check_out_dir, claim_outputs

DEFAULT_ERRORS = "vsd,mssd,mspd,ad"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", type=Path, required=True, help="BOP results CSV (METHOD_DATASET-SPLIT.csv)")
    parser.add_argument("--data", type=Path, required=True, help="BOP dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the scores")
    parser.add_argument("--split", help="split folder (default: from the results file name)")
    parser.add_argument(
        "--errors", default=DEFAULT_ERRORS, help=f"comma-separated error types (default: {DEFAULT_ERRORS})"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the error computations (default: cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace scores of an earlier evaluation in OUT")
    parser.add_argument(
        "--strict", action="store_true",
        help="refuse results files with an R that is not a rotation, without estimates, or named for "
             "another or an unknown dataset (default: warn, and score them as the BOP toolkit does)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    # The results file is checked before torch is imported: a bad file fails fast.
    _, _, split, split_type = parse_result_filename(args.results)
    out = check_out_dir(args.out)
    claim_outputs([out / name for name in SCORE_FILES], inputs={"--results": args.results},
                  overwrite=args.overwrite)
    card = detect_card(args.data)
    check_dataset_name(args.results, args.data, card.name if card is not None else None, strict=args.strict)
    estimates = load_results(args.results, strict=args.strict)
    from fastgdr.eval.bop19 import evaluate
    from fastgdr.eval.protocol import ERROR_TYPES
    from fastgdr.eval.scores import format_scores, write_scores

    device = device_option(args.device)

    error_types = [name.strip() for name in args.errors.split(",") if name.strip()]
    unknown = [name for name in error_types if name not in ERROR_TYPES]
    if unknown or not error_types:
        raise FastGDRError(f"--errors: unknown error type(s) {unknown}; choose from {','.join(ERROR_TYPES)}")
    split = args.split or (f"{split}_{split_type}" if split_type else split)
    dataset = BopDataset(args.data, card)
    # only what the evaluation reads: no colour images, masks, models/ or camera.json needed
    targets = dataset.check_evaluation(split, depth="vsd" in error_types)
    result = evaluate(
        dataset, estimates, split=split, targets=targets, error_types=error_types, device=device, progress=True
    )
    paths = write_scores(result, out, results_file=args.results)
    print(format_scores(result))
    print(f"scores written to {paths['scores']}")
    return 0


if __name__ == "__main__":
    run_tool(main)
