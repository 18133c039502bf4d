"""Estimate poses from 2D detections and write a BOP results file (then score it).

Examples:
  python tools/test.py --ckpt runs/p/model_final.pth --data datasets/synth --split test \\
      --detections datasets/synth/detections/synth_default_detections_test.json --out runs/p/eval
  python tools/test.py --ckpt runs/p/model_final.pth --data datasets/synth --out runs/p/eval_epnp --decoder epnp-rot
  python tools/test.py --ckpt runs/p/model_final.pth --data datasets/synth --out runs/p/eval_fast --refine fast
  python tools/test.py --ckpt ycbv_model_final_wo_optim.pth --config configs/bm.yaml \\
      model.num_classes=21 --data /data/bop/ycbv --detections dets.json --out runs/ycbv_bm

Writes OUT/METHOD_DATASET-SPLIT.csv (R row-major, t in mm, one per-image time for all
estimates of an image: network time + depth-refinement time + the detector's time),
OUT/inference.json (timing, the number of ConvNeXt blocks run fused; with --refine also
the refinement ms per object and the number of objects left unrefined) and, when the split
has ground truth,
OUT/scores_bop19.json and per-object tables (score files of an earlier run in OUT are removed
first: scores are only ever those of the CSV beside them). --refine fast|icp refines the poses with
the depth images (GDRNPP's translation-only "fast" update, or 6-DoF point-to-plane ICP)
and renders the meshes of DATA/models/; images without usable depth keep their poses.
Detections: the BOP list format (official default detections) or GDRNPP's dict format;
the top-k per object of each image are kept (the dataset card's k, or --topk).
Detections of images the run does not process, of unknown objects, with a NaN score or
below the threshold are dropped and counted (printed and in inference.json); none left
is an error. Everything is checked before inference (the dataset, the depth images the
evaluation reads, the detections, --device, the outputs); the results file grows image by
image as METHOD_DATASET-SPLIT.csv.partial and takes its name when inference is done.
Results already in OUT are replaced only with --overwrite.
ConvNeXt blocks run fused for inference (fastgdr.models.fusion: the same poses, faster);
--no-fuse runs timm's blocks as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fastgdr.cli import device_option, run_tool
from fastgdr.config import save_config
from fastgdr.data.bop import BopDataset
from fastgdr.data.cards import DATASET_CARDS, detect_card
from fastgdr.data.detections import load_detections
from fastgdr.errors import FastGDRError
from fastgdr.eval.results import ResultsWriter
from fastgdr.inference import DECODERS, REFINERS, build_predictor, infer_dataset, load_model, usable_detections
from fastgdr.models.fusion import fuse_for_inference
from fastgdr.outputs import atomic_write_text, check_name_part, check_out_dir, claim_outputs, remove_outputs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="model checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="BOP dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", default="test", help="split folder (default: test)")
    parser.add_argument("--detections", type=Path, help="detections JSON (default: the only file in DATA/detections/ for the split)")
    parser.add_argument("--dataset", help="dataset card name (default: detected from the folder name)")
    parser.add_argument("--method", default="fastgdr", help="method name in the CSV file name (no '_')")
    parser.add_argument("--topk", type=int, help="detections kept per object and image (default: the card's, else all)")
    parser.add_argument("--score-threshold", type=float, help="drop detections below this score (default: the card's, else 0)")
    parser.add_argument("--decoder", default="patchpnp", choices=list(DECODERS),
                        help="patchpnp: Patch-PnP's rotation and SITE translation (GDRNPP's, default); epnp: "
                             "EPnP-RANSAC on the predicted correspondences; epnp-rot: EPnP-RANSAC's rotation with "
                             "Patch-PnP's translation")
    parser.add_argument("--refine", default="none", choices=REFINERS.names(),
                        help="depth refinement of the poses (default: none)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:<index> (default: cuda when there is one)")
    parser.add_argument("--no-eval", action="store_true", help="only write the results file")
    parser.add_argument("--overwrite", action="store_true", help="replace results of an earlier run in OUT")
    parser.add_argument("--no-fuse", action="store_true",
                        help="run timm's ConvNeXt blocks as they are (default: fused for inference, same poses, faster)")
    parser.add_argument("--config", type=Path, help="config for checkpoints without one (official GDRNPP)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for --config")
    return parser.parse_args()


def find_detections(data: Path, split: str) -> Path:
    candidates = sorted((data / "detections").glob(f"*{split}*.json")) if (data / "detections").is_dir() else []
    if len(candidates) != 1:
        raise FastGDRError(
            f"pass --detections: found {len(candidates)} candidate files for split '{split}' in {data / 'detections'}"
        )
    return candidates[0]


def main() -> int:
    args = parse_args()
    if "_" in args.method:
        raise FastGDRError(f"--method {args.method!r} must not contain '_' (BOP splits file names on it)")
    check_name_part(args.method, "--method")
    check_name_part(args.split, "--split")
    device = device_option(args.device)
    card = DATASET_CARDS.get(args.dataset) if args.dataset else detect_card(args.data)
    dataset = BopDataset(args.data, card)
    has_gt = (dataset.split_dir(args.split) / f"{dataset.scene_ids(args.split)[0]:06d}" / "scene_gt.json").exists() \
        if dataset.scene_ids(args.split) else False
    evaluating = not args.no_eval and has_gt
    dataset_name = (card.name if card else args.data.resolve().name).replace("_", "").replace("-", "")
    # BOP file names: METHOD_DATASET-SPLIT[-SPLITTYPE]; "test_primesense" is split + split type
    csv_path = check_out_dir(args.out) / f"{args.method}_{dataset_name}-{args.split.replace('_', '-')}.csv"
    outputs = [csv_path, csv_path.with_name(csv_path.name + ".partial"), args.out / "config.yaml",
               args.out / "inference.json"]
    detections_path = args.detections or find_detections(args.data, args.split)
    claim_outputs(outputs, inputs={"--ckpt": args.ckpt, "--detections": detections_path, "--config": args.config},
                  overwrite=args.overwrite)
    dataset.check([args.split], require_gt=False, depth=evaluating)  # depth: read by VSD
    detections = load_detections(detections_path)
    top_k = args.topk if args.topk is not None else (card.det_topk_per_obj if card else None)
    threshold = args.score_threshold if args.score_threshold is not None else (card.det_score_threshold if card else 0.0)
    _, detection_report = usable_detections(detections, dataset, args.split, dataset.obj_ids, threshold,
                                             source=str(detections_path))
    print(detection_report.describe())

    model, cfg = load_model(args.ckpt, args.config, args.overrides)
    fused_blocks = 0 if args.no_fuse else fuse_for_inference(model)
    predictor = build_predictor(model, cfg, dataset, args.decoder, args.refine, device)
    from fastgdr.eval.scores import remove_scores

    remove_outputs(p for p in outputs if p.exists())  # --overwrite
    for path in remove_scores(args.out):  # scores of a previous run: never left beside the new CSV
        print(f"removed the previous run's {path}")
    with ResultsWriter(csv_path) as writer:
        estimates, stats = infer_dataset(
            predictor, dataset, args.split, detections, top_k, threshold,
            progress=lambda keys: tqdm(keys, desc="images", unit="img"), on_image=writer.write,
        )
    save_config(cfg, args.out / "config.yaml")
    summary = {
        "checkpoint": str(args.ckpt), "detections": str(detections_path), "images": stats.images,
        "estimates": stats.estimates, "decoder": args.decoder, "device": str(args.device), "fused_blocks": fused_blocks,
        "mean_network_seconds_per_image": stats.mean_seconds,
        "median_network_seconds_per_image": float(np.median(stats.network_seconds)) if stats.network_seconds else 0.0,
        "refine": args.refine, "results_csv": csv_path.name,
        "detections_used": stats.detections.matched, "detections_dropped": stats.detections.dropped,
    }
    if stats.refine is not None:
        refine = stats.refine
        summary.update({
            "refine_ms_per_object": refine.mean_ms_per_object,
            "refine_skipped": refine.skipped,
            "refine_counts": {
                "refined": refine.refined, "skipped_invalid_depth": refine.skipped_invalid_depth,
                "skipped_no_support": refine.skipped_no_support, "non_finite": refine.non_finite,
                "rejected_implausible": refine.rejected_implausible,
            },
            "refine_invalid_depth_reasons": refine.invalid_depth_reasons,
            "mean_refine_seconds_per_image": float(np.mean(stats.refine_seconds)) if stats.refine_seconds else 0.0,
        })
    atomic_write_text(args.out / "inference.json", json.dumps(summary, indent=2))
    print(f"wrote {stats.estimates} estimates for {stats.images} images to {csv_path} "
          f"({summary['mean_network_seconds_per_image'] * 1000:.1f} ms network time per image)")
    if stats.refine is not None:
        refine = stats.refine
        print(f"depth refinement '{args.refine}': {refine.refined} refined, {refine.mean_ms_per_object:.1f} ms per object; "
              f"{refine.skipped} warnings (kept the network pose: {refine.skipped_invalid_depth} invalid depth, "
              f"{refine.skipped_no_support} no support, {refine.non_finite} non-finite, "
              f"{refine.rejected_implausible} implausible updates)")
        for reason, images in refine.invalid_depth_reasons.items():
            print(f"  depth unusable in {images} images: {reason}")

    if evaluating:
        from fastgdr.eval.bop19 import evaluate
        from fastgdr.eval.scores import write_scores

        result = evaluate(dataset, estimates, split=args.split, device=device, progress=True)
        write_scores(result, args.out, results_file=csv_path)
        scores = result.scores
        print(
            f"AR {scores['bop19_average_recall']:.4f} (VSD {scores['bop19_average_recall_vsd']:.4f}, "
            f"MSSD {scores['bop19_average_recall_mssd']:.4f}, MSPD {scores['bop19_average_recall_mspd']:.4f}); "
            f"scores in {args.out / 'scores_bop19.json'}"
        )
    return 0


if __name__ == "__main__":
    run_tool(main)
