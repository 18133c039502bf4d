"""Median translation, depth and rotation errors of BOP results files against ground truth, per object.

Examples:
  python benchmarks/pose_error_summary.py --data datasets/synth runs/p/eval/p_synth-test.csv runs/p_untrained/eval/p-untrained_synth-test.csv

Each estimate on an object that is in the image is compared with the ground-truth instance of
that object nearest in translation (false-positive detections are left out). Rotation errors
are taken up to the object's symmetries (models_eval/models_info.json): the angle to the
nearest symmetric twin of the ground-truth rotation, so a box turned by 180° about a symmetry
axis has error 0. A quick diagnostic next to tools/eval_bop.py, which gives the BOP recalls.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastgdr.data.bop import BopDataset
from fastgdr.data.cards import detect_card
from fastgdr.data.symmetry import symmetry_transformations
from fastgdr.eval.batched_errors import symmetric_rotation_errors
from fastgdr.eval.results import load_results

COLUMNS = ("object", "estimates", "median rotation error (deg)", "share under 15 deg",
           "median depth error (mm)", "median xy error (mm)", "median translation error (mm)")


def pose_errors(dataset: BopDataset, results: Path, split: str) -> dict[int, np.ndarray]:
    """Per object, an (n, 4) array: rotation error up to symmetry (deg), |Δz|, |Δxy| and ‖Δt‖ (mm)."""
    scenes, pairs = {}, {}
    for est in load_results(results):
        if est.scene_id not in scenes:
            scenes[est.scene_id] = dataset.load_scene(split, est.scene_id)
        gts = [g for g in scenes[est.scene_id].gt.get(est.im_id, []) if g.obj_id == est.obj_id]
        if gts:
            gt = min(gts, key=lambda g: np.linalg.norm(g.t - est.t))
            pairs.setdefault(est.obj_id, []).append((est.R, est.t, gt.R, gt.t))
    errors = {}
    for obj_id, rows in sorted(pairs.items()):
        info = dataset.eval_models_info[obj_id]
        sym_R, _ = symmetry_transformations(info.symmetries_discrete, info.symmetries_continuous)
        R_e, t_e, R_g, t_g = (np.stack(column) for column in zip(*rows))
        rotation = symmetric_rotation_errors(R_e, R_g, sym_R).numpy()
        delta = t_e.reshape(-1, 3) - t_g.reshape(-1, 3)
        errors[obj_id] = np.column_stack([rotation, np.abs(delta[:, 2]), np.linalg.norm(delta[:, :2], axis=1),
                                          np.linalg.norm(delta, axis=1)])
    return errors


def summary_rows(errors: dict[int, np.ndarray]) -> list[list[str]]:
    """Table rows, one per object and one for all of them."""
    rows = []
    groups = [(str(obj_id), e) for obj_id, e in errors.items()]
    if errors:
        groups.append(("all", np.concatenate(list(errors.values()))))
    for name, e in groups:
        rows.append([name, str(len(e)), f"{np.median(e[:, 0]):.1f}", f"{np.mean(e[:, 0] < 15.0):.2f}",
                     f"{np.median(e[:, 1]):.1f}", f"{np.median(e[:, 2]):.1f}", f"{np.median(e[:, 3]):.1f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the BOP dataset folder the results are on")
    parser.add_argument("--split", default="test")
    parser.add_argument("results", nargs="+", type=Path, help="BOP results CSV files")
    args = parser.parse_args()
    dataset = BopDataset(args.data, detect_card(args.data))
    for path in args.results:
        print(f"\n{path}")
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for row in summary_rows(pose_errors(dataset, path, args.split)):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
