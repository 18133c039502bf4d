"""Median translation, depth and rotation errors of BOP results files against ground truth.

Examples:
  python benchmarks/pose_error_summary.py --data datasets/synth runs/p/eval/p_synth-test.csv runs/p_untrained/eval/p-untrained_synth-test.csv

Each estimate on an object that is in the image is compared with the ground-truth instance of
that object nearest in translation (false-positive detections are left out). Rotation errors
ignore symmetries. A quick diagnostic next to tools/eval_bop.py, which gives the BOP recalls.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastgdr.data.bop import BopDataset
from fastgdr.data.cards import detect_card
from fastgdr.eval.reference_errors import re as rotation_error
from fastgdr.eval.results import load_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args()
    dataset = BopDataset(args.data, detect_card(args.data))
    for path in args.results:
        scenes, translation, depth, rotation = {}, [], [], []
        for est in load_results(path):
            if est.scene_id not in scenes:
                scenes[est.scene_id] = dataset.load_scene(args.split, est.scene_id)
            gts = [g for g in scenes[est.scene_id].gt[est.im_id] if g.obj_id == est.obj_id]
            if not gts:
                continue
            gt = min(gts, key=lambda g: np.linalg.norm(g.t - est.t))
            translation.append(np.linalg.norm(gt.t - est.t))
            depth.append(abs(gt.t[2] - est.t[2]))
            rotation.append(rotation_error(est.R, gt.R))
        print(f"{path}: {len(translation)} estimates on present objects; median translation error "
              f"{np.median(translation):.1f} mm (mean {np.mean(translation):.1f}), median depth error "
              f"{np.median(depth):.1f} mm, median rotation error {np.median(rotation):.1f} deg")


if __name__ == "__main__":
    main()
